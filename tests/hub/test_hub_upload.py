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
    with pytest.raises(PushError) as error:
        push_model_folder(folder, "ceit-test/x", token=FAKE_TOKEN, log=lambda _: None)
    assert str(error.value) == "huggingface_hub is in offline mode (HF_HUB_OFFLINE is set): unset it to upload."
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(hub, "get_token", lambda: None)
    with pytest.raises(PushError) as error:
        push_model_folder(folder, "ceit-test/x", log=lambda _: None)
    assert str(error.value) == (
        "No Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access)."
    )


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


def test_git_folder_is_not_uploaded(fake_hub, tmp_path):
    """By the check's own ignore patterns, also after an upload in the same process (huggingface_hub's upload_folder
    appends its .git patterns to the list of patterns it is given, which once was the module's own list)."""
    folder, files = _model_folder(tmp_path)
    push_model_folder(folder, "ceit-test/git", endpoint=fake_hub.url, log=lambda _: None)
    assert hub.SKIP_PATTERNS == ("checkpoint-*", "*.bin", "*.pt", "*.pth", "*.pkl", "*.pickle", "*.ckpt")
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
    assert "README.md: uploaded naming the base model ceit-hf/ceit_tiny_patch16_224" in logged


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
    assert "adapter_config.json: " not in listed  # the list's note says it, once
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


# ---------------------------------------------------------------- what the user reads: listings, warnings, refusals


def test_sizes_are_written_in_the_largest_binary_unit_not_above_them():
    from ceit_hf.hub import format_size

    assert [format_size(n) for n in (0, 1, 1023)] == ["0 B", "1 B", "1023 B"]
    assert [format_size(n) for n in (1024, 1536, 1023 * 1024**2)] == ["1.0 KiB", "1.5 KiB", "1023.0 MiB"]
    assert [format_size(n) for n in (5 * 1024**3, 2 * 1024**4)] == ["5.0 GiB", "2048.0 GiB"]  # no TiB


def test_dry_run_listing_word_for_word(tmp_path, monkeypatch):
    """What `push_to_hub.py --dry_run` prints: the files with their sizes and notes, the ONNX export, the skipped
    files by reason, and the repository URL (a trailing slash of the endpoint dropped; `main` is no branch)."""
    monkeypatch.setattr(hub, "HfApi", None)
    folder, files = _model_folder(tmp_path)
    (folder / "onnx").mkdir()
    files["onnx/model.onnx"] = b"\0" * 3 * 1024 * 1024
    (folder / "onnx" / "model.onnx").write_bytes(files["onnx/model.onnx"])
    (folder / "training_args.bin").write_bytes(b"pickle")
    logged = []
    result = push_model_folder(
        folder, "ceit-test/dry", revision="main", endpoint="http://hub.test/", dry_run=True, log=logged.append
    )

    def line(name, note=""):
        return f"{hub.format_size(len(files[name])):>12}  {name}" + (f"  ({note})" if note else "")

    order = [
        "README.md",
        "config.json",
        "configuration_ceit.py",
        "model.safetensors",
        "modeling_ceit.py",
        "onnx/model.onnx",
        "preprocessor_config.json",
    ]
    total = hub.format_size(sum(len(content) for content in files.values()))
    assert logged == [
        f"Dry run: files of {folder.resolve()} that would be uploaded to ceit-test/dry:",
        "\n".join(
            [*(line(n, "ONNX export" if n.endswith(".onnx") else "") for n in order), f"7 file(s), {total} in total"]
        ),
        "Including ONNX export onnx/model.onnx (3.0 MiB)",
        "Skipped (Trainer checkpoints and pickles, checkpoint-*, *.bin, *.pt, *.pth, *.pkl, *.pickle, *.ckpt):",
        "         6 B  training_args.bin\n1 file(s), 6 B in total",
        "Nothing was uploaded. Model repository would be: http://hub.test/ceit-test/dry",
    ]
    assert (result.repo_id, result.repo_url, result.dry_run, result.revision) == (
        "ceit-test/dry",
        "http://hub.test/ceit-test/dry",
        True,
        None,
    )
    logged.clear()
    result = push_model_folder(folder, "ceit-test/dry", revision="v2", dry_run=True, log=logged.append)
    assert logged[0].endswith("that would be uploaded to ceit-test/dry (branch v2):") and result.revision == "v2"
    assert logged[-1] == f"Nothing was uploaded. Model repository would be: {constants.ENDPOINT}/ceit-test/dry/tree/v2"


def test_upload_log_word_for_word(fake_hub, tmp_path):
    folder, files = _model_folder(tmp_path)
    logged = []
    result = push_model_folder(folder, "ceit-test/log", endpoint=fake_hub.url + "/", log=logged.append)
    size = hub.format_size(sum(len(content) for content in files.values()))
    assert logged == [
        f"Uploading 6 file(s), {size}, from {folder.resolve()} to ceit-test/log",
        f"Committed {result.commit_url.rsplit('/', 1)[1]}: {result.commit_url}",
        f"Model repository: {fake_hub.url}/ceit-test/log",
    ]


def test_folder_warnings_point_at_the_caller(tmp_path):
    import warnings

    folder, _ = _model_folder(tmp_path)
    (folder / "README.md").unlink()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        push_model_folder(folder, "ceit-test/nocard", dry_run=True, log=lambda _: None)
    assert [w.category for w in caught] == [UserWarning]
    # this file's line (under mutation testing, the frame mutmut's trampoline adds between the two)
    assert Path(caught[0].filename) == Path(__file__) or Path(caught[0].filename).name == "trampoline.py"
    assert str(caught[0].message) == (
        f"{str(folder)!r} has no README.md (model card): the Hub page will be empty. Write one with "
        "ceit_hf.model_card.training_card (trained models) or variant_card (official variants)."
    )


def test_code_files_named_by_every_kind_of_auto_map_entry_are_checked(tmp_path):
    """auto_map values: a class, a (slow, fast) list with None, one class per image-processor backend, and code of
    another repository (`repo--module.Class`), which the folder need not hold."""
    folder, _ = _model_folder(tmp_path)
    auto_map = {
        "AutoConfig": "configuration_ceit.CeiTConfig",
        "AutoModel": "someone/other--modeling_other.OtherModel",
        "AutoImageProcessor": {"torchvision": "image_processing_ceit.CeiTImageProcessor", "pil": None},
        "AutoTokenizer": ["tokenization_ceit.CeiTTokenizer", None],
    }
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "auto_map": auto_map}))
    assert check_model_folder(folder).warnings == [
        "auto_map in config.json refers to code files missing from the folder: "
        "['image_processing_ceit.py', 'tokenization_ceit.py']"
    ]
    (folder / "image_processing_ceit.py").write_text("# code\n")
    (folder / "tokenization_ceit.py").write_text("# code\n")
    assert check_model_folder(folder).warnings == []


def test_base_model_ids_that_are_local_or_invalid_are_not_hub_ids(tmp_path, monkeypatch):
    from ceit_hf.hub import hub_id_of_base

    monkeypatch.chdir(tmp_path)
    assert hub_id_of_base("not a repo id") is None and hub_id_of_base("") is None and hub_id_of_base(None) is None
    (tmp_path / "someone").mkdir()
    (tmp_path / "someone" / "weights").write_text("a local file, not a folder")
    assert hub_id_of_base("someone/weights") is None  # a relative path that exists is local
    assert hub_id_of_base("someone/model") == "someone/model"


def test_adapter_folders_skip_models_at_any_depth_and_keep_other_folders(tmp_path):
    base = _base_folder(tmp_path, card=None)
    folder, _ = _adapter_folder(tmp_path, str(base))
    (folder / "exports" / "fp16").mkdir(parents=True)
    (folder / "exports" / "fp16" / "config.json").write_text('{"model_type": "ceit"}')
    (folder / "examples").mkdir()
    (folder / "examples" / "cat.txt").write_text("an example input")
    (folder / "training_args.bin").write_bytes(b"pickle")
    check = check_model_folder(folder, base_model_id="me/ceit-base")
    assert {f.path_in_repo for f in check.files} == {
        "README.md",
        "adapter_config.json",
        "adapter_model.safetensors",
        "preprocessor_config.json",
        "examples/cat.txt",
    }
    skipped = {f.path_in_repo: f.note for f in check.skipped}
    assert skipped["training_args.bin"] == SKIP_REASON_TEXT
    assert skipped["exports/fp16/config.json"] == (
        "exports/fp16/ holds another model, such as the merged model of train.py --merge_lora: publish it as a "
        f"repository of its own, scripts/push_to_hub.py --model_dir {folder.resolve() / 'exports/fp16'} "
        "--repo_id NAMESPACE/NAME"
    )
    assert sorted(skipped) == [
        "exports/fp16/config.json",
        "merged/config.json",
        "merged/model.safetensors",
        "merged/preprocessor_config.json",
        "training_args.bin",
    ]


SKIP_REASON_TEXT = "Trainer checkpoints and pickles, checkpoint-*, *.bin, *.pt, *.pth, *.pkl, *.pickle, *.ckpt"


def test_adapter_base_model_warnings_word_for_word(tmp_path):
    folder, _ = _adapter_folder(tmp_path, "/data/models/base")
    assert check_model_folder(folder).warnings == [
        "adapter_config.json names the base model '/data/models/base', a local folder that people who download the "
        "adapter do not have (and no Hub repository is named in its card): give the base model's Hub repository "
        "with --base_model_id NAMESPACE/NAME. The uploaded card says which base model it needs."
    ]
    config = json.loads((folder / "adapter_config.json").read_text())
    del config["base_model_name_or_path"]
    (folder / "adapter_config.json").write_text(json.dumps(config))
    assert check_model_folder(folder).warnings == [
        "adapter_config.json names no base model: give its Hub repository with --base_model_id NAMESPACE/NAME."
    ]


def _safetensors_error(path: Path) -> str:
    from safetensors import safe_open

    with pytest.raises(Exception) as error:
        safe_open(str(path), framework="numpy")
    return str(error.value)


def test_every_refusal_word_for_word(tmp_path):
    """What is wrong, all of it at once, and what to do: a folder that cannot be published is refused saying so."""
    folder, _ = _model_folder(tmp_path)
    where = repr(str(folder))

    def refusal(**kwargs):
        with pytest.raises(ModelFolderError) as error:
            check_model_folder(folder, **kwargs)
        return str(error.value)

    assert refusal(base_model_id="me/base") == (
        f"Cannot upload {where}: --base_model_id names the base model of a LoRA adapter, but it has no "
        "adapter_config.json."
    )
    (folder / "config.json").write_text("[1, 2]")
    assert refusal() == f"Cannot upload {where}: its config.json is not a JSON object."
    (folder / "config.json").write_text("{")
    assert refusal() == (
        f"Cannot upload {where}: its config.json is not valid JSON (Expecting property name enclosed in double "
        "quotes: line 1 column 2 (char 1))."
    )
    (folder / "config.json").unlink()
    (folder / "model.safetensors").unlink()
    assert refusal() == (
        f"Cannot upload {where}: it has no config.json (save the model with `save_pretrained` first); it has no "
        "safetensors weights (model.safetensors, or a sharded checkpoint with model.safetensors.index.json; pickled "
        "files such as pytorch_model.bin are never uploaded: save the model with `save_pretrained`, which writes "
        "safetensors)."
    )
    (folder / "config.json").write_text('{"model_type": "ceit"}')
    index = folder / "model.safetensors.index.json"
    shards = ["model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"]
    index.write_text(json.dumps({"weight_map": {"a": shards[1], "b": shards[0], "c": shards[1]}}))
    assert refusal() == (
        f"Cannot upload {where}: shard(s) named in model.safetensors.index.json are missing: {shards[0]}, {shards[1]}."
    )
    save_file({"b": torch.zeros(2)}, str(folder / shards[0]))
    (folder / shards[1]).write_text("version https://git-lfs.github.com/spec/v1\n")  # a Git LFS pointer
    problem = _safetensors_error(folder / shards[1])
    assert problem and refusal() == f"Cannot upload {where}: {shards[1]} is not a valid safetensors file: {problem}."
    for weight_map in ({}, ["a", "b"]):
        index.write_text(json.dumps({"weight_map": weight_map}))
        assert (
            refusal() == f"Cannot upload {where}: its model.safetensors.index.json lists no shards in a `weight_map`."
        )
    index.write_text("")
    assert refusal() == (
        f"Cannot upload {where}: its model.safetensors.index.json is not valid JSON (Expecting value: line 1 column 1 "
        "(char 0))."
    )
    with pytest.raises(ModelFolderError) as error:
        check_model_folder(folder / "config.json")
    assert str(error.value) == (
        f"{str(folder / 'config.json')!r} is not a folder: pass the directory written by save_pretrained."
    )
    with pytest.raises(ModelFolderError) as error:
        check_model_folder(folder / "gone")
    assert str(error.value) == f"Model folder {str(folder / 'gone')!r} does not exist."

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{")
    with pytest.raises(ModelFolderError) as error:
        check_model_folder(adapter, base_model_id="base")
    assert str(error.value) == (
        f"Cannot upload {str(adapter)!r}: its adapter_config.json is not valid JSON (Expecting property name enclosed "
        "in double quotes: line 1 column 2 (char 1)); --base_model_id 'base' is no Hub repository id: expected "
        "'namespace/name'; it has adapter_config.json but no adapter_model.safetensors (the adapter weights)."
    )


def test_every_warning_word_for_word(tmp_path):
    folder, _ = _model_folder(tmp_path)
    where = repr(str(folder))
    assert check_model_folder(folder).warnings == []
    (folder / "preprocessor_config.json").unlink()
    config = json.loads((folder / "config.json").read_text())
    for auto_map in (None, {}, ["configuration_ceit.CeiTConfig"]):
        (folder / "config.json").write_text(json.dumps({**config, "model_type": "vit", "auto_map": auto_map}))
        assert check_model_folder(folder).warnings == [
            f"{where} has no preprocessor_config.json: AutoImageProcessor will not load from the repo.",
            "config.json has model_type='vit', not 'ceit'.",
            "config.json has no auto_map: the model will not load with trust_remote_code=True from the Hub (register "
            "the classes for the Auto API before save_pretrained).",
        ]


def test_upload_sends_no_pickles_and_checkpoints(fake_hub, tmp_path):
    """The upload itself leaves them out, not only the listing."""
    folder, files = _model_folder(tmp_path)
    (folder / "training_args.bin").write_bytes(b"pickle")
    (folder / "checkpoint-4").mkdir()
    save_file({"a": torch.zeros(2)}, str(folder / "checkpoint-4" / "model.safetensors"))
    push_model_folder(folder, "ceit-test/clean", endpoint=fake_hub.url, log=lambda _: None)
    assert fake_hub.commits[0]["files"] == files


def test_upload_with_an_explicit_token_a_bare_name_and_an_existing_branch(fake_hub, tmp_path, monkeypatch):
    """`token=` is used when the environment has none; a bare repository name gets the user's namespace from the
    server; the default commit message; pushing again to a branch that exists adds a commit to it."""
    monkeypatch.delenv("HF_TOKEN")
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    folder, files = _model_folder(tmp_path)
    for _ in range(2):
        result = push_model_folder(folder, "bare", revision="v2", token=FAKE_TOKEN, log=lambda _: None)
    assert fake_hub.unexpected == [] and len(fake_hub.commits) == 2
    assert (result.repo_id, result.dry_run, result.revision) == ("fake-user/bare", False, "v2")
    assert fake_hub.commits[-1]["summary"] == "Upload CeiT model with ceit_hf"
    assert fake_hub.repos["fake-user/bare"]["branches"]["v2"] == files
