"""Robustness of training: interrupted training, unwritable or full output locations, labels the model cannot
represent, and no unpickling of untrusted files.

Each failure must be loud and clear (a `ValueError`/`OSError`/`SystemExit` that says what is wrong) and nothing may be
silently wrong: no crash of the process on a damaged file, no resume from a half-written checkpoint, no training
into a folder that cannot hold the result, no training on labels the model cannot represent. Complements
tests/models/test_loading.py (bad model inputs, damaged and mismatched checkpoints, numerics across the presets),
tests/models/test_image_processing.py (damaged and unusual image files, in-memory images of every mode and shape) and
tests/training/test_training.py (exact resume from a complete checkpoint, bad image folders).
"""

from __future__ import annotations

import ast
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from ceit_hf import CeiTForImageClassification, CeiTImageProcessor, CeiTImageProcessorPil
from ceit_hf.training import checkpoint_problems, main, parse_args, resolve_resume_checkpoint, small_config


ROOT = Path(__file__).resolve().parents[2]
PROCESSORS = [CeiTImageProcessor, CeiTImageProcessorPil]


def test_every_torch_load_is_weights_only():
    """Unpickling can run arbitrary code: every `torch.load` of the project's code passes `weights_only=True`."""
    calls = []
    folders = ("ceit_hf", "scripts", "benchmarks", "examples")
    for path in sorted(path for folder in folders for path in (ROOT / folder).rglob("*.py")):
        source = path.read_text()
        tree = ast.parse(source, str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "torch":
                assert "load" not in {alias.name for alias in node.names}, f"{path}: import torch.load under a name"
            if isinstance(node, ast.Call) and ast.unparse(node.func) in ("torch.load", "torch.serialization.load"):
                keywords = {k.arg: k.value for k in node.keywords}
                safe = (
                    isinstance(keywords.get("weights_only"), ast.Constant) and keywords["weights_only"].value is True
                )
                calls.append((path.relative_to(ROOT), node.lineno, safe))
        # a text search as well, for calls the AST walk might not recognise (aliases, getattr)
        assert source.count("torch.load(") == sum(1 for p, *_ in calls if p == path.relative_to(ROOT)), path
    assert calls, "expected the converter's torch.load"
    assert all(safe for *_, safe in calls), [c for c in calls if not c[2]]


# --- interrupted training ------------------------------------------------------------------------------------------

SHORT = (
    "--max_train_samples 96 --max_eval_samples 32 --per_device_train_batch_size 8 --config_overrides "
    "num_encoder_blocks=1 --disable_tqdm true --report_to none --eval_strategy no --save_strategy steps "
    "--save_steps 4 --max_steps 12"
).split()


def max_difference(a: Path, b: Path) -> float:
    first, second = load_file(a), load_file(b)
    assert first.keys() == second.keys()
    return max((first[k].double() - second[k].double()).abs().max().item() for k in first)


@pytest.mark.slow
def test_training_killed_while_saving_resumes_to_the_same_weights(tmp_path):
    """A real SIGKILL as checkpoint-8 starts being written, then `--resume_from_checkpoint auto`: the newest complete
    checkpoint is picked and the run ends with the weights of an uninterrupted run. Which checkpoint survives depends
    on the timing of the kill (slow; test_an_incomplete_checkpoint_is_skipped_on_resume damages one on purpose)."""
    killed = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    with open(tmp_path / "killed.log", "w", encoding="utf-8") as log:
        process = subprocess.Popen(
            [sys.executable, "scripts/train.py", "--output_dir", str(killed), *SHORT],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            deadline = time.monotonic() + 300
            while not (killed / "checkpoint-8").exists():
                assert process.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
                assert time.monotonic() < deadline, "the run never reached step 8"
                time.sleep(0.01)
            process.send_signal(signal.SIGKILL)
        finally:
            process.kill()
            process.wait()
    assert process.returncode == -signal.SIGKILL
    assert not (killed / "model.safetensors").exists() and not (killed / "checkpoint-12").exists()
    assert checkpoint_problems(killed / "checkpoint-4") == []

    _, _, _, args = parse_args(["--output_dir", str(killed), *SHORT, "--resume_from_checkpoint", "auto"])
    expected = "checkpoint-8" if not checkpoint_problems(killed / "checkpoint-8") else "checkpoint-4"
    assert args.resume_from_checkpoint == str(killed / expected)
    main(["--output_dir", str(killed), *SHORT, "--resume_from_checkpoint", "auto"])
    main(["--output_dir", str(tmp_path / "uninterrupted"), *SHORT])
    assert max_difference(killed / "model.safetensors", tmp_path / "uninterrupted" / "model.safetensors") <= 1e-6
    state = json.loads((killed / "trainer_state.json").read_text())
    assert state["global_step"] == 12


def test_an_incomplete_checkpoint_is_skipped_on_resume(tmp_path, capsys, monkeypatch):
    """An 8-step run saving every 4 steps, then its newest checkpoint damaged (truncated weights) and its final model
    removed, as a run killed while writing checkpoint-8 leaves them: `--resume_from_checkpoint auto` skips
    checkpoint-8 with a warning naming the damage, resumes from checkpoint-4 (left as it was: not retrained from
    scratch) and ends with the weights of the uninterrupted run."""
    run = tmp_path / "run"
    steps = [*SHORT[:-2], "--max_steps", "8"]
    main(["--output_dir", str(run), *steps])
    uninterrupted = load_file(run / "model.safetensors")
    (run / "model.safetensors").unlink()
    weights = run / "checkpoint-8" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    kept = run / "checkpoint-4" / "model.safetensors"
    kept_state = (kept.read_bytes(), kept.stat().st_mtime_ns)

    monkeypatch.setattr(logging.getLogger("ceit_hf"), "handlers", [])  # as in a new process: main sets them up
    capsys.readouterr()
    main(["--output_dir", str(run), *steps, "--resume_from_checkpoint", "auto"])
    shown = capsys.readouterr().out  # what the user sees (the choice is made while parsing, before training)
    assert re.search(
        rf"Skipping the incomplete checkpoint {re.escape(str(run / 'checkpoint-8'))}: model.safetensors "
        "is damaged or truncated",
        shown,
    )
    assert f"Resuming from {run / 'checkpoint-4'}," in shown
    assert (kept.read_bytes(), kept.stat().st_mtime_ns) == kept_state
    assert checkpoint_problems(run / "checkpoint-8") == []  # written again
    resumed = load_file(run / "model.safetensors")
    assert resumed.keys() == uninterrupted.keys()
    assert max((resumed[k].double() - uninterrupted[k].double()).abs().max().item() for k in resumed) <= 1e-6
    assert json.loads((run / "trainer_state.json").read_text())["global_step"] == 8


def make_checkpoint(folder: Path, step: int, ema: bool = False) -> Path:
    """A checkpoint folder with what `checkpoint_problems` looks at: trainer state, weights and (optionally) EMA."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text(json.dumps({"global_step": step}))
    save_file({"w": torch.zeros(64)}, path / "model.safetensors")
    if ema:
        save_file({"w": torch.zeros(64)}, path / "ema.safetensors")
    return path


def test_resume_skips_incomplete_checkpoints(tmp_path):
    out = tmp_path / "run"
    complete = make_checkpoint(out, 4, ema=True)
    no_ema = make_checkpoint(out, 8)
    cut_state = make_checkpoint(out, 12, ema=True)
    (cut_state / "trainer_state.json").write_text('{"global_st')
    cut_weights = make_checkpoint(out, 16, ema=True)
    (cut_weights / "model.safetensors").write_bytes((cut_weights / "model.safetensors").read_bytes()[:100])
    no_state = make_checkpoint(out, 20, ema=True)
    (no_state / "trainer_state.json").unlink()
    (out / "checkpoint-24").mkdir()  # created, nothing written yet
    (out / "checkpoint-old").mkdir()

    assert resolve_resume_checkpoint("auto", str(out), ema=True) == str(complete)
    assert resolve_resume_checkpoint("latest", str(out), ema=True) == str(complete)
    assert resolve_resume_checkpoint("auto", str(out), ema=False) == str(no_ema)
    assert resolve_resume_checkpoint(str(complete), str(out), ema=True) == str(complete)
    assert resolve_resume_checkpoint(None, str(out)) is None
    for path, problem in [
        (no_ema, "ema.safetensors .* is missing"),
        (cut_state, "trainer_state.json .* is missing or incomplete"),
        (cut_weights, "model.safetensors is damaged or truncated"),
        (no_state, "trainer_state.json"),
        (out / "checkpoint-24", "model weights are missing"),
        (out / "nothing-here", "no such folder"),
    ]:
        with pytest.raises(
            SystemExit, match=rf"is not a complete checkpoint: .*{problem}.*--resume_from_checkpoint auto"
        ):
            resolve_resume_checkpoint(str(path), str(out), ema=True)

    # through the command line: --model_ema_decay makes the EMA file part of a complete checkpoint
    _, _, _, args = parse_args(
        ["--output_dir", str(out), "--resume_from_checkpoint", "auto", "--model_ema_decay", "0.9"]
    )
    assert args.resume_from_checkpoint == str(complete)
    _, _, _, args = parse_args(["--output_dir", str(out), "--resume_from_checkpoint", "auto"])
    assert args.resume_from_checkpoint == str(no_ema)
    empty = tmp_path / "empty"
    assert resolve_resume_checkpoint("auto", str(empty)) is None  # nothing to resume: start from scratch
    with pytest.raises(SystemExit, match="no complete checkpoint"):
        resolve_resume_checkpoint("latest", str(empty))


# --- unwritable or full output locations ---------------------------------------------------------------------------


def read_only_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in: a read-only directory, or for root (whom permissions do not
    stop) a location in sysfs."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.geteuid() != 0:
        return folder / "run"
    if Path("/sys/kernel").is_dir():
        return Path("/sys/kernel/ceit-hf-test-run")
    pytest.skip("running as root without sysfs: no read-only location to test")


@pytest.mark.parametrize("where", ["read_only", "existing_file", "under_a_file"])
def test_unwritable_output_dir_fails_before_training(tmp_path, where, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("a file")
    output_dir = {
        "read_only": lambda: read_only_folder(tmp_path),
        "existing_file": lambda: blocker,
        "under_a_file": lambda: blocker / "run",
    }[where]()
    monkeypatch.setattr("ceit_hf.training.run.load_image_datasets", _no_training)
    with pytest.raises(SystemExit, match=rf"error: cannot write to --output_dir '{re.escape(str(output_dir))}': "):
        main(["--output_dir", str(output_dir), *SHORT])


def _no_training(*args, **kwargs):
    raise AssertionError("the job went on past the output folder check")


def test_full_output_location_fails_before_training(tmp_path, monkeypatch):
    monkeypatch.setattr(
        "ceit_hf.training.run.shutil.disk_usage", lambda path: shutil._ntuple_diskusage(10**9, 10**9, 0)
    )
    monkeypatch.setattr("ceit_hf.training.run.load_image_datasets", _no_training)
    with pytest.raises(SystemExit, match="cannot write to --output_dir .*: No space left on device"):
        main(["--output_dir", str(tmp_path / "run"), *SHORT])
    assert not any((tmp_path / "run").iterdir())  # the check leaves nothing behind


def test_full_filesystem_fails_before_training(tmp_path, monkeypatch):
    """The same on a real, 256 KiB filesystem (tmpfs; needs the right to mount, skipped without it)."""
    if shutil.which("mount") is None or shutil.which("umount") is None:
        pytest.skip("no mount command")
    mount_point = tmp_path / "tiny"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount_point)], capture_output=True, text=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    try:
        (mount_point / "filler").write_bytes(b"x" * 200 * 1024)
        monkeypatch.setattr("ceit_hf.training.run.load_image_datasets", _no_training)
        with pytest.raises(SystemExit, match="cannot write to --output_dir .*: No space left on device"):
            main(["--output_dir", str(mount_point / "run"), *SHORT])
    finally:
        subprocess.run(["umount", str(mount_point)], check=True)


# --- labels the model cannot represent -----------------------------------------------------------------------------


def test_fine_tuning_on_more_classes_needs_a_new_classifier(tmp_path):
    base = tmp_path / "five-classes"
    config = small_config(32, {i: str(i) for i in range(5)}, num_encoder_blocks=1)
    CeiTForImageClassification(config).save_pretrained(base)
    fine_tune = [
        "--model_name_or_path",
        str(base),
        "--output_dir",
        str(tmp_path / "out"),
        *SHORT[:6],
        "--max_steps",
        "1",
    ]
    # the bundled digits have 10 classes
    # transformers' contract: a classifier of another size raises unless ignore_mismatched_sizes (it names the keys
    # in its load report)
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        main(fine_tune)
    assert not (tmp_path / "out" / "model.safetensors").exists()


def test_validation_labels_outside_the_training_classes_are_refused(tmp_path):
    import datasets

    features = datasets.Features({"image": datasets.Image(), "label": datasets.Value("int64")})
    data = tmp_path / "data"
    data.mkdir()
    rng = np.random.default_rng(0)
    for split, labels in (("train", [0, 1, 2, 3, 4] * 4), ("validation", [0, 1, 7, 9])):
        images = [Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)) for _ in labels]
        dataset = datasets.Dataset.from_dict({"image": images, "label": labels}, features=features)
        dataset.to_parquet(data / f"{split}.parquet")
    with pytest.raises(ValueError, match=r"The validation split has labels \[7, 9\] outside the model's 5 classes"):
        main(["--dataset_name", str(data), "--output_dir", str(tmp_path / "out"), *SHORT])
    assert not (tmp_path / "out" / "model.safetensors").exists()
