#!/usr/bin/env python
"""The CPU side of a training step, per core: images/s of the training data pipeline (read, decode, the official
recipe's augmentation, collate), in one process (no worker processes: one core), the pipelines alternating
round after round over the same folder of ImageNet-like JPEGs that the benchmark writes first.

Pipelines:
- `ceit_hf`: what `scripts/train.py --train_dir F --recipe deit` loads: the folder index, each image decoded by
  `ceit_hf.data`, `train_transform` (timm's ops, uint8 out) per example with its own seeds;
- `timm`: the official code's pipeline: timm's `ImageDataset` and `create_transform` with the official `main.py`
  arguments (normalised float out, random erasing in the worker);
- `timm_prefetcher`: the same in the form timm's training script uses (`use_prefetcher`: uint8 out, `fast_collate`;
  normalisation and erasing go to the GPU);
- `torchvision`: torchvision's `ImageFolder` with the transforms v2 steps of the previous ceit_hf recipe
  (RandAugment 2/9, ColorJitter 0.4, normalise, random erasing);
- levers, each one change to `ceit_hf`: `ceit_hf_float` (normalised and erased in the worker, float out: the lever
  kept, undone), `ceit_hf_unseeded` (no per-example seeds: what exact resumes cost), and two measured and not taken:
  `ceit_hf_simplejpeg` (JPEGs decoded by simplejpeg to an array, the crop cut from it before it becomes a PIL image:
  the same pixels; needs `pip install simplejpeg`) and `ceit_hf_opencv_affine` (RandAugment's rotate, shear and
  translate by OpenCV's `warpAffine` instead of Pillow's: other pixels, 0.7 levels apart on average; needs
  `pip install opencv-python-headless`). A pipeline whose package is missing is left out.

Then the cost of each step per image (`--no_breakdown` leaves it out), and how often a JPEG draft (DCT-domain)
decode could serve the crop. Writes benchmarks/data_loader_cpu.json and .md (or --output).

`--feed` measures instead what the GPU suite reports (its `feed` part): the training DataLoader with its worker
processes feeding a CeiT-T training step (forward, backward, AdamW; bf16 autocast on CUDA) on `--device`: the
loader's images/s alone, the step's alone (one batch over and over), and together, with the share of each step spent
waiting for the next batch; for pinned memory on and off and each `--prefetch_factors`.

    python benchmarks/data_loader.py                      # 1,000 JPEGs of 300-500 px, 5 rounds of 8 batches of 32
    python benchmarks/data_loader.py --images 64 --rounds 1 --batches 1    # a smoke run
    python benchmarks/data_loader.py --feed --device cuda --workers 15 --batch_size 256 --images 2048
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run by path: the repository root's `benchmarks`

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


OFFICIAL = {
    "auto_augment": "rand-m9-mstd0.5-inc1",
    "interpolation": "bicubic",
    "color_jitter": 0.4,
    "re_prob": 0.25,
    "re_mode": "pixel",
    "re_count": 1,
}


def posterize_as_pillow_12(image, bits):
    """`ImageOps.posterize` as Pillow did it before 13 (0 bits: a black image), for timm's pipelines: timm 1.0.31's
    `inc1` posterize asks for 0 bits now and then, which Pillow 13 refuses mid-epoch. The same look-up table as
    Pillow's own, so the same cost."""
    lut = [i & ~(2 ** (8 - bits) - 1) for i in range(256)]
    return image.point(lut * len(image.getbands()))


def write_jpegs(folder: Path, count: int, classes: int = 10, seed: int = 0) -> Path:
    """`count` ImageNet-like JPEGs (`workers.synthetic_jpegs`: smooth colour fields with fine noise, which compress
    and decode like photographs) with sides of 300 to 500 px, quality 90, in `classes` class folders."""
    from benchmarks.workers import synthetic_jpegs

    rng = np.random.default_rng(seed)
    for index in range(count):
        size = tuple(int(v) for v in rng.integers(300, 501, 2))
        path = folder / f"class_{index % classes:03d}" / f"{index:06d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(synthetic_jpegs(1, size, quality=90, seed=seed * 1_000_003 + index)[0])
    return folder


class BoxResizedCrop:
    """The `ceit_hf_box_resize` lever: timm's RandomResizedCrop parameters, the crop resized from the image in one
    call (`resize(box=...)`: no copy of the crop; the filter reads past the crop's edge, so not timm's pixels)."""

    def __init__(self, size: int):
        from timm.data.transforms import RandomResizedCropAndInterpolation

        self.crop = RandomResizedCropAndInterpolation(size, interpolation="bicubic")

    def __call__(self, image):
        top, left, height, width = self.crop.get_params(image, self.crop.scale, self.crop.ratio)
        size = self.crop.size[::-1]
        return image.resize(size, Image.BICUBIC, box=(left, top, left + width, top + height))


class DecodedArray:
    """The `ceit_hf_simplejpeg` lever's decoded JPEG: an RGB array, cropped before it becomes a PIL image."""

    mode = "RGB"

    def __init__(self, pixels):
        self.pixels = pixels

    @property
    def size(self):
        return self.pixels.shape[1], self.pixels.shape[0]


def simplejpeg_examples():
    """`DecodedExamples` whose JPEGs simplejpeg decodes to arrays (the `ceit_hf_simplejpeg` lever)."""
    import simplejpeg

    from ceit_hf.data import DecodedExamples

    class SimplejpegExamples(DecodedExamples):
        def decode(self, value, label):
            with open(value["path"], "rb") as file:
                return DecodedArray(simplejpeg.decode_jpeg(file.read(), colorspace="RGB")), label

    return SimplejpegExamples


class ArrayCrop:
    """timm's RandomResizedCrop parameters, the crop cut from a `DecodedArray` and only it made a PIL image."""

    def __init__(self, size: int):
        from timm.data.transforms import RandomResizedCropAndInterpolation

        self.crop = RandomResizedCropAndInterpolation(size, interpolation="bicubic")

    def __call__(self, image):
        width, height = image.size
        shape = torch.empty((), dtype=torch.uint8).expand(height, width)  # the size alone, as timm reads it
        top, left, h, w = self.crop.get_params(shape, self.crop.scale, self.crop.ratio)
        return Image.fromarray(image.pixels[top : top + h, left : left + w]).resize(
            self.crop.size[::-1], Image.BICUBIC
        )


def opencv_affine(fill, cv2):
    """Pillow's AFFINE transform (bicubic, `fill` outside) by OpenCV's warpAffine: Pillow's matrix maps an output
    pixel's centre to input coordinates; OpenCV's inverse map takes pixel indices."""

    def transform(image, matrix):
        a, b, c, d, e, f = matrix
        inverse = np.array([[a, b, c + (a + b - 1) / 2], [d, e, f + (d + e - 1) / 2]])
        pixels = cv2.warpAffine(
            np.asarray(image),
            inverse,
            image.size,
            flags=cv2.INTER_CUBIC | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=fill,
        )
        return Image.fromarray(pixels)

    return transform


def with_opencv_affine(rand_augment_transform):
    """`rand_augment_transform` with its rotate, shear and translate ops by OpenCV (the `ceit_hf_opencv_affine`
    lever): the same parameters drawn, the image resampled by `opencv_affine`."""
    import math

    import cv2

    cv2.setNumThreads(1)
    for op in rand_augment_transform.ops:
        fill = op.kwargs.get("fillcolor", (0, 0, 0))
        affine = opencv_affine(fill, cv2)
        if op.name in ("ShearX", "ShearY"):
            op.aug_fn = lambda im, f, x=op.name == "ShearX", **_: affine(
                im, (1, f, 0, 0, 1, 0) if x else (1, 0, 0, f, 1, 0)
            )
        elif op.name in ("TranslateXRel", "TranslateYRel"):
            op.aug_fn = lambda im, p, x=op.name == "TranslateXRel", **_: affine(
                im, (1, 0, p * im.size[0], 0, 1, 0) if x else (1, 0, 0, 0, 1, p * im.size[1])
            )
        elif op.name == "Rotate":

            def rotate(im, degrees, affine=affine, **_):
                # Pillow's rotate about the centre, as the inverse matrix it builds
                angle = -math.radians(degrees)
                cos, sin = math.cos(angle), math.sin(angle)
                cx, cy = im.size[0] / 2, im.size[1] / 2
                return affine(im, (cos, sin, cx - cos * cx - sin * cy, -sin, cos, cy + sin * cx - cos * cy))

            op.aug_fn = rotate
    return rand_augment_transform


def ceit_hf_loader(folder: str, size: int, batch: int, variant: str = ""):
    """The training DataLoader that train.py builds for an image folder under the official recipe (`variant`: one
    lever changed)."""
    from transformers import default_data_collator

    from ceit_hf.data import DecodedExamples, image_folder_dataset
    from ceit_hf.data.transforms import BatchAugmentation, SeededAugmentation, train_transform

    transform = train_transform(size, auto_augment=OFFICIAL["auto_augment"])
    if variant == "simplejpeg":
        transform.transforms[1] = ArrayCrop(size)
    if variant == "opencv_affine":
        with_opencv_affine(transform.transforms[3])
    augment = SeededAugmentation(transform, seed=0)
    if variant == "unseeded":

        def augment(images, keys):
            return [transform(image) for image in images]

    collate = default_data_collator
    if variant == "float":
        worker_side = BatchAugmentation(random_erasing=OFFICIAL["re_prob"])

        def collate(examples):
            batch = default_data_collator(examples)
            batch["pixel_values"], _ = worker_side(batch["pixel_values"], batch["labels"])
            return batch

    dataset, _ = image_folder_dataset(folder, "--train_dir", cache_dir=tempfile.mkdtemp())
    examples = (simplejpeg_examples() if variant == "simplejpeg" else DecodedExamples)(
        dataset, "image", "label", augment
    )
    return torch.utils.data.DataLoader(examples, batch_size=batch, shuffle=True, collate_fn=collate)


def timm_loader(folder: str, size: int, batch: int, prefetcher: bool):
    """The official code's training DataLoader (timm's dataset and transform with main.py's arguments)."""
    from timm.data import ImageDataset, create_transform
    from timm.data.loader import fast_collate

    transform = create_transform(size, is_training=True, use_prefetcher=prefetcher, **OFFICIAL)
    dataset = ImageDataset(folder, transform=transform)
    collate = fast_collate if prefetcher else None
    return torch.utils.data.DataLoader(dataset, batch_size=batch, shuffle=True, collate_fn=collate)


def torchvision_loader(folder: str, size: int, batch: int):
    """torchvision's ImageFolder with the previous ceit_hf recipe in transforms v2."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    bicubic = v2.InterpolationMode.BICUBIC
    transform = v2.Compose(
        [
            v2.RGB(),
            v2.RandomResizedCrop(size, interpolation=bicubic),
            v2.RandomHorizontalFlip(),
            v2.RandAugment(2, 9, interpolation=bicubic),
            v2.ColorJitter(0.4, 0.4, 0.4),
            v2.ToImage(),
            v2.ToDtype(torch.float32, scale=True),
            v2.Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
            v2.RandomErasing(p=0.25, value="random"),
        ]
    )
    return torch.utils.data.DataLoader(ImageFolder(folder, transform=transform), batch_size=batch, shuffle=True)


PIPELINES = {
    "ceit_hf": lambda f, s, b: ceit_hf_loader(f, s, b),
    "timm": lambda f, s, b: timm_loader(f, s, b, prefetcher=False),
    "timm_prefetcher": lambda f, s, b: timm_loader(f, s, b, prefetcher=True),
    "torchvision": torchvision_loader,
    "ceit_hf_float": lambda f, s, b: ceit_hf_loader(f, s, b, "float"),
    "ceit_hf_unseeded": lambda f, s, b: ceit_hf_loader(f, s, b, "unseeded"),
    "ceit_hf_simplejpeg": lambda f, s, b: ceit_hf_loader(f, s, b, "simplejpeg"),
    "ceit_hf_opencv_affine": lambda f, s, b: ceit_hf_loader(f, s, b, "opencv_affine"),
}


NEEDS = {"ceit_hf_simplejpeg": "simplejpeg", "ceit_hf_opencv_affine": "cv2"}


def available_pipelines() -> list[str]:
    """The pipelines whose packages are installed (the two levers not taken need packages of their own)."""
    import importlib.util

    return [name for name in PIPELINES if name not in NEEDS or importlib.util.find_spec(NEEDS[name]) is not None]


def images_per_second(loader, batches: int) -> float:
    """Images/s of `batches` batches drawn from a fresh iterator of `loader` (after one untimed batch)."""
    iterator = iter(loader)
    next(iterator)
    count, start = 0, time.perf_counter()
    for _ in range(batches):
        try:
            batch = next(iterator)
        except StopIteration:
            iterator = iter(loader)
            batch = next(iterator)
        pixels = batch["pixel_values"] if isinstance(batch, dict) else batch[0]
        count += len(pixels)
    return count / (time.perf_counter() - start)


def breakdown(folder: str, size: int, images: int = 200) -> dict:
    """Milliseconds per image of each step of the worker-side pipeline (ceit_hf's and timm's), timed apart over
    `images` images of the folder: where the time of a step goes, and which steps the two share."""
    from timm.data import create_transform
    from timm.data.transforms import MaybePILToTensor, RandomResizedCropAndInterpolation
    from torchvision import transforms

    from ceit_hf.data.decoding import decode_image
    from ceit_hf.data.transforms import SeededAugmentation, rand_augment, to_uint8_tensor, train_transform

    paths = sorted(str(p) for p in Path(folder).rglob("*.jpg"))[:images]
    import datasets

    feature = datasets.Image()

    def timed(function, inputs):
        start = time.perf_counter()
        outputs = [function(x) for x in inputs]
        return outputs, (time.perf_counter() - start) / len(inputs) * 1e3

    random.seed(0), np.random.seed(0), torch.manual_seed(0)
    result = {}
    decoded, result["decode (ceit_hf: Pillow through datasets' Image feature)"] = timed(
        lambda p: decode_image({"path": p, "bytes": None}, feature), paths
    )
    _, result["decode + convert('RGB') (timm's ImageDataset)"] = timed(lambda p: Image.open(p).convert("RGB"), paths)
    crop = RandomResizedCropAndInterpolation(size, interpolation="bicubic")
    cropped, result["random resized crop, bicubic (timm, of a PIL image)"] = timed(crop, decoded)
    _, result["random resized crop via resize(box) (lever)"] = timed(BoxResizedCrop(size), decoded)
    flipped, result["horizontal flip 0.5"] = timed(transforms.RandomHorizontalFlip(), cropped)
    augmented, result["RandAugment rand-m9-mstd0.5-inc1 (timm's ops)"] = timed(
        rand_augment(OFFICIAL["auto_augment"], size), flipped
    )
    _, result["to uint8 tensor (ceit_hf)"] = timed(to_uint8_tensor, augmented)
    _, result["to uint8 tensor (timm MaybePILToTensor)"] = timed(MaybePILToTensor(), augmented)
    tensors, result["to float + normalise (timm, worker)"] = timed(
        transforms.Compose(create_transform(size, is_training=True, **OFFICIAL).transforms[-3:-1]), augmented
    )
    seeded = SeededAugmentation(lambda image: image, seed=0)
    batch = min(32, len(augmented))
    batches = [augmented[i : i + batch] for i in range(0, len(augmented) - batch + 1, batch)]
    _, per_batch = timed(lambda images: seeded(images, range(len(images))), batches)
    result["per-example seeds (random, numpy, torch; states kept per batch of 32)"] = per_batch / batch
    whole = train_transform(size, auto_augment=OFFICIAL["auto_augment"])
    _, result["ceit_hf train_transform in all (after decode)"] = timed(whole, decoded)
    return {step: round(ms, 3) for step, ms in result.items()}


def draft_share(folder: str, size: int, draws: int = 20000) -> float:
    """The share of random resized crops (timm's parameters, scale 0.08-1) of the folder's images whose both sides
    are at least twice `size`: the crops a JPEG draft decode at half scale or less (DCT-domain downscaling, Pillow's
    `Image.draft`) could serve without resampling below the output's resolution."""
    from timm.data.transforms import RandomResizedCropAndInterpolation

    crop = RandomResizedCropAndInterpolation(size)
    sizes = [Image.open(p).size for p in sorted(Path(folder).rglob("*.jpg"))]
    random.seed(0)
    hits = 0
    for index in range(draws):
        width, height = sizes[index % len(sizes)]
        _, _, h, w = crop.get_params(Image.new("1", (width, height)), crop.scale, crop.ratio)
        hits += min(h, w) >= 2 * size
    return hits / draws


def feed(
    folder: str,
    device: str,
    workers: int,
    batch_size: int,
    image_size: int,
    steps: int,
    prefetch_factors=(2, 4),
    config_overrides: dict | None = None,
) -> dict:
    """The training DataLoader (`ceit_hf` pipeline, `workers` worker processes) feeding a CeiT-T training step on
    `device`, in the training process as Trainer runs it: uint8 batches copied to the device, normalised and erased
    there (`BatchAugmentation`), then forward, backward and AdamW (bf16 autocast on CUDA). Per setting (pinned
    memory, prefetch factor): images/s of `steps` steps, and the share of their time spent waiting for a batch
    (`next` on the loader). Before them the loader's images/s alone and the step's alone."""
    from ceit_hf import CeiTConfig, CeiTForImageClassification
    from ceit_hf.data.transforms import BatchAugmentation, BatchMixing

    config = CeiTConfig.from_preset("ceit_tiny_patch16_224", image_size=image_size, **(config_overrides or {}))
    model = CeiTForImageClassification(config).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    batch_side = BatchAugmentation(random_erasing=0.25, mix=BatchMixing(config.num_labels, 0.8, 1.0))
    autocast = (
        torch.autocast("cuda", torch.bfloat16) if device.startswith("cuda") else torch.autocast("cpu", enabled=False)
    )

    def synchronize():
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    def step(batch):
        pixels = batch["pixel_values"].to(device, non_blocking=True)
        labels = batch["labels"].to(device, non_blocking=True) % config.num_labels
        pixels, targets = batch_side(pixels, labels)
        with autocast:
            logits = model(pixel_values=pixels).logits
        loss = torch.nn.functional.cross_entropy(logits.float(), targets)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def loader(pin: bool, prefetch: int):
        base = ceit_hf_loader(folder, image_size, batch_size)
        return torch.utils.data.DataLoader(
            base.dataset,
            batch_size=batch_size,
            sampler=torch.utils.data.RandomSampler(base.dataset, replacement=True, num_samples=10**9),
            collate_fn=base.collate_fn,
            num_workers=workers,
            pin_memory=pin and device.startswith("cuda"),
            prefetch_factor=prefetch if workers else None,
            persistent_workers=False,
            drop_last=True,
        )

    result = {"device": device, "workers": workers, "batch_size": batch_size, "image_size": image_size, "runs": []}
    batches = iter(loader(True, prefetch_factors[0]))
    fixed = [next(batches) for _ in range(2 * max(workers, 1))][-1]  # workers started, first batches prefetched
    start = time.perf_counter()
    _ = [next(batches) for _ in range(steps)]
    result["loader_images_per_second"] = steps * batch_size / (time.perf_counter() - start)
    del batches
    for _ in range(3):  # warm-up (cuDNN, allocator)
        step(fixed)
    synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(fixed)
    synchronize()
    result["step_images_per_second"] = steps * batch_size / (time.perf_counter() - start)
    for pin in (True, False) if device.startswith("cuda") else (False,):
        for prefetch in prefetch_factors if workers else (None,):
            run = fed_steps(loader(pin, prefetch or 2), step, steps, warm=2 * max(workers, 1), sync=synchronize)
            result["runs"].append({"pin_memory": pin, "prefetch_factor": prefetch, **run})
    return result


def fed_steps(loader, step, steps: int, warm: int, sync) -> dict:
    """Images/s of `steps` calls of `step` on the batches of `loader` (after `warm` untimed ones), and the share of
    that time spent in `next` waiting for a batch."""
    batches = iter(loader)
    for _ in range(warm):
        step(next(batches))
    sync()
    waited, start = 0.0, time.perf_counter()
    for _ in range(steps):
        asked = time.perf_counter()
        batch = next(batches)
        waited += time.perf_counter() - asked
        step(batch)
    sync()
    seconds = time.perf_counter() - start
    return {"images_per_second": steps * loader.batch_size / seconds, "waiting_share": waited / seconds}


def feed_table(result: dict) -> str:
    lines = [
        f"Machine: {result['machine']}. CeiT-T training step on {result['device']}, batches of {result['batch_size']} "
        f"at {result['image_size']} px, {result['workers']} data-loading workers: the loader alone "
        f"{result['loader_images_per_second']:.0f} images/s, the step alone {result['step_images_per_second']:.0f}.",
        "",
        "| pinned memory | prefetch factor | images/s together | share of the step waiting for data |",
        "|---|---|---|---|",
    ]
    for run in result["runs"]:
        lines.append(
            f"| {'on' if run['pin_memory'] else 'off'} | {run['prefetch_factor']} | {run['images_per_second']:.0f} | "
            f"{100 * run['waiting_share']:.0f}% |"
        )
    return "\n".join(lines) + "\n"


def machine() -> str:
    """The CPU, its count and the versions the pipelines depend on (`benchmarks.common.machine_info` and more)."""
    import PIL
    import timm
    import torchvision

    from benchmarks.common import machine_info

    info = machine_info()
    return (
        f"{info['cpu']}, {info['cpu_count']} CPUs; Python {info['python']}, torch {info['torch']}, "
        f"torchvision {torchvision.__version__}, timm {timm.__version__}, Pillow {PIL.__version__}"
    )


def table(result: dict) -> str:
    reference = result["median_images_per_second"]["timm_prefetcher"]
    lines = [
        f"Machine: {result['machine']}. {result['images']} JPEGs of 300-500 px (quality 90, {result['jpeg_kib_mean']:.0f} "
        f"KiB mean), crops of {result['image_size']} px, batches of {result['batch_size']}, one process with 0 workers "
        f"(one core, 1 torch thread); median of {result['rounds']} alternating rounds of {result['batches']} batches.",
        "",
        "| pipeline | images/s per core | vs timm prefetcher | vs timm |",
        "|---|---|---|---|",
    ]
    for name, rate in result["median_images_per_second"].items():
        lines.append(
            f"| {name} | {rate:.0f} | {rate / reference:.2f}x | {rate / result['median_images_per_second']['timm']:.2f}x |"
        )
    if result.get("breakdown_ms"):
        lines += ["", "| step (per image) | ms |", "|---|---|"]
        lines += [f"| {step} | {ms:.3f} |" for step, ms in result["breakdown_ms"].items()]
    if result.get("draft_share") is not None:
        lines += ["", f"Crops a half-scale JPEG draft decode could serve: {100 * result['draft_share']:.1f}%."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--image_size", type=int, default=224)
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=8, help="timed batches per pipeline per round")
    parser.add_argument("--pipelines", nargs="+", default=available_pipelines(), choices=list(PIPELINES))
    parser.add_argument("--no_breakdown", action="store_true")
    parser.add_argument("--folder", help="use these JPEGs (one sub-folder per class) instead of writing new ones")
    parser.add_argument("--output", default=str(Path(__file__).with_name("data_loader_cpu")))
    parser.add_argument("--feed", action="store_true", help="the loader feeding a training step (see above)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 1))
    parser.add_argument("--steps", type=int, default=20, help="--feed: timed steps per setting")
    parser.add_argument("--prefetch_factors", nargs="+", type=int, default=[2, 4])
    parser.add_argument("--config_overrides", help="--feed: CeiT-T config keys, 'k=v,...' (e.g. num_encoder_blocks=1)")
    args = parser.parse_args(argv)
    from unittest import mock

    from PIL import ImageOps

    # timm's pipelines would stop at the first 0-bit posterize (for this run only: main() also runs in tests)
    with mock.patch.object(ImageOps, "posterize", posterize_as_pillow_12):
        return run(args, argv)


def run(args, argv) -> dict:
    """The measurement `main` parsed."""
    if args.feed:
        from ceit_hf.training import parse_config_overrides

        with tempfile.TemporaryDirectory() as scratch:
            folder = args.folder or str(write_jpegs(Path(scratch) / "images", args.images))
            result = feed(
                folder,
                args.device,
                args.workers,
                args.batch_size,
                args.image_size,
                args.steps,
                args.prefetch_factors,
                parse_config_overrides(args.config_overrides),
            )
        result["machine"] = machine()
        print(feed_table(result))
        Path(args.output + ".md").write_text(feed_table(result), encoding="utf-8")
        Path(args.output + ".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
        return result
    torch.set_num_threads(1)

    with tempfile.TemporaryDirectory() as scratch:
        folder = args.folder or str(write_jpegs(Path(scratch) / "images", args.images))
        files = list(Path(folder).rglob("*.jpg"))
        loaders = {name: PIPELINES[name](folder, args.image_size, args.batch_size) for name in args.pipelines}
        rates = {name: [] for name in loaders}
        for round_ in range(args.rounds):
            for name, loader in loaders.items():
                rates[name].append(images_per_second(loader, args.batches))
            print(f"round {round_ + 1}: " + ", ".join(f"{n} {r[-1]:.0f}" for n, r in rates.items()), flush=True)
        result = {
            "machine": machine(),
            "command": " ".join(
                ["python", "benchmarks/data_loader.py", *(argv if argv is not None else sys.argv[1:])]
            ),
            "images": len(files),
            "jpeg_kib_mean": sum(f.stat().st_size for f in files) / len(files) / 1024,
            "image_size": args.image_size,
            "batch_size": args.batch_size,
            "rounds": args.rounds,
            "batches": args.batches,
            "images_per_second": rates,
            "median_images_per_second": {name: statistics.median(r) for name, r in rates.items()},
            "breakdown_ms": None if args.no_breakdown else breakdown(folder, args.image_size),
            "draft_share": draft_share(folder, args.image_size),
        }
    if "timm_prefetcher" in rates and "timm" in rates:
        print(table(result))
        Path(args.output + ".md").write_text(table(result), encoding="utf-8")
    Path(args.output + ".json").write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
