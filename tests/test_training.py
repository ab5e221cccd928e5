"""The training job (scripts/train.py -> ceit_hf.training) and the evaluation script."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from ceit_hf import CeiTForImageClassification
from ceit_hf.training import (
    DEIT_RECIPE,
    SeededAugmentation,
    check_labels,
    digits_dataset,
    main,
    parse_args,
    parse_config_overrides,
    soft_target_loss,
)
from transformers import AutoImageProcessor, AutoModelForImageClassification, pipeline


ROOT = Path(__file__).resolve().parents[1]
# A few steps of a one-block model: enough to exercise the whole job in seconds.
SHORT = [
    "--max_train_samples", "96", "--max_eval_samples", "32", "--per_device_train_batch_size", "8",
    "--config_overrides", "num_encoder_blocks=1", "--disable_tqdm", "true", "--report_to", "none",
]
RECIPE = [
    "--mixup_alpha", "0.8", "--cutmix_alpha", "1.0", "--random_erasing", "0.25", "--rand_augment_ops", "2",
    "--color_jitter", "0.4", "--label_smoothing_factor", "0.1", "--model_ema_decay", "0.9", "--drop_path", "0.1",
]


def run_script(args, timeout=600, **kwargs):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout, **kwargs)


def max_difference(a: Path, b: Path) -> float:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    return max((first[k].double() - second[k].double()).abs().max().item() for k in first)


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
    assert f"| `validation` | {round(100 * results['eval_accuracy'], 2)} |" in card and "sklearn-digits" in card
    validation = digits_dataset()["validation"]
    classifier = pipeline("image-classification", model=str(out))
    images = [validation[i]["image"].convert("RGB") for i in range(20)]
    predictions = [p[0]["label"] for p in classifier(images)]
    truth = [str(validation[i]["label"]) for i in range(20)]
    assert np.mean([p == t for p, t in zip(predictions, truth)]) >= 0.9

    evaluation = run_script([sys.executable, "scripts/evaluate.py", "--model", str(out), "--output_json", str(tmp_path / "e.json")])
    assert evaluation.returncode == 0, evaluation.stderr[-2000:]
    evaluated = json.loads((tmp_path / "e.json").read_text())
    assert evaluated["num_images"] == 360 and evaluated["images_per_second"] > 0
    assert abs(evaluated["eval_accuracy"] - results["eval_accuracy"]) < 1e-9


def test_resume_is_exact_with_the_whole_recipe(tmp_path):
    """8 steps saving at step 4, then a second run resumed from checkpoint-4: the same weights (and EMA)."""
    common = SHORT + RECIPE + ["--max_steps", "8", "--save_strategy", "steps", "--save_steps", "4", "--eval_strategy", "no"]
    main(["--output_dir", str(tmp_path / "a"), *common])
    main(["--output_dir", str(tmp_path / "b"), *common, "--resume_from_checkpoint", str(tmp_path / "a" / "checkpoint-4")])
    assert max_difference(tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors") <= 1e-6
    assert max_difference(tmp_path / "a" / "ema" / "model.safetensors", tmp_path / "b" / "ema" / "model.safetensors") <= 1e-6
    # and the run really trained: the weights moved away from the checkpoint
    assert max_difference(tmp_path / "a" / "checkpoint-4" / "model.safetensors", tmp_path / "a" / "model.safetensors") > 1e-4


def test_two_process_data_parallel_on_cpu(tmp_path):
    out = tmp_path / "ddp"
    result = run_script(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", "29533",
         "scripts/train.py", "--use_cpu", "--output_dir", str(out), "--max_steps", "4", "--eval_strategy", "no",
         "--save_strategy", "no", *SHORT]
    )
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert "world size 2, process rank 0" in log and "world size 2, process rank 1" in log
    model = AutoModelForImageClassification.from_pretrained(out)
    assert isinstance(model, CeiTForImageClassification)
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 4


def test_own_image_folders_get_a_small_model_sized_to_the_images(tmp_path):
    digits = digits_dataset()
    for split, data in (("train", digits["train"].select(range(60))), ("val", digits["validation"].select(range(20)))):
        for i, example in enumerate(data):
            folder = tmp_path / split / f"digit_{example['label']}"
            folder.mkdir(parents=True, exist_ok=True)
            example["image"].resize((48, 48)).convert("RGB").save(folder / f"{i}.png")
    out = tmp_path / "out"
    metrics = main([
        "--train_dir", str(tmp_path / "train"), "--validation_dir", str(tmp_path / "val"), "--output_dir", str(out),
        "--num_train_epochs", "1", "--per_device_train_batch_size", "16", "--disable_tqdm", "true",
    ])
    assert "eval_accuracy" in metrics
    config = json.loads((out / "config.json").read_text())
    assert config["image_size"] == 48 and config["d_model"] == 64
    assert set(config["id2label"].values()) == {f"digit_{d}" for d in range(10)}


def test_fine_tuning_a_saved_model_with_new_labels(tmp_path):
    base = tmp_path / "base"
    main(["--output_dir", str(base), "--max_steps", "2", "--eval_strategy", "no", "--save_strategy", "no", *SHORT])
    tuned = tmp_path / "tuned"
    # train on the same images with the labels renamed: a different id2label of the same size
    metrics = main([
        "--model_name_or_path", str(base), "--output_dir", str(tuned), "--max_steps", "2", "--eval_strategy", "no",
        "--save_strategy", "no", "--max_train_samples", "32", "--max_eval_samples", "16", "--disable_tqdm", "true",
    ])
    assert metrics["eval_accuracy"] >= 0.0
    assert max_difference(base / "model.safetensors", tuned / "model.safetensors") > 0


@pytest.mark.parametrize(
    "flags",
    [
        ["--gradient_checkpointing", "true"],
        ["--bf16", "true", "--use_cpu", "true"],
        ["--recipe", "deit", "--num_train_epochs", "1", "--per_device_train_batch_size", "8", "--model_ema_decay", "0.9"],
    ],
    ids=["gradient_checkpointing", "bf16", "deit_recipe"],
)
def test_training_options_run(tmp_path, flags):
    metrics = main(["--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--eval_strategy", "no",
                    "--save_strategy", "no", *SHORT, *flags])
    assert np.isfinite(metrics["eval_loss"])


@pytest.mark.slow
def test_torch_compile_training(tmp_path):
    metrics = main(["--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--eval_strategy", "no",
                    "--save_strategy", "no", *SHORT, "--torch_compile", "true"])
    assert np.isfinite(metrics["eval_loss"])


def test_deit_recipe_fills_only_what_is_not_given(tmp_path):
    _, _, recipe, args = parse_args(["--output_dir", str(tmp_path), "--recipe", "deit", "--per_device_train_batch_size", "64"])
    assert (recipe.mixup_alpha, recipe.cutmix_alpha, recipe.random_erasing) == (0.8, 1.0, 0.25)
    assert (recipe.rand_augment_ops, recipe.rand_augment_magnitude, recipe.color_jitter) == (2, 9, 0.4)
    assert (recipe.drop_path, recipe.model_ema_decay) == (0.1, 0.99996)
    assert args.label_smoothing_factor == 0.1 and args.weight_decay == 0.05 and args.num_train_epochs == 300
    assert args.lr_scheduler_type.value == "cosine_with_min_lr" and args.lr_scheduler_kwargs == {"min_lr": 1e-5}
    assert args.learning_rate == pytest.approx(5e-4 * 64 * args.world_size / 512)
    _, _, recipe, args = parse_args(["--output_dir", str(tmp_path), "--recipe", "deit", "--mixup_alpha", "0",
                                     "--learning_rate", "1e-3"])
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
    with pytest.raises(SystemExit, match="--hub_model_id"):
        parse_args(["--output_dir", str(tmp_path), "--push_to_hub", "true"])
    with pytest.raises(SystemExit, match="unknown --preset"):
        parse_args(["--output_dir", str(tmp_path), "--preset", "ceit_huge"])


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
    assert parse_config_overrides("num_encoder_blocks=6, dropout=0.1,ln_order=post,layer_scale=None,qkv_bias=True") == {
        "num_encoder_blocks": 6, "dropout": 0.1, "ln_order": "post", "layer_scale": None, "qkv_bias": True,
    }
    with pytest.raises(ValueError, match="key=value"):
        parse_config_overrides("num_encoder_blocks")


def test_soft_target_loss():
    logits = torch.randn(4, 5)
    labels = torch.tensor([0, 3, 1, 4])
    one_hot = torch.nn.functional.one_hot(labels, 5).float()
    loss = soft_target_loss(0.1)
    assert torch.allclose(loss({"logits": logits}, one_hot), torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1))
    assert torch.allclose(loss({"logits": logits}, labels), torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1))


def test_seeded_augmentation_depends_only_on_seed_epoch_and_index():
    from torchvision.transforms import v2

    augment = SeededAugmentation(v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.RandomErasing(p=1.0, value="random")]), seed=3)
    image = Image.new("RGB", (16, 16), (128, 64, 32))
    first = augment([image, image], [0, 1])
    torch.rand(100)  # whatever else draws from the global generator in between
    again = augment([image], [1])
    assert torch.equal(first[1], again[0]) and not torch.equal(first[0], first[1])
    augment.epoch = 1
    assert not torch.equal(augment([image], [1])[0], first[1])


def test_push_to_hub_uploads_the_model_not_the_checkpoints(tmp_path, monkeypatch):
    from huggingface_hub import constants
    from huggingface_hub.utils import close_session
    from test_hub_upload import FakeHub

    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_TOKEN", hub.token)
        monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
        # CI sets HF_HUB_OFFLINE=1; this test alone reaches the local stand-in on 127.0.0.1.
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        close_session()
        main(["--output_dir", str(tmp_path / "run"), "--max_steps", "2", "--save_strategy", "steps", "--save_steps", "1",
              "--eval_strategy", "no", *SHORT, "--push_to_hub", "true", "--hub_model_id", "ceit-test/digits"])
        close_session()
    assert (tmp_path / "run" / "checkpoint-2").is_dir()
    files = hub.commits[-1]["files"]
    assert {"config.json", "model.safetensors", "preprocessor_config.json", "README.md", "modeling_ceit.py"} <= set(files)
    assert not any(name.endswith((".bin", ".pt", ".pth")) or name.startswith("checkpoint-") for name in files)
    assert files["model.safetensors"] == (tmp_path / "run" / "model.safetensors").read_bytes()
