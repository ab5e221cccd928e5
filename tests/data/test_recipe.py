"""The official training recipe against the official code's own pipeline (timm): the worker-side augmentation gives
timm's `create_transform(..., use_prefetcher=True)` images bit for bit with the same seeds, the training-process
side gives timm's `PrefetchLoader` + `Mixup` batches and its soft-target loss, the posterize guard holds where timm
crashes on Pillow 13, and the repeated-augmentation sampler deals each rank the official `RASampler`'s examples
through Trainer's own (accelerate-sharded) DataLoader."""

import io
import math
import random

import numpy as np
import PIL
import pytest
import torch
from PIL import Image, ImageOps


timm = pytest.importorskip("timm")
from timm.data import create_transform  # noqa: E402
from timm.data.loader import PrefetchLoader  # noqa: E402
from timm.data.mixup import Mixup  # noqa: E402

from ceit_hf.data.decoding import DecodedExamples  # noqa: E402
from ceit_hf.data.loader import RepeatedAugmentationSampler  # noqa: E402
from ceit_hf.data.transforms import (  # noqa: E402
    OFFICIAL_AUTO_AUGMENT,
    BatchAugmentation,
    BatchMixing,
    SeededAugmentation,
    batch_mixer,
    eval_transform,
    rand_augment,
    train_transform,
)
from ceit_hf.training import soft_target_loss  # noqa: E402


def photos(count: int, seed: int = 0) -> list:
    """`count` decoded JPEGs of 48-96 px sides: smooth colour fields with noise, as photographs compress."""
    rng = np.random.default_rng(seed)
    images = []
    for _ in range(count):
        width, height = (int(v) for v in rng.integers(48, 97, 2))
        coarse = rng.integers(0, 256, (height // 8 + 2, width // 8 + 2, 3), dtype=np.uint8)
        smooth = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.float32)
        pixels = np.clip(smooth + rng.normal(0, 10, smooth.shape), 0, 255).astype(np.uint8)
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
        images.append(Image.open(io.BytesIO(buffer.getvalue())))
        images[-1].load()
    return images


def seeded(transform, image, seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return transform(image)


def pillow_12_posterize(image, bits):
    """ImageOps.posterize as Pillow did it before 13: 0 bits keep nothing (a black image)."""
    return image.point([i & ~(2 ** (8 - bits) - 1) for i in range(256)] * len(image.getbands()))


def test_training_transform_gives_timms_images_bit_for_bit(monkeypatch):
    """400 draws of the official recipe's worker side (bicubic crop, flip, rand-m9-mstd0.5-inc1) give the uint8
    images of timm's `create_transform` with the official arguments in its prefetcher form, seed for seed. timm's
    posterize is given Pillow 12's 0-bit behaviour, which ours keeps on every Pillow (see the guard test)."""
    monkeypatch.setattr(ImageOps, "posterize", pillow_12_posterize)
    official = create_transform(
        64,
        is_training=True,
        auto_augment=OFFICIAL_AUTO_AUGMENT,
        interpolation="bicubic",
        color_jitter=0.4,  # the official main.py's: timm turns it off with RandAugment on
        re_prob=0.25,
        re_mode="pixel",
        use_prefetcher=True,  # uint8 out; normalisation and erasing go to the training process
    )
    ours = train_transform(64, auto_augment=OFFICIAL_AUTO_AUGMENT)
    images = photos(40)
    for seed in range(400):
        image = images[seed % len(images)]
        expected, got = seeded(official, image, seed), seeded(ours, image, seed)
        assert got.dtype == torch.uint8 and got.shape == (3, 64, 64)
        assert torch.equal(got, expected), f"seed {seed}"


def test_posterize_guard_gives_a_black_image_where_timm_crashes():
    """The increasing posterize at the top magnitude keeps 0 bits: timm's op raises on Pillow 13, ours gives the
    black image older Pillow gave (and the official runs saw)."""
    from timm.data.auto_augment import rand_augment_transform

    image = photos(1)[0].convert("RGB")
    ours = next(op for op in rand_augment(OFFICIAL_AUTO_AUGMENT, 64).ops if op.name == "PosterizeIncreasing")
    theirs = next(op for op in rand_augment_transform(OFFICIAL_AUTO_AUGMENT, {}).ops if op.name == ours.name)
    for op in (ours, theirs):
        op.prob, op.magnitude, op.magnitude_std = 1.0, 10, 0.0
    black = ours(image)
    assert black.size == image.size and black.mode == "RGB" and not np.asarray(black).any()
    if tuple(int(v) for v in PIL.__version__.split(".")[:1]) >= (13,):
        with pytest.raises(ValueError, match="bits"):
            theirs(image)
    ours.magnitude = 5  # 2 bits kept: Pillow's own posterize
    assert np.array_equal(np.asarray(ours(image)), np.asarray(ImageOps.posterize(image, 2)))


def test_batch_side_matches_timms_prefetcher_mixup_and_soft_target_loss():
    """A uint8 batch through `BatchAugmentation` (normalise, random erasing 0.25 in pixel mode, Mixup 0.8 / CutMix
    1.0 switching at 0.5) gives timm's `PrefetchLoader` + `Mixup` batch and targets, seed for seed, for Mixup and
    CutMix batches alike; the loss with label smoothing 0.1 on those targets is timm's soft-target loss on its
    smoothed targets (the official recipe folds the smoothing into Mixup's targets)."""
    from timm.loss import SoftTargetCrossEntropy

    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    generator = torch.Generator().manual_seed(0)
    kinds = set()
    for seed in range(12):
        batch = torch.randint(0, 256, (6, 3, 16, 16), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, 10, (6,), generator=generator)
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        prefetch = PrefetchLoader(
            [(batch.clone(), labels)], mean, std, device=torch.device("cpu"), re_prob=0.25, re_mode="pixel"
        )
        timm_mix = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1, num_classes=10)
        expected, expected_targets = timm_mix(*next(iter(prefetch)))
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        ours = BatchAugmentation(mean, std, 0.25, BatchMixing(10, mixup_alpha=0.8, cutmix_alpha=1.0))
        got, targets = ours(batch.clone(), labels)
        torch.testing.assert_close(got, expected, rtol=0, atol=0)
        np.random.seed(seed)  # Mixup alone draws from numpy: which kind this batch was
        kinds.add(timm_mix._params_per_batch()[1])
        logits = torch.randn(6, 10, generator=generator)
        torch.testing.assert_close(
            soft_target_loss(0.1)({"logits": logits}, targets), SoftTargetCrossEntropy()(logits, expected_targets)
        )
    assert kinds == {True, False}  # CutMix and Mixup batches both compared
    odd = BatchAugmentation(mix=BatchMixing(10, mixup_alpha=0.8))(
        torch.zeros(5, 3, 4, 4, dtype=torch.uint8), labels[:5]
    )
    assert odd[0].dtype == torch.float32 and odd[1].shape == (5, 10)  # timm's Mixup refuses odd batches


def official_rank_indices(length: int, world_size: int, rank: int, epoch: int) -> list[int]:
    """DeiT's / CeiT's `RASampler.__iter__` as the official code writes it (3 repeats, seeded by the epoch)."""
    generator = torch.Generator()
    generator.manual_seed(epoch)
    indices = torch.randperm(length, generator=generator).tolist()
    indices = [index for index in indices for _ in range(3)]
    total = math.ceil(length * 3.0 / world_size) * world_size
    indices += indices[: total - len(indices)]
    indices = indices[rank:total:world_size]
    return indices[: math.floor(length // 256 * 256 / world_size)]


@pytest.mark.parametrize("world_size", [1, 2, 4])
def test_repeated_augmentation_deals_each_rank_the_official_samplers_examples(world_size):
    """Through accelerate's sharding of Trainer's DataLoader (`prepare_data_loader`, as each of `world_size`
    processes would), each rank gets the rows of the official RASampler's list in its order, for two epochs; the
    epoch is counted as the official sampler counts it; a row's repeats carry different keys."""
    from accelerate.data_loader import prepare_data_loader
    from torch.utils.data import DataLoader

    length, batch = 1000, 32
    sampler = RepeatedAugmentationSampler(length, 3, world_size=world_size, batch_size=batch, seed=0)
    for epoch in (0, 7):
        for rank in range(world_size):
            official = official_rank_indices(length, world_size, rank, epoch)
            loader = DataLoader(range(length * 3), batch_size=batch, sampler=sampler)
            loader = prepare_data_loader(loader, num_processes=world_size, process_index=rank, put_on_device=False)
            loader.set_epoch(epoch)
            keys = [int(key) for keys in loader for key in keys]
            assert [key % length for key in keys] == official, (epoch, rank)
            assert len(set(keys)) == len(keys)  # every repeat its own key, so its own augmentation
            assert {key // length for key in keys} <= {0, 1, 2}  # repeat k of a row is key row + k * length
    assert len(sampler) == length // 256 * 256  # 768: the official epoch over all ranks


def rank_keys_by_sampler(sampler) -> list[list[int]]:
    """The keys each rank trains on, as the sampler deals them (batch by batch, rank after rank)."""
    dealt = list(sampler)
    batches = [dealt[i : i + sampler.batch_size] for i in range(0, len(dealt), sampler.batch_size)]
    return [
        [key for batch in batches[rank :: sampler.world_size] for key in batch] for rank in range(sampler.world_size)
    ]


def test_repeated_augmentation_without_set_epoch_deals_epoch_0():
    sampler = RepeatedAugmentationSampler(512, 3, batch_size=16, seed=0)
    assert [key % 512 for key in sampler] == official_rank_indices(512, 1, 0, epoch=0)


@pytest.mark.parametrize(
    "length, world_size, batch_size, per_rank",
    [
        (256, 1, 16, 256),  # exactly one official block of 256
        (300, 1, 1, 256),  # the rest beyond whole blocks of 256 left out, as the official sampler does
        (600, 2, 16, 256),  # 512 selected, 256 a rank, whole batches
        (600, 3, 50, 150),  # 170 a rank, cut to whole batches of 50
        (100, 1, 16, 96),  # below 256 (the official sampler would give nothing): whole batches of what there is
        (10, 1, 32, 10),  # fewer examples than a batch on one process: one short batch
        (10, 2, 8, 8),  # ... on two: a whole batch each, going round again
        (2, 2, 8, 8),  # ... more than a pass each: new keys, not the same ones again
        (1, 1, 1, 1),
    ],
)
def test_repeated_augmentation_sizes_beyond_the_official_ones(length, world_size, batch_size, per_rank):
    """The official sampler keeps `length // 256 * 256` examples an epoch; ours keeps small datasets trainable (and
    whole batches for each rank). Every key is a new augmentation (its own key), of the rows the official list deals."""
    sampler = RepeatedAugmentationSampler(length, 3, world_size=world_size, batch_size=batch_size, seed=0)
    assert len(sampler) == per_rank * world_size
    ranks = rank_keys_by_sampler(sampler)
    assert [len(keys) for keys in ranks] == [per_rank] * world_size
    every_key = [key for keys in ranks for key in keys]
    assert len(set(every_key)) == len(every_key) and min(every_key) >= 0
    if length >= 256:
        for rank, keys in enumerate(ranks):
            official = official_rank_indices(length, world_size, rank, epoch=0)
            assert [key % length for key in keys] == official[: len(keys)]


def test_repeated_augmentation_refuses_sizes_below_one():
    with pytest.raises(ValueError) as refusal:
        RepeatedAugmentationSampler(0, 3, world_size=2, batch_size=8)
    assert str(refusal.value) == (
        "RepeatedAugmentationSampler needs positive sizes, got {'length': 0, 'repeats': 3, 'world_size': 2, "
        "'batch_size': 8}."
    )


def test_repeats_of_a_row_are_augmented_differently():
    """`DecodedExamples` reads row `key % length` and seeds the augmentation with the key: the three repeats of
    a row are three augmentations of the same image, each the same again on a second read."""
    import datasets

    rows = datasets.Dataset.from_dict({"image": photos(4), "label": [0, 1, 2, 3]})
    augment = SeededAugmentation(train_transform(32, auto_augment=OFFICIAL_AUTO_AUGMENT), seed=0)
    examples = DecodedExamples(rows, "image", "label", augment)
    repeats = examples.__getitems__([2, 6, 10])
    assert [example["labels"] for example in repeats] == [2, 2, 2]
    pixels = [example["pixel_values"] for example in repeats]
    assert not torch.equal(pixels[0], pixels[1]) and not torch.equal(pixels[1], pixels[2])
    assert torch.equal(examples.__getitems__([6])[0]["pixel_values"], pixels[1])


def test_batch_mixing_folds_label_smoothing_into_the_targets_as_timm():
    """`BatchMixing(label_smoothing=...)`, for a loss that does not smooth (train.py smooths in its loss instead):
    Mixup's targets carry the smoothing, as timm's do."""
    generator = torch.Generator().manual_seed(1)
    for seed in range(6):
        batch = torch.rand(6, 3, 8, 8, generator=generator)
        labels = torch.randint(0, 10, (6,), generator=generator)
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        expected, expected_targets = Mixup(0.8, 1.0, label_smoothing=0.1, num_classes=10)(batch.clone(), labels)
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        got, targets = BatchMixing(10, mixup_alpha=0.8, cutmix_alpha=1.0, label_smoothing=0.1)(batch.clone(), labels)
        assert torch.equal(got, expected) and torch.equal(targets, expected_targets)


@pytest.mark.parametrize(
    "ours, theirs",
    [
        ({"color_jitter": 0.4}, {"color_jitter": 0.4}),  # no RandAugment: timm jitters colours
        (  # no flip step at all: the colour jitter after it draws what timm's draws
            {"hflip": 0.0, "crop_min_scale": 0.5, "color_jitter": 0.3},
            {"hflip": 0.0, "scale": (0.5, 1.0), "color_jitter": 0.3},
        ),
        (
            {"image_size": (48, 64), "auto_augment": OFFICIAL_AUTO_AUGMENT, "mean": (0.5, 0.4, 0.3)},
            {"input_size": (3, 48, 64), "auto_augment": OFFICIAL_AUTO_AUGMENT, "mean": (0.5, 0.4, 0.3)},
        ),
    ],
    ids=["color-jitter", "no-flip-crop-scale", "rectangle-mean"],
)
def test_training_transform_options_give_timms_images(ours, theirs, monkeypatch):
    """train.py's augmentation options (colour jitter, flip, crop scale, a rectangular size, the dataset's mean for
    RandAugment's fill) as timm's `create_transform` takes them, seed for seed."""
    monkeypatch.setattr(ImageOps, "posterize", pillow_12_posterize)
    size = ours.get("image_size", 64)
    official = create_transform(
        **({} if "input_size" in theirs else {"input_size": size}),
        is_training=True,
        interpolation="bicubic",
        use_prefetcher=True,
        **theirs,
    )
    transform = train_transform(**{"image_size": size, **ours})
    images = photos(10, seed=1)
    for seed in range(60):
        image = images[seed % len(images)]
        assert torch.equal(seeded(transform, image, seed), seeded(official, image, seed)), f"seed {seed}"


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK"])
def test_images_of_other_modes_are_augmented_as_their_rgb_conversion(mode):
    image = photos(1)[0].convert(mode)
    transform = train_transform(32, auto_augment=OFFICIAL_AUTO_AUGMENT)
    for seed in range(5):
        got = seeded(transform, image, seed)
        assert got.shape == (3, 32, 32) and torch.equal(got, seeded(transform, image.convert("RGB"), seed))


def test_evaluation_transform_gives_the_processors_tensors():
    from ceit_hf import CeiTImageProcessor

    processor = CeiTImageProcessor(crop_size=32)
    images = [image.convert(mode) for image, mode in zip(photos(3), ("RGB", "L", "RGBA"))]
    got = eval_transform(processor)(images)
    assert isinstance(got, list) and len(got) == 3
    for tensor, image in zip(got, images):
        expected = processor(image.convert("RGB"), return_tensors="pt")["pixel_values"][0]
        assert isinstance(tensor, torch.Tensor) and tensor.shape == (3, 32, 32) and torch.equal(tensor, expected)


def test_seeded_augmentation_seeds_every_generator_and_restores_them():
    """A transform may draw from Python's, numpy's or torch's generator: the key alone decides, and the caller's
    generators go on as if nothing had drawn from them."""

    def draw(_):
        return (random.random(), float(np.random.rand()), float(torch.rand(())))

    augment = SeededAugmentation(draw, seed=3)
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    first = augment([None, None], keys=[5, 6])
    after = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    assert augment([None], keys=[5]) == first[:1] and first[0] != first[1]
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == after
    assert len({value for values in first for value in values}) == 6


@pytest.mark.parametrize("mixup_alpha, cutmix_alpha", [(0.8, 0.0), (0.0, 0.5), (0.5, 1.0)])
def test_batch_mixer_is_timms_mixup_when_either_is_on(mixup_alpha, cutmix_alpha):
    assert batch_mixer(10) is None and batch_mixer(10, 0.0, 0.0, 0.1) is None
    mix = batch_mixer(7, mixup_alpha, cutmix_alpha, label_smoothing=0.1)
    batch = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 6, 2, 3])
    for seed in range(4):
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        expected = Mixup(mixup_alpha, cutmix_alpha, label_smoothing=0.1, num_classes=7)(batch.clone(), labels)
        random.seed(seed), np.random.seed(seed), torch.manual_seed(seed)
        got = mix(batch.clone(), labels)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])


def test_the_recipe_pieces_default_to_the_official_sampler_and_to_nothing_added():
    """Defaults: 3 repeats, seed 0 (the official sampler's epoch-0 order), one example a batch; no label smoothing,
    no Mixup or CutMix unless given, no random erasing."""
    assert [key % 255 for key in RepeatedAugmentationSampler(255)] == [
        index for index in torch.randperm(255, generator=torch.Generator().manual_seed(0)).tolist() for _ in range(3)
    ][:255]
    assert [key % 512 for key in RepeatedAugmentationSampler(512)] == official_rank_indices(512, 1, 0, epoch=0)
    batch = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0, 6, 2, 3])
    mean, std = torch.tensor([0.485, 0.456, 0.406]) * 255, torch.tensor([0.229, 0.224, 0.225]) * 255
    torch.manual_seed(0)
    normalized, same_labels = BatchAugmentation()(batch, labels)
    assert torch.equal(same_labels, labels)
    torch.testing.assert_close(normalized, (batch.float() - mean.view(1, 3, 1, 1)) / std.view(1, 3, 1, 1))
    images = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(1))
    for ours, theirs in (
        (lambda: batch_mixer(7, 0.8), lambda: Mixup(0.8, 0.0, label_smoothing=0.0, num_classes=7)),
        (lambda: BatchMixing(7, mixup_alpha=0.8), lambda: Mixup(0.8, 0.0, label_smoothing=0.0, num_classes=7)),
        (lambda: BatchMixing(7, cutmix_alpha=1.0), lambda: Mixup(0.0, 1.0, label_smoothing=0.0, num_classes=7)),
    ):
        random.seed(0), np.random.seed(0), torch.manual_seed(0)
        expected = theirs()(images.clone(), labels)
        random.seed(0), np.random.seed(0), torch.manual_seed(0)
        got = ours()(images.clone(), labels)
        assert torch.equal(got[0], expected[0]) and torch.equal(got[1], expected[1])
