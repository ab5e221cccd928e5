# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""`ceit_hf.hub` / `scripts/push_to_hub.py` against a local stand-in for the Hugging Face Hub (tests/hub_stand_in.py):
the real huggingface_hub code runs down to HTTP."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from hub_stand_in import FAKE_TOKEN, cli_env
from huggingface_hub import constants
from safetensors.torch import save_file

from ceit_hf import hub
from ceit_hf.hub import ModelFolderError, PushError, check_model_folder, push_model_folder


REPO_ROOT = Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------- fixtures


def _model_folder(root: Path) -> tuple[Path, dict[str, bytes]]:
    """A small save_pretrained-like folder, and the exact bytes of each of its files."""
    folder = root / "model"
    folder.mkdir()
    save_file(
        {"classifier.weight": torch.arange(12, dtype=torch.float32).reshape(3, 4), "classifier.bias": torch.ones(3)},
        str(folder / "model.safetensors"),
    )
    config = {
        "model_type": "ceit",
        "architectures": ["CeiTForImageClassification"],
        "auto_map": {
            "AutoConfig": "configuration_ceit.CeiTConfig",
            "AutoModelForImageClassification": "modeling_ceit.CeiTForImageClassification",
        },
    }
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps({"crop_size": {"height": 224, "width": 224}}))
    (folder / "README.md").write_text("---\nlibrary_name: transformers\nlicense: apache-2.0\n---\n\n# A test model\n")
    (folder / "configuration_ceit.py").write_text("# configuration code\nVALUE = 'é'\n", encoding="utf-8")
    (folder / "modeling_ceit.py").write_bytes(b"# modeling code\r\nprint('bytes kept as they are')\n")
    files = {path.name: path.read_bytes() for path in folder.iterdir()}
    return folder, files


# -------------------------------------------------------------------------------------------------- tests


@pytest.mark.parametrize("xet", [True, False], ids=["xet-pipeline", "create-commit"])
def test_upload_sends_every_file_byte_exact(fake_hub, tmp_path, monkeypatch, xet):
    # With hf_xet installed, upload_folder goes through its streamed pipeline; without, through create_commit.
    # Both must end in the same commit (the stand-in answers "regular" upload mode, so no xet transfer happens).
    from huggingface_hub import hf_api

    monkeypatch.setattr(hf_api, "is_xet_available", lambda: xet)
    folder, files = _model_folder(tmp_path)
    logged = []
    result = push_model_folder(
        folder, "ceit-test/tiny", commit_message="Add weights", endpoint=fake_hub.url, log=logged.append
    )

    assert fake_hub.unexpected == []
    assert fake_hub.repos["ceit-test/tiny"]["private"] is False
    assert len(fake_hub.commits) == 1
    commit = fake_hub.commits[0]
    assert commit["repo_id"] == "ceit-test/tiny" and commit["revision"] == "main"
    assert commit["summary"] == "Add weights"
    assert commit["files"] == files  # names and byte-exact content
    assert fake_hub.repos["ceit-test/tiny"]["branches"]["main"] == files
    # README.md metadata is validated before hashing (create_commit validates it once more).
    assert fake_hub.validated_readmes and set(fake_hub.validated_readmes) == {files["README.md"].decode()}
    assert fake_hub.requests[0] == ("POST", "/api/repos/create")
    assert ("POST", "/api/models/ceit-test/tiny/commit/main") in fake_hub.requests

    assert result.repo_url == f"{fake_hub.url}/ceit-test/tiny"
    assert result.commit_url.startswith(f"{fake_hub.url}/ceit-test/tiny/commit/")
    assert sorted(f.path_in_repo for f in result.files) == sorted(files)
    assert logged[-1] == f"Model repository: {fake_hub.url}/ceit-test/tiny"


def test_upload_reads_endpoint_and_token_from_environment(fake_hub, tmp_path):
    folder, files = _model_folder(tmp_path)
    push_model_folder(folder, "ceit-test/env", private=True, log=lambda _: None)  # no endpoint=, no token=
    assert fake_hub.repos["ceit-test/env"]["private"] is True
    assert fake_hub.commits[0]["files"] == files


def test_upload_to_existing_repo_and_new_branch(fake_hub, tmp_path):
    folder, files = _model_folder(tmp_path)
    push_model_folder(folder, "ceit-test/branchy", endpoint=fake_hub.url, log=lambda _: None)
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# Updated card\n")
    logged = []
    result = push_model_folder(folder, "ceit-test/branchy", revision="v2", endpoint=fake_hub.url, log=logged.append)

    assert fake_hub.unexpected == []
    branches = fake_hub.repos["ceit-test/branchy"]["branches"]
    assert branches["main"]["README.md"] == files["README.md"]  # main untouched by the second upload
    assert branches["v2"]["README.md"] == b"---\nlicense: apache-2.0\n---\n\n# Updated card\n"
    assert fake_hub.commits[-1]["revision"] == "v2"
    assert result.revision == "v2"
    assert logged[-1] == f"Model repository: {fake_hub.url}/ceit-test/branchy/tree/v2"


def test_dry_run_lists_files_and_sends_nothing(fake_hub, tmp_path, monkeypatch):
    folder, files = _model_folder(tmp_path)

    def no_api(*args, **kwargs):
        raise AssertionError("a dry run must not create an HfApi client")

    monkeypatch.setattr(hub, "HfApi", no_api)
    logged = []
    result = push_model_folder(folder, "ceit-test/dry", dry_run=True, endpoint=fake_hub.url, log=logged.append)

    assert fake_hub.requests == []
    assert result.dry_run and result.commit_url is None
    listing = "\n".join(logged)
    for name in files.keys():
        assert name in listing
    safetensors_line = next(line for line in listing.splitlines() if line.endswith("model.safetensors"))
    assert f"{len(files['model.safetensors'])} B" in safetensors_line
    assert f"{len(files)} file(s)" in listing
    assert "Nothing was uploaded." in listing


def test_dry_run_works_offline_without_token(tmp_path, monkeypatch):
    folder, _ = _model_folder(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    result = push_model_folder(folder, "ceit-test/dry", dry_run=True, log=lambda _: None)
    assert len(result.files) == 6


def test_offline_mode_and_missing_token_are_reported(tmp_path, monkeypatch):
    folder, _ = _model_folder(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(PushError, match="HF_HUB_OFFLINE"):
        push_model_folder(folder, "ceit-test/x", token=FAKE_TOKEN, log=lambda _: None)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(PushError, match="HF_TOKEN"):
        push_model_folder(folder, "ceit-test/x", log=lambda _: None)


def test_folder_without_config_is_refused(tmp_path):
    folder, _ = _model_folder(tmp_path)
    (folder / "config.json").unlink()
    with pytest.raises(ModelFolderError, match=r"no config\.json"):
        check_model_folder(folder)


@pytest.mark.parametrize(
    "name",
    [
        "pytorch_model.bin",
        "model.pt",
        "training_args.bin",
        "checkpoint-4/optimizer.pt",
        "checkpoint-4/model.safetensors",
    ],
)
def test_pickles_and_checkpoints_are_skipped(tmp_path, name):
    folder, files = _model_folder(tmp_path)
    (folder / name).parent.mkdir(exist_ok=True)
    torch.save({"weight": torch.zeros(2)}, folder / name)
    check = check_model_folder(folder)
    assert [f.path_in_repo for f in check.skipped] == [name]
    assert {f.path_in_repo for f in check.files} == set(files)


def test_pickled_weights_without_safetensors_are_refused(tmp_path):
    folder, _ = _model_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    torch.save({"weight": torch.zeros(2)}, folder / "pytorch_model.bin")
    with pytest.raises(ModelFolderError) as error:
        check_model_folder(folder)
    message = str(error.value)
    assert "pytorch_model.bin are never uploaded" in message and "no safetensors weights" in message


def test_missing_folder_and_bad_weights_are_refused(tmp_path):
    with pytest.raises(ModelFolderError, match="does not exist"):
        check_model_folder(tmp_path / "nope")
    folder, _ = _model_folder(tmp_path)
    (folder / "model.safetensors").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ModelFolderError, match="not a valid safetensors file"):
        check_model_folder(folder)


def test_sharded_safetensors_are_accepted_and_checked(tmp_path):
    folder, _ = _model_folder(tmp_path)
    (folder / "model.safetensors").unlink()
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    save_file({"a": torch.zeros(2)}, str(folder / shards[0]))
    save_file({"b": torch.ones(2)}, str(folder / shards[1]))
    index = {"metadata": {"total_size": 16}, "weight_map": {"a": shards[0], "b": shards[1]}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    assert {f.path_in_repo for f in check_model_folder(folder).files} >= set(shards)
    (folder / shards[1]).unlink()
    with pytest.raises(ModelFolderError, match="model-00002-of-00002.safetensors"):
        check_model_folder(folder)


def test_missing_model_card_warns(tmp_path):
    folder, _ = _model_folder(tmp_path)
    (folder / "README.md").unlink()
    assert any("README.md" in note for note in check_model_folder(folder).warnings)
    with pytest.warns(UserWarning, match="README.md"):
        push_model_folder(folder, "ceit-test/nocard", dry_run=True, log=lambda _: None)


def test_git_folder_is_not_uploaded(tmp_path):
    folder, files = _model_folder(tmp_path)
    (folder / ".git").mkdir()
    (folder / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    assert {f.path_in_repo for f in check_model_folder(folder).files} == set(files)


def test_cli_uploads_to_stand_in(fake_hub, tmp_path):
    folder, files = _model_folder(tmp_path)
    command = [
        sys.executable,
        str(REPO_ROOT / "scripts" / "push_to_hub.py"),
        "--model_dir",
        str(folder),
        "--repo_id",
        "ceit-test/cli",
        "--private",
        "--commit_message",
        "CLI upload",
    ]
    completed = subprocess.run(command, env=cli_env(fake_hub.url), capture_output=True, text=True, timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert fake_hub.unexpected == []
    assert fake_hub.repos["ceit-test/cli"]["private"] is True
    assert fake_hub.commits[0]["summary"] == "CLI upload"
    assert fake_hub.commits[0]["files"] == files
    assert completed.stdout.strip().splitlines()[-1] == f"Model repository: {fake_hub.url}/ceit-test/cli"


def _load_cli():
    import importlib.util

    spec = importlib.util.spec_from_file_location("push_to_hub_cli", REPO_ROOT / "scripts" / "push_to_hub.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_dry_run_and_refusal_in_process(tmp_path, capsys, monkeypatch):
    cli = _load_cli()
    folder, files = _model_folder(tmp_path)
    monkeypatch.setattr(hub, "HfApi", None)  # any API use would fail loudly
    assert cli.main(["--model_dir", str(folder), "--repo_id", "ceit-test/cli", "--dry_run"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in files) and "Nothing was uploaded." in out

    # what scripts/train.py writes besides the model: listed as skipped, not uploaded
    (folder / "checkpoint-2").mkdir()
    torch.save({"state": 1}, folder / "checkpoint-2" / "optimizer.pt")
    torch.save({"args": 1}, folder / "training_args.bin")
    assert cli.main(["--model_dir", str(folder), "--repo_id", "ceit-test/cli", "--dry_run"]) == 0
    out = capsys.readouterr().out
    listed, skipped = out.split("Skipped")
    assert "training_args.bin" not in listed and "optimizer.pt" not in listed
    assert "checkpoint-2/optimizer.pt" in skipped and "training_args.bin" in skipped

    (folder / "model.safetensors").unlink()
    assert cli.main(["--model_dir", str(folder), "--repo_id", "ceit-test/cli", "--dry_run"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no safetensors weights" in err


def test_a_peft_adapter_folder_is_accepted(tmp_path):
    """`train.py --lora_rank` writes an adapter (adapter_config.json + adapter_model.safetensors), no config.json."""
    (tmp_path / "adapter_config.json").write_text('{"peft_type": "LORA", "r": 4}')
    with pytest.raises(ModelFolderError, match="has adapter_config.json but no adapter_model.safetensors"):
        check_model_folder(tmp_path)
    save_file({"lora_A.weight": torch.zeros(4, 8)}, tmp_path / "adapter_model.safetensors")
    (tmp_path / "training_args.bin").write_bytes(b"pickle")
    check = check_model_folder(tmp_path)
    assert {f.path_in_repo for f in check.files} == {"adapter_config.json", "adapter_model.safetensors"}
    assert [f.path_in_repo for f in check.skipped] == ["training_args.bin"]


# ------------------------------------------------------------------------------- adapters and ONNX exports


def _adapter_folder(root: Path, base: str) -> tuple[Path, dict[str, bytes]]:
    """What `train.py --lora_rank R --merge_lora` writes: the adapter, its card naming the (local) base, merged/."""
    from ceit_hf.model_card import adapter_base_note

    folder = root / "lora"
    (folder / "merged").mkdir(parents=True)
    save_file({"base_model.model.classifier.weight": torch.ones(3, 4)}, str(folder / "adapter_model.safetensors"))
    config = {"peft_type": "LORA", "r": 4, "base_model_name_or_path": base, "modules_to_save": ["classifier"]}
    (folder / "adapter_config.json").write_text(json.dumps(config, indent=2))
    (folder / "preprocessor_config.json").write_text(json.dumps({"crop_size": {"height": 32, "width": 32}}))
    (folder / "README.md").write_text(
        f"---\nlibrary_name: peft\nlicense: apache-2.0\n---\n\n# lora\n\nFine-tuned from `{base}`.\n\n"
        f"{adapter_base_note(base, None)}\n\n## How to use\n\nWith PEFT.\n"
    )
    save_file({"classifier.weight": torch.zeros(3, 4)}, str(folder / "merged" / "model.safetensors"))
    (folder / "merged" / "config.json").write_text('{"model_type": "ceit"}')
    (folder / "merged" / "preprocessor_config.json").write_text("{}")
    files = {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}
    return folder, files


def _base_folder(root: Path, card: str | None) -> Path:
    base = root / "base"
    base.mkdir()
    (base / "config.json").write_text('{"model_type": "ceit"}')
    if card is not None:
        (base / "README.md").write_text(card)
    return base


def test_adapter_upload_skips_merged_and_names_the_base_by_the_hub_id_of_its_card(fake_hub, tmp_path):
    from ceit_hf.model_card import variant_card

    base = _base_folder(tmp_path, variant_card("ceit_tiny_patch16_224"))  # its card: repo_id = "ceit-hf/..."
    folder, files = _adapter_folder(tmp_path, str(base))
    logged = []
    push_model_folder(folder, "ceit-test/lora", endpoint=fake_hub.url, log=logged.append)

    assert fake_hub.unexpected == []
    (commit,) = fake_hub.commits
    uploaded = commit["files"]
    assert set(uploaded) == {
        "adapter_config.json",
        "adapter_model.safetensors",
        "preprocessor_config.json",
        "README.md",
    }  # not merged/
    assert uploaded["adapter_model.safetensors"] == files["adapter_model.safetensors"]
    config, original = json.loads(uploaded["adapter_config.json"]), json.loads(files["adapter_config.json"])
    assert config == {**original, "base_model_name_or_path": "ceit-hf/ceit_tiny_patch16_224"}
    card = uploaded["README.md"].decode()
    metadata = yaml.safe_load(card.split("---\n", 2)[1])
    assert metadata["base_model"] == "ceit-hf/ceit_tiny_patch16_224" and metadata["library_name"] == "peft"
    assert str(base) not in card and "Fine-tuned from `ceit-hf/ceit_tiny_patch16_224`." in card
    hub_id = "ceit-hf/ceit_tiny_patch16_224"
    assert f"Base model: [`{hub_id}`](https://huggingface.co/{hub_id})" in card
    # the user's folder is left as it was
    assert {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()} == files
    assert any(line.startswith("adapter_config.json: base_model_name_or_path set to ceit-hf/") for line in logged)


def test_adapter_dry_run_lists_merged_as_skipped_and_takes_base_model_id(tmp_path, capsys, monkeypatch):
    cli = _load_cli()
    monkeypatch.setattr(hub, "HfApi", None)
    base = _base_folder(tmp_path, card=None)
    folder, _ = _adapter_folder(tmp_path, str(base))
    argv = ["--model_dir", str(folder), "--repo_id", "ceit-test/lora", "--dry_run"]
    assert cli.main([*argv, "--base_model_id", "me/ceit-base"]) == 0
    listed, skipped = capsys.readouterr().out.split("Skipped")
    assert "merged/" not in listed and "adapter_model.safetensors" in listed
    assert "adapter_config.json  (base_model_name_or_path set to me/ceit-base in the upload)" in listed
    assert skipped.startswith(" (merged/ holds another model") and f"--model_dir {folder / 'merged'}" in skipped
    merged_files = ("config.json", "model.safetensors", "preprocessor_config.json")
    assert all(f"merged/{name}" in skipped for name in merged_files)

    # no Hub id anywhere: a warning, and the card says that the base model is a local folder
    with pytest.warns(UserWarning, match=r"names the base model '.*base', a local folder .* --base_model_id NAMESP"):
        push_model_folder(folder, "ceit-test/lora", dry_run=True, log=lambda _: None)
    check = check_model_folder(folder)
    assert check.base_model == str(base) and check.base_model_id is None
    assert check.contents == {}  # uploaded as they are: train.py's card already says that the base model is local
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n\n# My adapter\n\n## Use\n\nWith PEFT.\n")
    card = check_model_folder(folder).contents["README.md"].decode()  # a card written by hand gets the sentence
    note = f"Base model: `{base}`, a local folder on the machine the adapter was trained on"
    assert card.index("# My adapter") < card.index(note) < card.index("## Use")
    assert "base_model:" not in card.split("---\n", 2)[1]


def test_base_model_hub_id_sources_and_bad_values(tmp_path):
    from ceit_hf.hub import hub_id_of_base
    from ceit_hf.model_card import PLACEHOLDER_NAMESPACE

    assert hub_id_of_base("ceit-hf/ceit_tiny_patch16_224") == "ceit-hf/ceit_tiny_patch16_224"  # a Hub id already
    assert hub_id_of_base(str(tmp_path / "gone" / "base")) is None  # a local path that moved
    placeholder = f'```python\nrepo_id = "{PLACEHOLDER_NAMESPACE}/base"\n```\n'  # trained without --hub_model_id
    assert hub_id_of_base(str(_base_folder(tmp_path, placeholder))) is None
    folder, _ = _adapter_folder(tmp_path, "ceit-hf/ceit_tiny_patch16_224")
    check = check_model_folder(folder)
    assert check.base_model_id == "ceit-hf/ceit_tiny_patch16_224" and "adapter_config.json" not in check.contents
    with pytest.raises(ModelFolderError, match="--base_model_id '/tmp/base' is no Hub repository id"):
        check_model_folder(folder, base_model_id="/tmp/base")
    model, _ = _model_folder(tmp_path)
    with pytest.raises(ModelFolderError, match="--base_model_id names the base model of a LoRA adapter"):
        check_model_folder(model, base_model_id="me/base")


def test_onnx_export_is_uploaded_and_said_so(tmp_path):
    folder, files = _model_folder(tmp_path)
    (folder / "onnx").mkdir()
    (folder / "onnx" / "model.onnx").write_bytes(b"\0" * 3 * 1024 * 1024)
    logged = []
    result = push_model_folder(folder, "ceit-test/onnx", dry_run=True, log=logged.append)
    assert "onnx/model.onnx" in {f.path_in_repo for f in result.files}
    assert "Including ONNX export onnx/model.onnx (3.0 MiB)" in logged
    assert any(line.endswith("onnx/model.onnx  (ONNX export)") for line in "\n".join(logged).splitlines())
