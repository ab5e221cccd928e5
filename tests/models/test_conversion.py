# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Official CeiT checkpoints -> transformers folders: `ceit_hf.conversion` and `scripts/convert_official_checkpoint.py`.

Checkpoints are written with `torch.save` in the layouts the official code (and its users) produce, from random
official-layout weights (`official_reference.random_official_state_dict`); the converted models are checked against
`official_reference.official_forward`, an independent functional forward of the official structure.

Running the CLI costs an interpreter start and the torch/transformers imports (about 6 s of CPU each), so the
end-to-end runs are started together, once per module, by the `cli_runs` fixture; the error paths go through the
CLI's `main` in-process (exit code 2 via `SystemExit`), and one of them through a real subprocess as well.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import pickle
import random
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import CODE_FILES, IMAGE_PROCESSOR_MAP, MODEL_AUTO_MAP
from hub_stand_in import FakeHub, cli_env
from official_reference import official_forward, random_official_state_dict
from safetensors.torch import load_file
from transformers import AutoImageProcessor, AutoModelForImageClassification

from ceit_hf import PRESETS, CeiTForImageClassification, CeiTImageProcessor
from ceit_hf.conversion import (
    CheckpointConversionError,
    convert_checkpoint,
    convert_official_state_dict,
    infer_config,
    load_official_checkpoint,
    official_to_model,
)
from ceit_hf.model_card import VARIANTS, variant_card


REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPT = REPO_ROOT / "scripts" / "convert_official_checkpoint.py"
BN_BUFFERS = ("running_mean", "running_var", "num_batches_tracked")

# Exact parameter counts of the official variants (reference file, counted from the official structure).
OFFICIAL_PARAMETERS = {
    "ceit_tiny_patch16_224": 6_356_904,
    "ceit_small_patch16_224": 24_204_840,
    "ceit_base_patch16_224": 94_405_416,
    "ceit_tiny_patch16_384": 6_429_864,
    "ceit_small_patch16_384": 24_350_760,
}


class WritesMarkerWhenUnpickled:
    """Unpickling this runs `open(marker, "w")`: it creates the marker file. A weights_only load must refuse it."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _offline_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "HUGGING"))}
    env.update(HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    return env


def _start_cli(args: list, env: dict[str, str]) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), *map(str, args)],
        cwd=REPO_ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _load_cli():
    spec = importlib.util.spec_from_file_location("convert_official_checkpoint_cli", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _leftovers(parent: Path) -> list[str]:
    """Staging folders a conversion left behind in `parent`."""
    return sorted(path.name for path in parent.iterdir() if ".partial-" in path.name)


# ------------------------------------------------------------------------------------- end to end, CLI subprocess


@dataclass
class Conversion:
    """One CLI run: the state_dict it should have converted, the folder and what the process said."""

    expected: dict  # the official-layout weights the folder must hold
    image_size: int
    output_dir: Path
    returncode: int = -1
    stdout: str = ""
    stderr: str = ""
    other: dict | None = None  # weights the folder must NOT hold (the non-EMA ones for --use_ema)


PUSH_REPO = "ceit-test/converted"


@pytest.fixture(scope="module")
def cli_runs(tmp_path_factory):
    """Every CLI conversion of this module, run concurrently (and one upload to a stand-in Hub)."""
    root = tmp_path_factory.mktemp("cli")
    sd = random_official_state_dict(depth=2, seed=1)
    sd_ema = random_official_state_dict(depth=2, seed=2)
    sd_384 = random_official_state_dict(depth=2, image_size=384, seed=3)
    sd_full = random_official_state_dict(depth=12, seed=4)
    layouts = {
        # name: (what torch.save writes, the weights it holds, image size, extra CLI arguments)
        "bare_full_depth": (sd_full, sd_full, 224, []),
        "training_checkpoint": (
            {"model": sd, "epoch": 3, "args": argparse.Namespace(lr=5e-4)},
            sd,
            224,
            ["--push_to_hub", PUSH_REPO],
        ),
        "ema": ({"model": sd, "model_ema": sd_ema, "epoch": 3}, sd_ema, 224, ["--use_ema"]),
        "ddp_prefix": ({f"module.{k}": v for k, v in sd.items()}, sd, 224, []),
        "image_384": ({"model": sd_384}, sd_384, 384, []),
    }
    errors = {  # name: what torch.save writes (the other error paths run in-process, below)
        "malicious_pickle": {"model": sd, "payload": WritesMarkerWhenUnpickled(root / "MARKER")},
    }
    # Three as processes (the real command line, a push, exit codes), the others in this process, meanwhile: each
    # process costs seconds of imports on a 2-core machine.
    in_process = {"ema", "ddp_prefix", "image_384"}
    runs, processes = {}, {}
    with FakeHub() as hub:
        for name, (saved, expected, size, extra) in layouts.items():
            checkpoint = root / f"{name}.pth"
            torch.save(saved, checkpoint)
            runs[name] = Conversion(expected, size, root / name, other=sd if name == "ema" else None)
            if name not in in_process:
                env = cli_env(hub.url) if "--push_to_hub" in extra else _offline_env()
                processes[name] = _start_cli(["--checkpoint", checkpoint, "--output_dir", root / name, *extra], env)
        for name in sorted(in_process):
            output = io.StringIO()
            with contextlib.redirect_stdout(output):
                runs[name].returncode = _load_cli().main(
                    ["--checkpoint", str(root / f"{name}.pth"), "--output_dir", str(root / name), *layouts[name][3]]
                )
            runs[name].stdout = output.getvalue()
        for name, saved in errors.items():
            checkpoint = root / f"{name}.pth"
            torch.save(saved, checkpoint)
            runs[name] = Conversion({}, 0, root / name)
            processes[name] = _start_cli(["--checkpoint", checkpoint, "--output_dir", root / name], _offline_env())
        try:
            for name, process in processes.items():
                stdout, stderr = process.communicate(timeout=300)
                runs[name].returncode, runs[name].stdout, runs[name].stderr = process.returncode, stdout, stderr
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.kill()
                    process.wait()
    runs["hub"] = hub
    runs["root"] = root
    return runs


SUCCESSES = ["bare_full_depth", "training_checkpoint", "ema", "ddp_prefix", "image_384"]


@pytest.mark.parametrize("name", SUCCESSES)
def test_cli_converts_official_checkpoint(cli_runs, name):
    run = cli_runs[name]
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("Converted ") and str(run.output_dir) in run.stdout
    folder = run.output_dir

    names = {path.name for path in folder.iterdir()}
    assert {"config.json", "model.safetensors", "preprocessor_config.json", *CODE_FILES} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl"))]
    assert _leftovers(folder.parent) == []
    for code_file in CODE_FILES:
        assert (folder / code_file).read_bytes() == (REPO_ROOT / "ceit_hf" / code_file).read_bytes()
    config_json = json.loads((folder / "config.json").read_text())
    assert config_json["auto_map"] == MODEL_AUTO_MAP

    model = AutoModelForImageClassification.from_pretrained(folder)
    assert type(model) is CeiTForImageClassification and not model.training
    assert model.config.num_labels == 1000 and len(model.config.id2label) == 1000
    assert model.config.id2label[0] == "tench" and model.config.id2label[999] == "toilet tissue"
    assert model.config.label2id["tench"] == 0
    assert model.config.image_hw == (run.image_size, run.image_size)

    pixel_values = torch.randn(2, 3, run.image_size, run.image_size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        logits = model(pixel_values).logits
        expected = official_forward(run.expected, pixel_values, heads=3)
    torch.testing.assert_close(logits, expected, atol=1e-4, rtol=0)
    if run.other is not None:  # --use_ema: the EMA weights, not the model's
        assert not torch.allclose(logits, official_forward(run.other, pixel_values, heads=3), atol=1e-2)
        weights = load_file(folder / "model.safetensors")
        assert torch.equal(weights["classifier.weight"], run.expected["head.weight"])

    processor = AutoImageProcessor.from_pretrained(folder)
    assert isinstance(processor, CeiTImageProcessor)
    assert processor.crop_size == {"height": run.image_size, "width": run.image_size}
    assert processor.size == {"shortest_edge": {224: 256, 384: 438}[run.image_size]}
    preprocessor_json = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor_json["auto_map"] == {"AutoImageProcessor": IMAGE_PROCESSOR_MAP}

    if name == "bare_full_depth":  # a full-depth official variant gets its model card
        assert model.config.preset_name == "ceit_tiny_patch16_224"
        assert model.num_parameters() == OFFICIAL_PARAMETERS["ceit_tiny_patch16_224"]
        assert "(ceit_tiny_patch16_224, 6,356,904 parameters)" in run.stdout
        assert (folder / "README.md").read_text(encoding="utf-8") == variant_card("ceit_tiny_patch16_224")
    else:  # depth 2 is no official variant: no card claiming to be one
        assert model.config.preset_name is None and "README.md" not in names


def test_cli_push_to_hub_uploads_the_converted_folder(cli_runs):
    run, hub = cli_runs["training_checkpoint"], cli_runs["hub"]
    assert run.returncode == 0, run.stderr
    assert hub.unexpected == []
    assert len(hub.commits) == 1 and hub.commits[0]["repo_id"] == PUSH_REPO
    local = {path.name: path.read_bytes() for path in run.output_dir.iterdir()}
    assert hub.repos[PUSH_REPO]["branches"]["main"] == local  # every file, byte for byte, and nothing else
    assert run.stdout.strip().splitlines()[-1] == f"Model repository: {hub.url}/{PUSH_REPO}"


def test_cli_subprocess_refuses_malicious_pickle_with_exit_code_2(cli_runs):
    run, marker = cli_runs["malicious_pickle"], cli_runs["root"] / "MARKER"
    assert run.returncode == 2, (run.stdout, run.stderr)
    assert run.stderr.startswith("error: ") and "arbitrary code" in run.stderr and "weights_only=True" in run.stderr
    assert "Traceback" not in run.stderr
    assert not marker.exists()  # the payload never ran: the file was read with weights_only=True
    assert not run.output_dir.exists()


def test_convert_with_matching_preset_in_process(cli_runs, tmp_path):
    run = cli_runs["bare_full_depth"]
    checkpoint = cli_runs["root"] / "bare_full_depth.pth"
    model = convert_checkpoint(checkpoint, tmp_path / "out", preset="ceit_tiny_patch16_224")
    assert model.config.preset_name == "ceit_tiny_patch16_224"
    pixel_values = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        torch.testing.assert_close(
            model(pixel_values).logits, official_forward(run.expected, pixel_values, heads=3), atol=1e-4, rtol=0
        )
    assert (tmp_path / "out" / "README.md").read_text(encoding="utf-8") == variant_card("ceit_tiny_patch16_224")


# ---------------------------------------------------------------------------------------------------- error paths


def _small_sd(**kwargs):
    return random_official_state_dict(depth=1, **kwargs)


def _case_resnet(path):
    import torchvision

    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    return [], (
        r"has no 'i2t\.proj\.weight', 'pos_embed', 'head\.weight': it is not an official CeiT checkpoint "
        r"\(its keys include \['conv1\.weight', 'bn1\.weight', "
    )


def _case_random_keys(path):
    torch.save({"encoder.weight": torch.zeros(4, 4), "pos_embed": torch.zeros(1, 197, 8)}, path)
    return [], r"has no 'i2t\.proj\.weight', 'head\.weight': it is not an official CeiT checkpoint"


def _case_no_blocks(path):
    sd = _small_sd()
    torch.save({k: v for k, v in sd.items() if not k.startswith("blocks.")}, path)
    return [], r"no encoder blocks \('blocks\.N\.\*'\)"


def _case_missing_key(path):
    sd = _small_sd()
    del sd["blocks.0.leff.bn2.running_var"]
    torch.save(sd, path)
    return [], r"missing from the checkpoint: \['ceit\.encoder\.layers\.0\.leff\.depthwise_norm\.running_var'\]"


def _case_extra_key(path):
    sd = _small_sd()
    sd["blocks.0.attn.relative_position_bias_table"] = torch.zeros(3, 3)
    torch.save({"model": sd}, path)
    return [], r"1 key\(s\) are not official CeiT keys, e\.g\. \['blocks\.0\.attn\.relative_position_bias_table'\]"


def _case_mis_shaped(path):
    sd = _small_sd()
    sd["blocks.0.attn.proj.weight"] = torch.zeros(192, 100)
    torch.save(sd, path)
    return [], (
        r"shape mismatches: \['ceit\.encoder\.layers\.0\.attention\.proj\.weight: checkpoint \(192, 100\) "
        r"vs model \(192, 192\)'\]"
    )


def _case_bad_pos_embed(path):
    sd = _small_sd()
    sd["pos_embed"] = torch.zeros(1, 1 + 15, 192)
    torch.save(sd, path)
    return [], r"pos_embed holds 15 patch positions, not a square grid"


def _case_ema_missing(path):
    torch.save({"model": _small_sd(), "epoch": 0}, path)
    return ["--use_ema"], r"--use_ema: .* has no 'model_ema' entry \(its keys: \['epoch', 'model'\]\)"


def _case_missing_path(path):
    return [], r"No checkpoint file at .*missing_path\.pth"


def _case_preset_width(path):
    torch.save(_small_sd(), path)
    return ["--preset", "ceit_small_patch16_224"], (
        r"not a ceit_small_patch16_224: the preset has width 384 \(checkpoint: 192\), depth 12 \(checkpoint: 1\)"
    )


def _case_random_bytes(path):
    path.write_bytes(random.Random(0).randbytes(4096))
    return [], r"Could not read .* as a PyTorch checkpoint .*: it is damaged, truncated or of another format"


def _case_truncated(path):
    torch.save({"model": _small_sd()}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return [], r"Could not read .* as a PyTorch checkpoint .*: it is damaged, truncated or of another format"


def _case_not_a_dict(path):
    torch.save([torch.zeros(2)], path)
    return [], r"holds a list, not a CeiT state_dict"


def _case_no_tensors(path):
    torch.save({"model": {"pos_embed": [0.0, 1.0]}}, path)
    return [], r"its 'model' entry is not a state_dict of tensors"


def _case_malicious(path):
    torch.save({"model": _small_sd(), "payload": WritesMarkerWhenUnpickled(path.parent / "MARKER")}, path)
    return [], (
        r"holds a pickled Python object other than tensors and plain containers \(io\.open\)\. "
        r"Unpickling it could run arbitrary code, so it is not loaded \(torch\.load with weights_only=True\)"
    )


ERROR_CASES = {name[len("_case_") :]: case for name, case in dict(globals()).items() if name.startswith("_case_")}


@pytest.mark.parametrize("case", sorted(ERROR_CASES))
def test_cli_error_exit_code_2_and_nothing_loadable_written(case, tmp_path, capsys):
    checkpoint, output_dir = tmp_path / f"{case}.pth", tmp_path / "out"
    extra, message = ERROR_CASES[case](checkpoint)
    cli = _load_cli()
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["--checkpoint", str(checkpoint), "--output_dir", str(output_dir), *extra])
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.err.startswith("error: ") and captured.err.count("\n") == 1, captured.err
    assert re.search(message, captured.err), captured.err
    assert not output_dir.exists()  # nothing written: no model.safetensors, no half folder
    assert _leftovers(tmp_path) == []
    assert not (tmp_path / "MARKER").exists()


def test_malicious_pickle_is_refused_in_process_and_payload_is_real(tmp_path):
    marker = tmp_path / "MARKER"
    checkpoint = tmp_path / "evil.pth"
    torch.save({"model": _small_sd(), "payload": WritesMarkerWhenUnpickled(marker)}, checkpoint)
    with pytest.raises(CheckpointConversionError, match="weights_only=True"):
        load_official_checkpoint(checkpoint)
    with pytest.raises(CheckpointConversionError, match="arbitrary code"):
        convert_checkpoint(checkpoint, tmp_path / "out")
    assert not marker.exists() and not (tmp_path / "out").exists()
    # The payload is live: an unrestricted load runs it. So the assertions above do prove weights_only=True.
    torch.load(checkpoint, weights_only=False)
    assert marker.exists()


def test_api_errors_in_process(tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint file"):
        load_official_checkpoint(tmp_path / "nope.pth")
    with pytest.raises(CheckpointConversionError, match="Unknown preset 'ceit_huge'"):
        torch.save(_small_sd(), tmp_path / "ok.pth")
        convert_checkpoint(tmp_path / "ok.pth", tmp_path / "out", preset="ceit_huge")
    (tmp_path / "a_file").write_text("x")
    with pytest.raises(CheckpointConversionError, match="exists and is not a folder"):
        convert_checkpoint(tmp_path / "ok.pth", tmp_path / "a_file")
    sd = _small_sd()
    sd["unknown.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointConversionError, match=r"not official CeiT keys, e\.g\. \['unknown\.weight'\]"):
        official_to_model(sd)
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_failure_while_writing_leaves_no_loadable_folder(tmp_path, monkeypatch, capsys):
    checkpoint = tmp_path / "ok.pth"
    torch.save(_small_sd(), checkpoint)

    def disk_full(self, *args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(CeiTImageProcessor, "save_pretrained", disk_full)
    with pytest.raises(OSError, match="No space left"):
        convert_checkpoint(checkpoint, tmp_path / "out")
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []
    with pytest.raises(SystemExit) as exit_info:
        _load_cli().main(["--checkpoint", str(checkpoint), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2 and "No space left on device" in capsys.readouterr().err
    assert not (tmp_path / "out").exists() and _leftovers(tmp_path) == []


def test_reconverting_into_an_existing_folder_replaces_the_weights(tmp_path):
    first, second = _small_sd(seed=5), _small_sd(seed=6)
    for sd in (first, second):
        torch.save({"model": sd}, tmp_path / "ckpt.pth")
        convert_checkpoint(tmp_path / "ckpt.pth", tmp_path / "out")
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert torch.equal(weights["classifier.weight"], second["head.weight"])
    assert _leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------------- the official variants


def _official_shapes(name: str) -> dict[str, torch.Tensor]:
    """A full-size official state_dict of variant `name` on the meta device (shapes only, no memory)."""
    preset = PRESETS[name]
    width, depth = preset["d_model"], preset["num_encoder_blocks"]
    one_block = random_official_state_dict(
        width=width, heads=preset["encoder_num_heads"], depth=1, image_size=preset["image_size"]
    )
    shapes = {}
    for key, value in one_block.items():
        if key.startswith("blocks.0."):
            for i in range(depth):
                name = f"blocks.{i}.{key[len('blocks.0.') :]}"
                shapes[name] = torch.empty(value.shape, dtype=value.dtype, device="meta")
        elif key == "pos_layer_embed":
            shapes[key] = torch.empty(1, depth, width, device="meta")
        else:
            shapes[key] = torch.empty(value.shape, dtype=value.dtype, device="meta")
    return shapes


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_infer_config_and_parameter_count_of_official_variants(name):
    sd = _official_shapes(name)
    official_parameters = sum(v.numel() for k, v in sd.items() if not k.endswith(BN_BUFFERS))
    assert official_parameters == OFFICIAL_PARAMETERS[name] == VARIANTS[name].num_parameters

    config = infer_config(sd)
    preset = PRESETS[name]
    assert (config.d_model, config.encoder_num_heads, config.lca_encoder_num_heads) == (
        preset["d_model"],
        preset["encoder_num_heads"],
        preset["encoder_num_heads"],
    )
    assert config.num_encoder_blocks == 12 and config.image_size == preset["image_size"]
    assert config.num_labels == 1000
    assert config.preset_name == name
    assert (sd["pos_embed"].shape[1], config.image_size) in {(197, 224), (577, 384)}

    with torch.device("meta"):
        model = CeiTForImageClassification(config)
    assert model.num_parameters() == OFFICIAL_PARAMETERS[name]
    converted = convert_official_state_dict(sd)
    expected = model.state_dict()
    assert set(converted) == set(expected)
    assert all(converted[k].shape == expected[k].shape for k in expected)


def test_infer_config_reads_depth_classes_and_image_size():
    sd = random_official_state_dict(depth=2, image_size=384, num_classes=10)
    config = infer_config(sd)
    assert (config.num_encoder_blocks, config.image_size, config.num_labels) == (2, 384, 10)
    assert infer_config(sd, encoder_num_heads=6, lca_encoder_num_heads=6).encoder_num_heads == 6


@pytest.mark.parametrize(
    "change, message",
    [
        (
            lambda sd: sd.update({"i2t.proj.weight": torch.zeros(256, 64, 4, 4)}),
            r"No official CeiT variant has width 256",
        ),
        (lambda sd: sd.update({"pos_embed": torch.zeros(197, 192)}), r"'pos_embed' has shape \(197, 192\)"),
        (lambda sd: sd.update({"head.weight": torch.zeros(1000)}), r"'head.weight' has shape \(1000,\)"),
        (lambda sd: sd.pop("i2t.proj.weight"), r"no 'i2t.proj.weight': it is not an official CeiT"),
    ],
    ids=["unknown-width", "pos-embed-2d", "head-1d", "no-projection"],
)
def test_infer_config_errors(change, message):
    sd = _small_sd()
    change(sd)
    with pytest.raises(CheckpointConversionError, match=message):
        infer_config(sd)


@pytest.mark.parametrize(
    "content, reason",
    [
        # a pickle the weights-only unpickler cannot read: torch's message is several paragraphs of advice
        (lambda: pickle.dumps({"model": "x"}, protocol=0), "UnpicklingError: Unsupported operand 100"),
        (lambda: b"", "EOFError"),
        (
            lambda: _torch_saved_bytes()[:100],
            "RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory",
        ),
    ],
    ids=["pickle-protocol-0", "empty", "truncated"],
)
def test_unreadable_checkpoint_names_torchs_reason_and_never_relays_its_advice(content, reason, tmp_path):
    """The refusal quotes the first sentence of torch's reason, and not torch's advice to load with
    weights_only=False, which would run the file's pickled code."""
    path = tmp_path / "checkpoint.pth"
    path.write_bytes(content())
    with pytest.raises(CheckpointConversionError) as refusal:
        load_official_checkpoint(path)
    message = str(refusal.value)
    assert message == (
        f"Could not read {path} as a PyTorch checkpoint (a file written by torch.save): it is damaged, truncated or "
        f"of another format ({reason}). It was read with weights_only=True, so no pickled code was run."
    )
    assert "False" not in message


def _torch_saved_bytes() -> bytes:
    buffer = io.BytesIO()
    torch.save({"model": _small_sd()}, buffer)
    return buffer.getvalue()


def _checkpoint_without(count: int) -> tuple[dict, list[str]]:
    """A depth-1 checkpoint missing `count` of its first block's entries, and the model keys they would fill."""
    full = _small_sd()
    state_dict = dict(full)
    for key in [key for key in full if key.startswith("blocks.0.")][:count]:
        del state_dict[key]
    missing = sorted(set(convert_official_state_dict(full)) - set(convert_official_state_dict(state_dict)))
    return state_dict, missing


@pytest.mark.parametrize("count", [1, 8, 9])
def test_a_checkpoint_that_does_not_fit_names_how_many_keys_and_at_most_eight_of_them(count):
    state_dict, missing = _checkpoint_without(count)
    with pytest.raises(CheckpointConversionError) as refusal:
        official_to_model(state_dict, infer_config(_small_sd()))
    more = " ..." if count > 8 else ""
    assert str(refusal.value) == (
        f"The checkpoint does not fit the CeiT configuration; {count} missing from the checkpoint: {missing[:8]}{more}"
    )


def test_a_checkpoint_deeper_and_wider_than_the_configuration_names_each_kind_of_problem():
    config = infer_config(_small_sd())
    config.d_model = 96  # the checkpoint's width is 192
    with pytest.raises(CheckpointConversionError) as refusal:
        official_to_model(random_official_state_dict(depth=2), config)
    message = str(refusal.value)
    assert message.startswith("The checkpoint does not fit the CeiT configuration; ")
    kinds = [part.split(":")[0] for part in message.split("; ")[1:]]
    assert [kind.split(" ", 1)[1] for kind in kinds] == ["not in the model", "shape mismatches"]
    assert "ceit.encoder.layers.1." in message.split("; ")[1]
    assert re.search(r"ceit\.embeddings\.cls_token: checkpoint \(1, 1, 192\) vs model \(1, 1, 96\)", message)


def test_a_preset_that_does_not_match_the_checkpoint_names_each_difference(tmp_path):
    checkpoint = tmp_path / "ceit_384.pth"
    torch.save(random_official_state_dict(depth=1, image_size=384), checkpoint)
    with pytest.raises(CheckpointConversionError) as refusal:
        convert_checkpoint(checkpoint, tmp_path / "out", preset="ceit_tiny_patch16_224")
    assert str(refusal.value) == (
        "The checkpoint is not a ceit_tiny_patch16_224: the preset has depth 12 (checkpoint: 1), image size 224 "
        "(checkpoint: 384)."
    )
    assert not (tmp_path / "out").exists()


def test_a_preset_conversion_keeps_the_checkpoints_number_of_classes(tmp_path):
    checkpoint = tmp_path / "fine_tuned.pth"
    torch.save(random_official_state_dict(num_classes=10), checkpoint)
    convert_checkpoint(checkpoint, tmp_path / "out", preset="ceit_tiny_patch16_224")
    model = CeiTForImageClassification.from_pretrained(tmp_path / "out")
    assert model.config.num_labels == 10 and model.classifier.out_features == 10


def test_files_move_into_a_new_nested_folder_from_a_hidden_one_beside_it_weights_last(tmp_path, monkeypatch):
    """Each file moves by a rename on the same filesystem from a hidden partial folder beside the output, the weights
    last: a conversion killed while moving leaves a folder that does not load, never one that loads incompletely."""
    checkpoint, output_dir = tmp_path / "ok.pth", tmp_path / "new" / "nested" / "out"
    torch.save(_small_sd(), checkpoint)
    moves, rename = [], os.replace

    def recording_rename(source, target):
        if Path(target).parent == output_dir:
            moves.append((Path(source), Path(target).name))
        rename(source, target)

    monkeypatch.setattr(os, "replace", recording_rename)
    convert_checkpoint(checkpoint, output_dir)
    staging = {source.parent for source, _ in moves}
    assert len(staging) == 1 and next(iter(staging)).parent == output_dir.parent
    assert next(iter(staging)).name.startswith(".out.partial-")
    assert moves[-1][1] == "model.safetensors" and len(moves) == len(list(output_dir.iterdir())) > 1
    assert _leftovers(output_dir.parent) == []


def test_a_checkpoint_saved_from_gpu_tensors_loads_on_a_machine_without_one(tmp_path, monkeypatch):
    """The official checkpoints were saved from CUDA tensors; torch.load alone would look for a GPU."""
    checkpoint, weights = tmp_path / "gpu.pth", _small_sd()
    with monkeypatch.context() as patch:
        patch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        torch.save({"model": weights}, checkpoint)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(checkpoint, weights_only=True)  # what the stored location asks for
    loaded = load_official_checkpoint(checkpoint)
    assert all(tensor.device.type == "cpu" for tensor in loaded.values())
    assert all(torch.equal(loaded[key], weights[key]) for key in weights)


def test_pickled_code_is_refused_even_where_the_environment_turns_torchs_safe_default_off(tmp_path, monkeypatch):
    path = tmp_path / "malicious.pth"
    torch.save({"model": _small_sd(), "payload": WritesMarkerWhenUnpickled(tmp_path / "MARKER")}, path)
    monkeypatch.setenv("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", "1")
    with pytest.raises(CheckpointConversionError) as refusal:
        load_official_checkpoint(path)
    assert not (tmp_path / "MARKER").exists()
    assert str(refusal.value) == (
        f"{path} holds a pickled Python object other than tensors and plain containers (io.open). Unpickling it could "
        "run arbitrary code, so it is not loaded (torch.load with weights_only=True). Save the state_dict alone "
        "(torch.save(model.state_dict(), path)) where the checkpoint is trusted."
    )


def test_the_model_entry_is_read_unless_the_ema_is_asked_for(tmp_path):
    model, ema = _small_sd(seed=1), _small_sd(seed=2)
    torch.save({"model": model, "model_ema": ema, "epoch": 3}, tmp_path / "ckpt.pth")
    assert torch.equal(load_official_checkpoint(tmp_path / "ckpt.pth")["pos_embed"], model["pos_embed"])
    assert torch.equal(load_official_checkpoint(tmp_path / "ckpt.pth", use_ema=True)["pos_embed"], ema["pos_embed"])


@pytest.mark.parametrize(
    "content, expected",
    [
        ({f"entry{i:02d}": i for i in range(12)}, "--use_ema: {path} has no 'model_ema' entry (its keys: {keys})."),
        ({"epoch": 3, "args": "lr=0.1"}, "{path}: it has no 'model' entry and is not a state_dict of tensors."),
        ({"model": {"pos_embed": [0.0]}}, "{path}: its 'model' entry is not a state_dict of tensors."),
    ],
    ids=["no-ema-lists-ten-keys", "no-model-entry", "model-entry-without-tensors"],
)
def test_a_checkpoint_without_the_asked_for_weights_says_what_it_holds(content, expected, tmp_path):
    path = tmp_path / "ckpt.pth"
    torch.save(content, path)
    with pytest.raises(CheckpointConversionError) as refusal:
        load_official_checkpoint(path, use_ema=expected.startswith("--use_ema"))
    assert str(refusal.value) == expected.format(path=path, keys=sorted(content)[:10])


def test_a_checkpoint_of_another_width_is_refused_with_the_official_widths_and_what_to_do():
    with pytest.raises(CheckpointConversionError) as refusal:
        infer_config(random_official_state_dict(width=96, heads=3, depth=1))
    assert str(refusal.value) == (
        "No official CeiT variant has width 96 (the official widths are [192, 384, 768]). For another width, build a "
        "CeiTConfig and call official_to_model(state_dict, config)."
    )


def _without_blocks():
    return {key: value for key, value in _small_sd().items() if not key.startswith("blocks.")}


@pytest.mark.parametrize(
    "state_dict, expected",
    [
        (
            lambda: {f"layer{i}.weight": torch.zeros(1) for i in range(7)},
            "The checkpoint has no 'i2t.proj.weight', 'pos_embed', 'head.weight': it is not an official CeiT "
            "checkpoint (its keys include ['layer0.weight', 'layer1.weight', 'layer2.weight', 'layer3.weight', "
            "'layer4.weight']).",
        ),
        (
            lambda: {**_small_sd(), "pos_embed": torch.zeros(197, 192)},
            "The checkpoint's 'pos_embed' has shape (197, 192), not the 3-dimensional tensor of an official CeiT.",
        ),
        (
            _without_blocks,
            "The checkpoint has no encoder blocks ('blocks.N.*'): it is not an official CeiT checkpoint.",
        ),
        (
            lambda: {**_small_sd(), **{f"extra{i}.weight": torch.zeros(1) for i in range(7)}},
            "7 key(s) are not official CeiT keys, e.g. ['extra0.weight', 'extra1.weight', 'extra2.weight', "
            "'extra3.weight', 'extra4.weight']; is this a CeiT checkpoint?",
        ),
    ],
    ids=["not-ceit", "pos-embed-2d", "no-blocks", "unknown-keys"],
)
def test_a_state_dict_that_is_not_an_official_ceit_is_refused_saying_why(state_dict, expected):
    with pytest.raises(CheckpointConversionError) as refusal:
        official_to_model(state_dict())
    assert str(refusal.value) == expected


@pytest.mark.parametrize("patches", [0, 1, 3, 4])
def test_the_image_size_comes_from_a_square_grid_of_position_embeddings(patches):
    state_dict = {**_small_sd(), "pos_embed": torch.zeros(1, 1 + patches, 192)}
    if round(patches**0.5) ** 2 != patches or patches == 0:
        with pytest.raises(CheckpointConversionError) as refusal:
            infer_config(state_dict)
        assert str(refusal.value) == f"pos_embed holds {patches} patch positions, not a square grid."
    else:
        assert infer_config(state_dict).image_size == 16 * round(patches**0.5)
