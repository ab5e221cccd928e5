# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Publish a converted or fine-tuned CeiT model folder, or a LoRA adapter folder, on the Hugging Face Hub: the engine
of `scripts/push_to_hub.py`. Token and endpoint are huggingface_hub's (`HF_TOKEN`, `hf auth login`, `HF_ENDPOINT`)."""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, get_token, validate_repo_id

from .model_card import adapter_card_for_upload, card_repo_id


# Trainer's checkpoints and pickles (torch.save, training_args.bin) are never uploaded: a pickle can run any code.
# A tuple: huggingface_hub's upload_folder appends its own patterns to the list it is given.
SKIP_PATTERNS = ("checkpoint-*", *(f"*{suffix}" for suffix in (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")))
SKIP_REASON = f"Trainer checkpoints and pickles, {', '.join(SKIP_PATTERNS)}"
# A sub-folder holding one of these is a model of its own (train.py --merge_lora writes OUTPUT/merged/).
MODEL_FILE_NAMES = ("config.json", "model.safetensors", "model.safetensors.index.json", "adapter_config.json")
ONNX_NOTE = "ONNX export"


class ModelFolderError(ValueError):
    """The folder cannot be published as it is (missing config or weights, pickled files, ...)."""


class PushError(RuntimeError):
    """The upload cannot start: no token, or huggingface_hub is in offline mode."""


@dataclass(frozen=True)
class FileToUpload:
    path_in_repo: str
    size: int
    note: str = ""  # why the file is skipped, or what it is / what the upload changes in it


@dataclass
class FolderCheck:
    """What `check_model_folder` found: the files to upload, the skipped ones, and non-fatal problems."""

    folder: Path
    files: list[FileToUpload]
    skipped: list[FileToUpload] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    adapter: bool = False  # a PEFT adapter folder
    base_model: str | None = None  # an adapter's base model as its adapter_config.json names it
    base_model_id: str | None = None  # that base model's Hub repository, when known
    contents: dict[str, bytes] = field(default_factory=dict)  # path_in_repo -> what is uploaded instead of the file

    @property
    def total_size(self) -> int:
        return sum(f.size for f in self.files)

    def summary(self, rewritten: bool = True) -> list[str]:
        """Lines naming the ONNX exports uploaded, and (`rewritten`) the files uploaded as modified copies."""
        onnx = [f for f in self.files if f.note == ONNX_NOTE]
        lines = [f"Including ONNX export {f.path_in_repo} ({format_size(f.size)})" for f in onnx]
        copies = [f for f in self.files if rewritten and f.path_in_repo in self.contents]
        return lines + [f"{f.path_in_repo}: {f.note}" for f in copies]


@dataclass
class PushResult:
    repo_id: str
    repo_url: str
    files: list[FileToUpload]
    dry_run: bool
    revision: str | None = None
    commit_url: str | None = None


def format_size(num_bytes: int) -> str:
    exponent = min((num_bytes.bit_length() - 1) // 10, 3)  # the largest unit (up to GiB) not above num_bytes
    return f"{num_bytes / 1024**exponent:.1f} {' KMG'[exponent]}iB" if exponent > 0 else f"{num_bytes} B"


def format_file_list(files: list[FileToUpload], notes: bool = True) -> str:
    """One line per file (size right-aligned, the path in the repository, its note), and a total."""
    lines = [
        f"{format_size(f.size):>12}  {f.path_in_repo}" + (f"  ({f.note})" if notes and f.note else "") for f in files
    ]
    return "\n".join([*lines, f"{len(files)} file(s), {format_size(sum(f.size for f in files))} in total"])


def list_folder_files(folder: str | os.PathLike) -> tuple[list[FileToUpload], list[FileToUpload]]:
    """(the files `upload_folder(ignore_patterns=SKIP_PATTERNS)` sends, the files those patterns skip), sorted."""
    folder = Path(folder).expanduser().resolve()
    paths = {path.relative_to(folder).as_posix(): path for path in sorted(folder.glob("**/*")) if path.is_file()}
    listed = list(filter_repo_objects(list(paths), ignore_patterns=list(DEFAULT_IGNORE_PATTERNS)))
    kept = set(filter_repo_objects(listed, ignore_patterns=list(SKIP_PATTERNS)))
    is_onnx = re.compile(r"\.onnx(_data|\.data|$)").search  # model.onnx and its external data files
    notes = {n: SKIP_REASON if n not in kept else ONNX_NOTE if is_onnx(paths[n].name) else "" for n in listed}
    files = [FileToUpload(n, paths[n].stat().st_size, note) for n, note in notes.items()]
    return [f for f in files if f.path_in_repo in kept], [f for f in files if f.path_in_repo not in kept]


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """None if `path` is a readable safetensors file, else what safetensors says is wrong (truncated, damaged, ...)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            return None
    except Exception as error:  # safetensors raises its own SafetensorError, and OSError for unreadable files
        return str(error) or type(error).__name__


def _auto_map_modules(auto_map: dict) -> set[str]:
    """The code files (`module.py`) that the local class references of `auto_map` need."""
    # a value is a class, a (slow, fast) list, or one class per image processor backend
    values = [v.values() if isinstance(v, dict) else v if isinstance(v, list) else [v] for v in auto_map.values()]
    references = [r for refs in values for r in refs if isinstance(r, str) and "--" not in r and "." in r]
    return {r.rsplit(".", 1)[0] + ".py" for r in references}


def _is_repo_id(name: str) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def hub_id_of_base(base_model: str | None) -> str | None:
    """An adapter's base model's Hub id: `base_model` if it is one, else the repo a local base folder's card names."""
    if not base_model:
        return None
    path = Path(base_model).expanduser()
    if path.is_dir():
        card = path / "README.md"
        return card_repo_id(card.read_text(encoding="utf-8")) if card.is_file() else None
    return None if path.is_absolute() or path.exists() or not _is_repo_id(base_model) else base_model


def _read_json(path: Path, problems: list[str]) -> dict | None:
    """The JSON object in `path`, else None, with what is wrong added to `problems`."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(value, dict):
            return value
        problems.append(f"its {path.name} is not a JSON object")
    except (OSError, ValueError) as error:
        problems.append(f"its {path.name} is not valid JSON ({error})")
    return None


def _prepare_adapter(check: FolderCheck, config: dict, base_model_id: str | None) -> None:
    """Skip the models inside an adapter folder; name its base model by Hub id in uploaded copies (else warn)."""
    names = [f.path_in_repo.rsplit("/", 1) for f in check.files]
    for folder in sorted({name[0] for name in names if len(name) == 2 and name[1] in MODEL_FILE_NAMES}):
        inside = [f for f in check.files if f.path_in_repo.startswith(f"{folder}/")]  # none when inside one skipped
        reason = (
            f"{folder}/ holds another model, such as the merged model of train.py --merge_lora: publish it as a "
            f"repository of its own, scripts/push_to_hub.py --model_dir {check.folder / folder} "
            "--repo_id NAMESPACE/NAME"
        )
        check.files = [f for f in check.files if f not in inside]
        check.skipped += [FileToUpload(f.path_in_repo, f.size, reason) for f in inside]
    base = check.base_model = config.get("base_model_name_or_path")
    base_id = check.base_model_id = base_model_id or hub_id_of_base(base)
    if base_id is None:
        check.warnings.append(
            f"adapter_config.json names the base model {base!r}, a local folder that people who download the adapter "
            "do not have (and no Hub repository is named in its card): give the base model's Hub repository with "
            "--base_model_id NAMESPACE/NAME. The uploaded card says which base model it needs."
            if base
            else "adapter_config.json names no base model: give its Hub repository with --base_model_id NAMESPACE/NAME."
        )

    def upload_instead(name: str, content: bytes, note: str) -> None:
        check.contents[name] = content
        check.files = [FileToUpload(name, len(content), note) if f.path_in_repo == name else f for f in check.files]

    if base_id and base_id != base:
        content = (json.dumps({**config, "base_model_name_or_path": base_id}, indent=2) + "\n").encode()
        upload_instead("adapter_config.json", content, f"base_model_name_or_path set to {base_id} in the upload")
    card = check.folder / "README.md"
    text = card.read_text(encoding="utf-8") if card.is_file() else None
    if text is not None and (uploaded := adapter_card_for_upload(text, base, base_id)) != text:
        upload_instead("README.md", uploaded.encode(), f"uploaded naming the base model {base_id or base}")


def check_model_folder(model_dir: str | os.PathLike, base_model_id: str | None = None) -> FolderCheck:  # noqa: C901
    """Check that `model_dir`, a transformers model or a PEFT adapter (its base model's Hub id `base_model_id`), can
    be published: `ModelFolderError` says what is missing; non-fatal problems are in `FolderCheck.warnings`."""
    folder = Path(model_dir).expanduser()
    where = repr(str(folder))
    if not folder.exists():
        raise ModelFolderError(f"Model folder {where} does not exist.")
    if not folder.is_dir():
        raise ModelFolderError(f"{where} is not a folder: pass the directory written by save_pretrained.")
    files, skipped = list_folder_files(folder)
    names = {f.path_in_repo for f in files}
    problems, notes = [], []
    config = adapter_config = None
    if adapter := "adapter_config.json" in names:
        adapter_config = _read_json(folder / "adapter_config.json", problems)
        if base_model_id and ("/" not in base_model_id or not _is_repo_id(base_model_id)):
            problems.append(f"--base_model_id {base_model_id!r} is no Hub repository id: expected 'namespace/name'")
        weights = ["adapter_model.safetensors"] if "adapter_model.safetensors" in names else []
        if not weights:
            problems.append("it has adapter_config.json but no adapter_model.safetensors (the adapter weights)")
    else:
        if base_model_id:
            problems.append(
                "--base_model_id names the base model of a LoRA adapter, but it has no adapter_config.json"
            )
        if "config.json" in names:
            config = _read_json(folder / "config.json", problems)
        else:
            problems.append("it has no config.json (save the model with `save_pretrained` first)")
        weights = ["model.safetensors"] if "model.safetensors" in names else []
        if not weights and "model.safetensors.index.json" in names:
            index = _read_json(folder / "model.safetensors.index.json", problems)
            shards = (index or {}).get("weight_map")
            shards = sorted({str(shard) for shard in shards.values()}) if isinstance(shards, dict) else []
            if missing := [shard for shard in shards if shard not in names]:
                problems.append(f"shard(s) named in model.safetensors.index.json are missing: {', '.join(missing)}")
            elif index is not None and not shards:
                problems.append("its model.safetensors.index.json lists no shards in a `weight_map`")
            weights = [shard for shard in shards if shard in names]
        elif not weights:
            problems.append(
                "it has no safetensors weights (model.safetensors, or a sharded checkpoint with "
                "model.safetensors.index.json; pickled files such as pytorch_model.bin are never uploaded: save the "
                "model with `save_pretrained`, which writes safetensors)"
            )
    problems += [
        f"{name} is not a valid safetensors file: {e}" for name in weights if (e := safetensors_problem(folder / name))
    ]
    if problems:
        raise ModelFolderError(f"Cannot upload {where}: " + "; ".join(problems) + ".")

    if "README.md" not in names:
        notes.append(
            f"{where} has no README.md (model card): the Hub page will be empty. Write one with "
            "ceit_hf.model_card.training_card (trained models) or variant_card (official variants)."
        )
    if "preprocessor_config.json" not in names:
        notes.append(f"{where} has no preprocessor_config.json: AutoImageProcessor will not load from the repo.")
    if config is not None:
        if config.get("model_type") != "ceit":
            notes.append(f"config.json has model_type={config.get('model_type')!r}, not 'ceit'.")
        if not isinstance(auto_map := config.get("auto_map"), dict) or not auto_map:
            notes.append(
                "config.json has no auto_map: the model will not load with trust_remote_code=True from the Hub "
                "(register the classes for the Auto API before save_pretrained)."
            )
        elif missing_code := sorted(_auto_map_modules(auto_map) - names):
            notes.append(f"auto_map in config.json refers to code files missing from the folder: {missing_code}")
    check = FolderCheck(folder=folder.resolve(), files=files, skipped=skipped, warnings=notes, adapter=adapter)
    if adapter:
        _prepare_adapter(check, adapter_config, base_model_id)
    return check


def push_model_folder(
    model_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    commit_message: str | None = None,
    revision: str | None = None,
    token: str | None = None,
    endpoint: str | None = None,
    dry_run: bool = False,
    base_model_id: str | None = None,
    log: Callable[[str], None] = print,
) -> PushResult:
    """Check `model_dir` (non-fatal problems as `UserWarning`s) and upload it to `repo_id` on branch `revision`, both
    created if needed; `dry_run` logs the files and sends nothing. `endpoint` defaults to `HF_ENDPOINT` as set now."""
    check = check_model_folder(model_dir, base_model_id=base_model_id)
    for note in check.warnings:
        warnings.warn(note, UserWarning, stacklevel=2)
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")
    branch = revision if revision and revision != constants.DEFAULT_REVISION else None
    target, tree = (f"{repo_id} (branch {branch})", f"/tree/{branch}") if branch else (repo_id, "")
    if dry_run:
        log(f"Dry run: files of {check.folder} that would be uploaded to {target}:")
        log(format_file_list(check.files))
        for line in check.summary(rewritten=False):  # the list above has their notes
            log(line)
        for reason in dict.fromkeys(f.note for f in check.skipped):
            log(f"Skipped ({reason}):")
            log(format_file_list([f for f in check.skipped if f.note == reason], notes=False))
        log(f"Nothing was uploaded. Model repository would be: {endpoint}/{repo_id}{tree}")
        return PushResult(repo_id, f"{endpoint}/{repo_id}", check.files, True, branch)

    if constants.is_offline_mode():
        raise PushError("huggingface_hub is in offline mode (HF_HUB_OFFLINE is set): unset it to upload.")
    if not (token := token or get_token()):
        raise PushError("No Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access).")
    api = HfApi(endpoint=endpoint, token=token)
    repo_url = api.create_repo(repo_id, private=True if private else None, exist_ok=True)
    repo_id = repo_url.repo_id or repo_id  # the server may complete a bare name with the user's namespace
    if branch:
        api.create_branch(repo_id, branch=branch, exist_ok=True)
    log(f"Uploading {len(check.files)} file(s), {format_size(check.total_size)}, from {check.folder} to {target}")
    for line in check.summary():
        log(line)
    options = {"commit_message": commit_message or "Upload CeiT model with ceit_hf", "revision": branch}
    if check.adapter:  # an explicit file list: without merged/, with the modified copies
        add = [
            CommitOperationAdd(f.path_in_repo, check.contents.get(f.path_in_repo) or check.folder / f.path_in_repo)
            for f in check.files
        ]
        commit = api.create_commit(repo_id, add, **options)
    else:  # upload_folder streams large folders in several commits when hf_xet is installed
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=check.folder, ignore_patterns=list(SKIP_PATTERNS), **options
        )
    log(f"Committed {commit.oid}: {commit.commit_url}")
    log(f"Model repository: {repo_url}{tree}")
    return PushResult(repo_id, str(repo_url), check.files, False, branch, commit.commit_url)
