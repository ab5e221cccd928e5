"""The training job (scripts/train.py -> ceit_hf.training) and the evaluation script."""

import itertools
import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline

from ceit_hf import CeiTForImageClassification
from ceit_hf.data import check_labels, digits_dataset
from ceit_hf.data.transforms import SeededAugmentation, batch_mixer
from ceit_hf.training import (
    DEIT_RECIPE,
    main,
    parse_args,
    parse_config_overrides,
    soft_target_loss,
)


ROOT = Path(__file__).resolve().parents[2]
# A few steps of a one-block model: enough to exercise the whole job in seconds.
SHORT = (
    "--max_train_samples 96 --max_eval_samples 32 --per_device_train_batch_size 8 --config_overrides "
    "num_encoder_blocks=1 --disable_tqdm true --report_to none"
).split()
# Two training steps, no evaluation or checkpoint in between (the final evaluation still runs).
TWO_STEPS = "--max_steps 2 --eval_strategy no --save_strategy no".split()
RECIPE = (
    "--mixup_alpha 0.8 --cutmix_alpha 1.0 --random_erasing 0.25 --auto_augment rand-m9-mstd0.5-inc1 --color_jitter 0.4 "
    "--repeated_augmentation 3 "
    "--label_smoothing_factor 0.1 --model_ema_decay 0.9 --drop_path 0.1"
).split()


def run_script(args, timeout=600, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def max_difference(a: Path, b: Path) -> float:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    return max((first[k].double() - second[k].double()).abs().max().item() for k in first)


@pytest.mark.slow
def test_main_job_trains_digits_to_95_percent(tmp_path):
    """The README's main job, exactly as a new user runs it: no flag but --output_dir."""
    out = tmp_path / "digits"
    result = run_script([sys.executable, "scripts/train.py", "--output_dir", str(out)])
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "world size 1" in log
    assert "%|" in log  # Trainer's progress bars stay on
    results = json.loads((out / "all_results.json").read_text())
    assert results["eval_accuracy"] >= 0.95
    assert "eval_top5_accuracy" in results
    assert json.loads((out / "eval_results.json").read_text())["eval_accuracy"] == results["eval_accuracy"]
    for name in ("config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_ceit.py"):
        assert (out / name).is_file(), name

    model = AutoModelForImageClassification.from_pretrained(out).eval()
    processor = AutoImageProcessor.from_pretrained(out)
    assert model.config.id2label[7] == "7" and processor.crop_size == {"height": 32, "width": 32}
    card = (out / "README.md").read_text()
    assert f"| validation | {round(100 * results['eval_accuracy'], 2)} |" in card and "sklearn-digits" in card
    assert "trained from scratch" in card and "\ndatasets:" not in card  # the digits are no Hub dataset
    validation = digits_dataset()["validation"]
    classifier = pipeline("image-classification", model=str(out))
    images = [validation[i]["image"].convert("RGB") for i in range(20)]
    predictions = [p[0]["label"] for p in classifier(images)]
    truth = [str(validation[i]["label"]) for i in range(20)]
    assert np.mean([p == t for p, t in zip(predictions, truth)]) >= 0.9

    evaluation = run_script(
        [sys.executable, "scripts/validate.py", "--model", str(out), "--output_json", str(tmp_path / "e.json")]
    )
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["num_images"] == 360 and evaluated["images_per_second"] > 0
    assert abs(evaluated["eval_accuracy"] - results["eval_accuracy"]) < 1e-9


def test_resume_is_exact_with_the_whole_recipe(tmp_path):
    """8 steps saving at step 4, then a second run resumed from checkpoint-4: the same weights (and EMA)."""
    common = (
        SHORT + RECIPE + ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--eval_strategy", "no"]
    )
    main(["--output_dir", str(tmp_path / "a"), *common])
    main(
        [
            "--output_dir",
            str(tmp_path / "b"),
            *common,
            "--resume_from_checkpoint",
            str(tmp_path / "a" / "checkpoint-4"),
        ]
    )
    assert max_difference(tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors") <= 1e-6
    assert (
        max_difference(tmp_path / "a" / "ema" / "model.safetensors", tmp_path / "b" / "ema" / "model.safetensors")
        <= 1e-6
    )
    # and the run really trained: the weights moved away from the checkpoint
    assert (
        max_difference(tmp_path / "a" / "checkpoint-4" / "model.safetensors", tmp_path / "a" / "model.safetensors")
        > 1e-4
    )


@pytest.mark.slow
def test_two_process_data_parallel_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    result = run_script(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29533",
            "scripts/train.py",
            "--use_cpu",
            "--output_dir",
            str(out),
            "--max_steps",
            "4",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            *SHORT,
        ]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "world size 2, process rank 0" in log and "world size 2, process rank 1" in log
    model = AutoModelForImageClassification.from_pretrained(out)
    assert isinstance(model, CeiTForImageClassification)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


def digit_folders(root: Path, size: int = 48, train: int = 60, val: int = 20) -> Path:
    """The first digits as PNG files in `root/train/digit_K/` and `root/val/digit_K/` (imagefolder layout)."""
    digits = digits_dataset()
    for split, data in (
        ("train", digits["train"].select(range(train))),
        ("val", digits["validation"].select(range(val))),
    ):
        for i, example in enumerate(data):
            folder = root / split / f"digit_{example['label']}"
            folder.mkdir(parents=True, exist_ok=True)
            example["image"].resize((size, size)).convert("RGB").save(folder / f"{i}.png")
    return root


def test_own_image_folders_get_a_small_model_sized_to_the_images(tmp_path):
    digit_folders(tmp_path)
    out = tmp_path / "out"
    metrics = main(
        [
            "--train_dir",
            str(tmp_path / "train"),
            "--validation_dir",
            str(tmp_path / "val"),
            "--output_dir",
            str(out),
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "16",
            "--disable_tqdm",
            "true",
            "--torch_threads",
            "1",
        ]
    )
    assert "eval_accuracy" in metrics and torch.get_num_threads() == 1
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"] == 48 and config["d_model"] == 64
    assert set(config["id2label"].values()) == {f"digit_{d}" for d in range(10)}


def test_fine_tuning_a_saved_model_with_new_labels(tmp_path):
    base = tmp_path / "base"
    main(["--output_dir", str(base), "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", *SHORT])
    # the same kind of images with the labels renamed ("7" -> "digit_7"): a different id2label of the same size
    digit_folders(tmp_path / "data", size=32)
    tuned = tmp_path / "tuned"
    metrics = main(
        [
            "--model_name_or_path",
            str(base),
            "--train_dir",
            str(tmp_path / "data" / "train"),
            "--validation_dir",
            str(tmp_path / "data" / "val"),
            "--output_dir",
            str(tuned),
            *TWO_STEPS,
            "--disable_tqdm",
            "true",
            "--report_to",
            "none",
        ]
    )
    assert 0.0 <= metrics["eval_accuracy"] <= 1.0
    base_labels = json.loads((base / "config.json").read_text())["id2label"]
    tuned_labels = json.loads((tuned / "config.json").read_text())["id2label"]
    assert base_labels["7"] == "7" and tuned_labels["7"] == "digit_7"
    # it started from the saved weights: 2 small steps move them a little, far less than a fresh initialisation is away
    fresh = tmp_path / "fresh"
    CeiTForImageClassification(CeiTForImageClassification.config_class.from_pretrained(base)).save_pretrained(fresh)

    def mean_change(a: Path, b: Path) -> float:  # over the learned weights (not BatchNorm's statistics)
        first, second = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
        learned = [k for k in first if first[k].is_floating_point() and "running_" not in k]
        return float(np.mean([(first[k] - second[k]).abs().mean() for k in learned]))

    assert 0 < mean_change(base, tuned) < mean_change(base, fresh) / 3
    card = (tuned / "README.md").read_text()
    assert f"fine-tuned from `{base}`" in card and "\nbase_model:" not in card  # a local folder is no Hub id


@pytest.mark.parametrize(
    "layout, message",
    [
        ("missing", "does not exist: expected one sub-folder of images per class"),
        ("empty", "is empty: expected one sub-folder of images per class"),
        ("flat", r"has no class sub-folders \(2 files directly in it\)"),
        ("class_without_images", "the class folder 'dog' holds no images"),
        ("unreadable", r"2 file\(s\) are not readable images: cat/broken.png, dog/empty.jpg"),
    ],
)
def test_bad_image_folders_fail_with_one_line(tmp_path, layout, message):
    root = tmp_path / "train"
    good = Image.new("RGB", (8, 8))
    if layout != "missing":
        root.mkdir()
    if layout == "flat":
        good.save(root / "a.png"), good.save(root / "b.png")
    if layout in ("class_without_images", "unreadable"):
        (root / "cat").mkdir(), (root / "dog").mkdir()
        good.save(root / "cat" / "ok.png")
        (root / "dog" / "notes.txt").write_text("no image")
    if layout == "unreadable":
        good.save(root / "dog" / "ok.png")
        (root / "cat" / "broken.png").write_bytes(b"\x89PNG garbage")
        (root / "dog" / "empty.jpg").write_bytes(b"")
    with pytest.raises(SystemExit, match=f"error: --train_dir '{re.escape(str(root))}'.*{message}"):
        main(["--train_dir", str(root), "--output_dir", str(tmp_path / "out"), *SHORT])
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_bad_data_is_one_line_without_a_traceback_and_help_lists_every_flag(tmp_path, capsys):
    result = run_script(
        [
            sys.executable,
            "scripts/train.py",
            "--train_dir",
            str(tmp_path / "nope"),
            "--output_dir",
            str(tmp_path / "out"),
        ],
        timeout=120,
    )
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert (
        result.stderr.strip().splitlines()[-1].startswith(f"error: --train_dir '{tmp_path / 'nope'}' does not exist")
    )
    from ceit_hf.training.arguments import parse_args

    with pytest.raises(SystemExit) as exit_info:  # (in-process: a second interpreter costs 5 s of imports)
        parse_args(["--help"])
    assert exit_info.value.code == 0
    help_text = capsys.readouterr().out
    for flag in (
        "--output_dir",
        "--train_dir",
        "--recipe",
        "--mixup_alpha",
        "--torch_threads",
        "--sync_batchnorm",
        "--learning_rate",
        "--resume_from_checkpoint",
        "--push_to_hub",
        "--lora_rank",
        "--merge_lora",
        "--leff_recompute",
        "--stem_recompute",
        "--keep_freed_cpu_memory",
    ):
        assert f"\n  {flag} " in help_text, flag


def recorded_run(tmp_path, monkeypatch, flags, record=None):
    """`main()` of 2 steps of a SHORT run with `flags`, `record(model)` called on the built model before training
    (to hook it): (the run's trainer, its final metrics)."""
    from ceit_hf.training import run

    original, trained = run.train_and_evaluate, {}

    def train_and_evaluate(model, *args, **kwargs):
        if record is not None:
            record(model)
        trained["trainer"], metrics = original(model, *args, **kwargs)
        return trained["trainer"], metrics

    monkeypatch.setattr(run, "train_and_evaluate", train_and_evaluate)
    metrics = main(
        [
            "--output_dir",
            str(tmp_path / "run"),
            *TWO_STEPS,
            *SHORT,
            *flags,
        ]
    )
    assert np.isfinite(metrics["eval_loss"])
    return trained["trainer"], metrics


def test_training_options_activation_checkpointing_replays_the_checkpointed_blocks(tmp_path, monkeypatch):
    """`--activation_checkpointing` (transformers 5.24's name of the deprecated `--gradient_checkpointing`) with
    `every_n_layers` 2 on a 2-block model: the first block's attention runs twice in each training step (forward,
    then its replay in the backward pass), the second block's once; evaluation runs each once per batch."""
    calls = {0: [], 1: []}

    def count_calls(model):
        for i, layer in enumerate(model.ceit.encoder.layers):
            layer.attention.register_forward_hook(lambda module, args, output, i=i: calls[i].append(module.training))

    trainer, _ = recorded_run(
        tmp_path,
        monkeypatch,
        [
            "--config_overrides",
            "num_encoder_blocks=2",
            "--activation_checkpointing",
            "true",
            "--activation_checkpointing_kwargs",
            '{"every_n_layers": 2}',
        ],
        count_calls,
    )
    assert trainer.args.activation_checkpointing and trainer.model.is_activation_checkpointing
    assert [layer.gradient_checkpointing for layer in trainer.model.ceit.encoder.layers] == [True, False]
    # 2 training steps, then the 32 evaluation images in one batch
    assert (calls[0].count(True), calls[1].count(True)) == (2 * 2, 2)
    assert calls[0].count(False) == calls[1].count(False) == 1


def test_training_options_bf16_trains_under_bfloat16_autocast(tmp_path, monkeypatch):
    """`--bf16 --use_cpu`: the training steps compute in bfloat16 (autocast) while the weights stay float32."""
    dtypes = {True: set(), False: set()}

    def record_dtypes(model):
        qkv = model.ceit.encoder.layers[0].attention.qkv
        qkv.register_forward_hook(lambda module, args, output: dtypes[module.training].add(output.dtype))

    trainer, _ = recorded_run(tmp_path, monkeypatch, ["--bf16", "true", "--use_cpu", "true"], record_dtypes)
    assert trainer.accelerator.mixed_precision == "bf16"
    assert dtypes[True] == {torch.bfloat16}
    assert {p.dtype for p in trainer.model.parameters()} == {torch.float32}


def test_training_options_deit_recipe_mixes_the_targets_and_keeps_an_ema(tmp_path, monkeypatch):
    """`--recipe deit` with a 0.9 EMA: the loss sees Mixup/CutMix's soft targets (smoothed by 0.1) in training and
    the labels in evaluation, and after the second step the EMA is 0.9 x the previous EMA + 0.1 x the weights (it
    starts at the weights after the first step); the saved `ema/` holds it and is evaluated."""
    from ceit_hf.training import ModelEMACallback, run

    make_loss, seen = run.soft_target_loss, []

    def recording_loss(smoothing):
        loss = make_loss(smoothing)

        def compute(outputs, labels, num_items_in_batch=None):
            seen.append((smoothing, labels.detach().clone()))
            return loss(outputs, labels, num_items_in_batch)

        return compute

    updates = []

    class RecordingEMA(ModelEMACallback):
        def on_step_end(self, args, state, control, model=None, **kwargs):
            before = floats(self.model)
            super().on_step_end(args, state, control, model=model, **kwargs)
            updates.append((before, floats(model), floats(self.model)))

    monkeypatch.setattr(run, "soft_target_loss", recording_loss)
    monkeypatch.setattr(run, "ModelEMACallback", RecordingEMA)
    _, metrics = recorded_run(
        tmp_path,
        monkeypatch,
        [
            "--recipe",
            "deit",
            "--num_train_epochs",
            "1",
            "--per_device_train_batch_size",
            "8",
            "--model_ema_decay",
            "0.9",
        ],
    )
    training = [labels for _, labels in seen if labels.is_floating_point()]
    assert len(training) == 2 and {smoothing for smoothing, _ in seen} == {0.1}
    for targets in training:
        assert targets.shape == (8, 10) and torch.allclose(targets.sum(-1), torch.ones(8))
        assert (targets.max(-1).values < 1 - 1e-3).any()  # mixed rows, not one-hot
    evaluation = [labels for _, labels in seen if not labels.is_floating_point()]
    assert evaluation and all(labels.dtype == torch.int64 and labels.ndim == 1 for labels in evaluation)
    assert len(updates) == 2
    (_, weights, ema), (previous, weights_2, ema_2) = updates
    assert all(torch.equal(ema[k], weights[k]) for k in ema)
    for name in ema_2:
        torch.testing.assert_close(ema_2[name], 0.9 * previous[name] + 0.1 * weights_2[name])
    assert max((ema_2[k] - weights_2[k]).abs().max() for k in ema_2) > 1e-4
    saved = load_file(tmp_path / "run" / "ema" / "model.safetensors")
    assert all(torch.equal(saved[k], v) for k, v in ema_2.items())
    assert np.isfinite(metrics["eval_ema_loss"])


def floats(model) -> dict[str, torch.Tensor]:
    """Copies of `model`'s floating-point weights and buffers."""
    return {k: v.detach().clone() for k, v in model.state_dict().items() if v.is_floating_point()}


def test_model_ema_callback_follows_the_decay_rule():
    """`ModelEMACallback` (torch's `AveragedModel`, BatchNorm statistics included): the first update copies the
    weights, each later one sets ema = decay x ema + (1 - decay) x weights."""
    from ceit_hf.training import ModelEMACallback

    model = CeiTForImageClassification(tiny_config()).train()
    ema = ModelEMACallback(decay=0.9)
    ema.on_train_begin(None, None, None, model=model)
    states = []
    for _ in range(3):
        with torch.no_grad():  # an optimizer step: new weights, and new BatchNorm statistics
            for parameter in model.parameters():
                parameter.add_(torch.randn_like(parameter))
            model(torch.randn(4, 3, 32, 32))
        ema.on_step_end(None, None, None, model=model)
        states.append((floats(model), floats(ema.model)))
    assert all(torch.equal(states[0][1][k], states[0][0][k]) for k in states[0][0])
    for (_, previous), (weights, averaged) in itertools.pairwise(states):
        for name, value in averaged.items():
            torch.testing.assert_close(value, 0.9 * previous[name] + 0.1 * weights[name])
    assert "ceit.encoder.layers.0.leff.expand_norm.running_mean" in averaged


def test_batch_mixer_makes_soft_targets():
    """Mixup mixes each image and its one-hot target with those of the batch reversed (timm's "batch" mode), by the
    same lambda; CutMix's targets are mixed one-hots too."""
    assert batch_mixer(5) is None
    pixels, labels = torch.randn(8, 3, 16, 16), torch.arange(8) % 5
    mixed, targets = batch_mixer(5, mixup_alpha=0.8)(pixels.clone(), labels)
    one_hot = torch.nn.functional.one_hot(labels, 5).float()
    lam = targets[0, labels[0]].item()
    assert 0 < lam < 1 and targets.shape == (8, 5)
    torch.testing.assert_close(targets, lam * one_hot + (1 - lam) * one_hot.flip(0))
    torch.testing.assert_close(mixed, lam * pixels + (1 - lam) * pixels.flip(0))
    _, cut = batch_mixer(5, cutmix_alpha=1.0)(pixels.clone(), labels)
    assert torch.allclose(cut.sum(-1), torch.ones(8)) and not torch.equal(cut, one_hot)


@pytest.mark.slow
def test_torch_compile_training(tmp_path):
    metrics = main(
        [
            "--output_dir",
            str(tmp_path / "run"),
            *TWO_STEPS,
            *SHORT,
            "--torch_compile",
            "true",
        ]
    )
    assert np.isfinite(metrics["eval_loss"])


def test_deit_recipe_fills_only_what_is_not_given(tmp_path):
    _, _, recipe, args = parse_args(
        ["--output_dir", str(tmp_path), "--recipe", "deit", "--per_device_train_batch_size", "64"]
    )
    assert (recipe.mixup_alpha, recipe.cutmix_alpha, recipe.random_erasing) == (0.8, 1.0, 0.25)
    assert (recipe.auto_augment, recipe.color_jitter, recipe.repeated_augmentation) == ("rand-m9-mstd0.5-inc1", 0, 3)
    assert args.per_device_eval_batch_size == 384  # the official evaluation batch, 1.5 x 256
    assert (recipe.drop_path, recipe.model_ema_decay) == (0.1, 0.99996)
    assert args.label_smoothing_factor == 0.1 and args.weight_decay == 0.05 and args.num_train_epochs == 300
    assert args.lr_scheduler_type.value == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr": 1e-5}
    assert args.learning_rate == pytest.approx(5e-4 * 64 * args.world_size / 512)
    _, _, recipe, args = parse_args(
        ["--output_dir", str(tmp_path), "--recipe", "deit", "--mixup_alpha", "0", "--learning_rate", "1e-3"]
    )
    assert recipe.mixup_alpha == 0 and args.learning_rate == 1e-3
    assert set(DEIT_RECIPE) >= {"mixup_alpha", "label_smoothing_factor", "model_ema_decay"}


def test_main_job_defaults_and_user_flags(tmp_path):
    _, data, recipe, args = parse_args(["--output_dir", str(tmp_path)])
    assert data.dataset_name is None and data.train_dir is None
    assert args.num_train_epochs == 20 and args.learning_rate == 1e-3 and recipe.hflip == 0.0
    assert args.remove_unused_columns is False and args.eval_strategy.value == "epoch"
    _, _, _, args = parse_args(["--output_dir", str(tmp_path), "--num_train_epochs", "2", "--eval_strategy", "no"])
    assert args.num_train_epochs == 2 and args.eval_strategy.value == "no"
    with pytest.raises(SystemExit, match="--output_dir is required"):
        parse_args([])
    # a flag given with the value of the dataclass default still overrides the job's default
    _, _, recipe, args = parse_args(["--output_dir", str(tmp_path), "--hflip", "0.5", "--save_strategy", "no"])
    assert recipe.hflip == 0.5 and args.save_strategy.value == "no" and args.eval_strategy.value == "epoch"
    _, _, recipe, args = parse_args(["--output_dir", str(tmp_path), "--train_dir", str(tmp_path)])
    assert args.num_train_epochs == 10 and recipe.hflip == 0.5  # own images: the small model's defaults
    with pytest.raises(SystemExit, match="--hub_model_id"):
        parse_args(["--output_dir", str(tmp_path), "--push_to_hub", "true"])
    with pytest.raises(SystemExit, match="unknown --preset"):
        parse_args(["--output_dir", str(tmp_path), "--preset", "ceit_huge"])


@pytest.mark.parametrize("flag", ["--leff_recompute", "--stem_recompute", "--keep_freed_cpu_memory"])
def test_runtime_switch_flags_take_on_off_auto(tmp_path, flag):
    with pytest.raises(SystemExit, match=f"error: {flag} must be one of \\['auto', 'off', 'on'\\], got 'yes'"):
        parse_args(["--output_dir", str(tmp_path), flag, "yes"])


def test_recompute_flags_reach_the_model(tmp_path, monkeypatch):
    """--leff_recompute / --stem_recompute set the model's runtime switches ("auto" when not given)."""
    calls = {}
    for switch in ("set_leff_recompute", "set_stem_recompute"):
        monkeypatch.setattr(
            CeiTForImageClassification, switch, lambda self, enabled, s=switch: calls.__setitem__(s, enabled)
        )
    main(["--output_dir", str(tmp_path), "--stem_recompute", "off", *TWO_STEPS, *SHORT])
    assert calls == {"set_leff_recompute": "auto", "set_stem_recompute": False}


def test_unwritable_output_dir_fails_before_training(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(SystemExit, match="cannot write to --output_dir"):
        main(["--output_dir", str(blocker / "run"), *SHORT])


def test_labels_outside_the_model_are_refused():
    dataset = digits_dataset()["validation"]
    check_labels(dataset, "label", 10, "validation")
    with pytest.raises(ValueError, match=r"labels \[5, 6, 7, 8, 9\] outside the model's 5 classes"):
        check_labels(dataset, "label", 5, "validation")


def test_config_overrides_parse_python_literals():
    assert parse_config_overrides(
        "num_encoder_blocks=6, dropout=0.1,ln_order=post,layer_scale=None,qkv_bias=True"
    ) == {
        "num_encoder_blocks": 6,
        "dropout": 0.1,
        "ln_order": "post",
        "layer_scale": None,
        "qkv_bias": True,
    }
    with pytest.raises(
        SystemExit, match="error: --config_overrides item 'num_encoder_blocks' is not of the form key=value"
    ):
        parse_config_overrides("num_encoder_blocks")


def test_soft_target_loss():
    logits = torch.randn(4, 5)
    labels = torch.tensor([0, 3, 1, 4])
    one_hot = torch.nn.functional.one_hot(labels, 5).float()
    loss = soft_target_loss(0.1)
    # written out: targets smoothed towards uniform, then cross-entropy against the log-softmax
    smoothed = one_hot * 0.9 + 0.1 / 5
    expected = -(smoothed * logits.log_softmax(-1)).sum(-1).mean()
    assert torch.allclose(loss({"logits": logits}, one_hot), expected)
    assert torch.allclose(loss({"logits": logits}, labels), expected)
    mixed = 0.3 * one_hot + 0.7 * one_hot.roll(1, 0)  # Mixup's soft targets
    assert torch.allclose(
        loss({"logits": logits}, mixed), -((mixed * 0.9 + 0.02) * logits.log_softmax(-1)).sum(-1).mean()
    )


def test_seeded_augmentation_depends_only_on_seed_epoch_and_index():
    from torchvision.transforms import v2

    augment = SeededAugmentation(
        v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.RandomErasing(p=1.0, value="random")]),
        seed=3,
    )
    image = Image.new("RGB", (16, 16), (128, 64, 32))
    first = augment([image, image], [0, 1])
    torch.rand(100)  # whatever else draws from the global generator in between
    again = augment([image], [1])
    assert torch.equal(first[1], again[0]) and not torch.equal(first[0], first[1])
    augment.epoch = 1
    assert not torch.equal(augment([image], [1])[0], first[1])


def test_push_to_hub_uploads_the_model_not_the_checkpoints(tmp_path, monkeypatch):
    from hub_stand_in import FakeHub
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session

    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        # CI sets HF_HUB_OFFLINE=1; this test alone reaches the local stand-in on 127.0.0.1.
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        close_session()
        main(
            [
                "--output_dir",
                str(tmp_path / "run"),
                "--max_steps",
                "2",
                "--save_strategy",
                "steps",
                "--save_steps",
                "1",
                "--eval_strategy",
                "no",
                *SHORT,
                "--push_to_hub",
                "true",
                "--hub_model_id",
                "ceit-test/digits",
            ]
        )
        close_session()
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    files = hub.commits[-1]["files"]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_ceit.py"} <= set(
        files
    )
    assert not any(name.endswith((".bin", ".pt", ".pth")) or name.startswith("checkpoint-") for name in files)
    assert files["model.safetensors"] == (tmp_path / "run" / "model.safetensors").read_bytes()


def test_a_typo_in_config_overrides_is_refused_with_a_suggestion(tmp_path):
    from ceit_hf.training.arguments import ModelArguments, RecipeArguments
    from ceit_hf.training.model import build_model

    CeiTForImageClassification(tiny_config()).save_pretrained(tmp_path)
    for flag, suggestion in (("num_encoder_block=3", "num_encoder_blocks"), ("num_clases=5", "num_classes")):
        for source in ({}, {"model_name_or_path": str(tmp_path)}):  # a new model, and one loaded to fine-tune
            with pytest.raises(SystemExit, match=f"did you mean '{suggestion}'"):
                build_model(ModelArguments(config_overrides=flag, **source), RecipeArguments(), ["a", "b"], 32)
    model = build_model(ModelArguments(config_overrides="num_encoder_blocks=1"), RecipeArguments(), ["a", "b"], 32)
    assert model.config.num_encoder_blocks == 1


def digit_subset_folders(root: Path, labels, size: int = 32, per_class: int = 12) -> Path:
    """Digits of the given classes as PNG files in `root/{train,val}/K/`."""
    digits = digits_dataset()["train"]
    counts = {}
    for example in digits:
        label = example["label"]
        if label not in labels or counts.get(label, 0) >= per_class:
            continue
        split = "val" if counts.get(label, 0) % 4 == 3 else "train"
        counts[label] = counts.get(label, 0) + 1
        folder = root / split / str(label)
        folder.mkdir(parents=True, exist_ok=True)
        example["image"].resize((size, size)).convert("RGB").save(folder / f"{counts[label]}.png")
    return root


def test_lora_flags_are_checked():
    from ceit_hf.training.arguments import parse_args

    with pytest.raises(SystemExit, match="--lora_rank R .* give --model_name_or_path"):
        parse_args(["--output_dir", "x", "--lora_rank", "4"])
    with pytest.raises(SystemExit, match="--merge_lora merges LoRA adapters"):
        parse_args(["--output_dir", "x", "--model_name_or_path", "y", "--merge_lora"])


def test_lora_target_modules_unknown_names_are_refused_and_identity_ones_skipped():
    pytest.importorskip("peft")
    from ceit_hf.training import ModelArguments
    from ceit_hf.training.model import add_lora_adapters

    model = CeiTForImageClassification(tiny_config(leff_depthwise_separable=False))  # LeFF's pointwise: Identity
    with pytest.raises(SystemExit, match=r"--lora_target_modules \['attn', 'fc3'\] name no module of the model"):
        add_lora_adapters(model, ModelArguments(lora_rank=2, lora_target_modules="qkv,attn, fc3"))
    adapted = add_lora_adapters(model, ModelArguments(lora_rank=2, lora_target_modules="qkv, pointwise"))
    assert adapted.peft_config["default"].target_modules == {"qkv"}
    with_adapters = {
        name.removeprefix("base_model.model.").split(".lora_A")[0]
        for name, _ in adapted.named_parameters()
        if ".lora_A." in name
    }
    assert with_adapters == {
        "ceit.encoder.layers.0.attention.qkv",
        "ceit.encoder.layers.1.attention.qkv",
        "ceit.lca.attention.qkv",
    }


def test_image_processor_name_wins_and_a_folder_without_processor_falls_back_to_the_ceit_default(
    tmp_path, caplog, monkeypatch
):
    from ceit_hf import CeiTImageProcessor
    from ceit_hf.training import ModelArguments, image_processor_for

    model = CeiTForImageClassification(tiny_config(image_size=[32, 48]))
    model.save_pretrained(tmp_path / "model")  # weights and config, no preprocessor_config.json
    CeiTImageProcessor(crop_size={"height": 40, "width": 40}).save_pretrained(tmp_path / "processor")
    chosen = image_processor_for(
        ModelArguments(model_name_or_path=str(tmp_path / "model"), image_processor_name=str(tmp_path / "processor")),
        model,
    )
    assert chosen.crop_size == {"height": 40, "width": 40}
    monkeypatch.setattr(logging.getLogger("ceit_hf"), "propagate", True)  # (main's logging setup turns it off)
    with caplog.at_level(logging.WARNING, logger="ceit_hf.training"):
        fallback = image_processor_for(ModelArguments(model_name_or_path=str(tmp_path / "model")), model)
    assert type(fallback) is CeiTImageProcessor and fallback.crop_size == {"height": 32, "width": 48}
    assert f"No image processor in {tmp_path / 'model'}" in caplog.text and "using the CeiT default" in caplog.text


@pytest.mark.parametrize("splits", [("val",), ("valid",), ("test",), ("valid", "test")])
def test_a_val_valid_or_test_split_becomes_the_validation_split(splits, monkeypatch):
    """A dataset without a `validation` split: its `val`, else `valid`, else `test` split is renamed `validation`
    (the others are left as they are), and nothing is split off the training data."""
    import datasets

    from ceit_hf.data import DataSource, load_image_datasets

    def split(labels):
        return datasets.Dataset.from_dict({"image": [Image.new("RGB", (8, 8))] * len(labels), "label": labels})

    given = datasets.DatasetDict(train=split([0, 1] * 4), **{name: split([1, 0, i]) for i, name in enumerate(splits)})
    monkeypatch.setattr(datasets, "load_dataset", lambda *args, **kwargs: given)
    raw = load_image_datasets(DataSource(dataset_name="someone/data"), seed=0)
    assert set(raw) == {"train", "validation", *splits[1:]}
    assert raw["validation"]["label"] == [1, 0, 0] and len(raw["train"]) == 8
