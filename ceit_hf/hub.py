# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Publish a converted or fine-tuned CeiT model folder on the Hugging Face Hub.

`push_model_folder` checks the folder (config, safetensors weights, model card), skips Trainer checkpoints and
pickles (`SKIP_PATTERNS`), then calls
`HfApi.create_repo(..., exist_ok=True)` and `HfApi.upload_folder`. A PEFT adapter folder (`train.py --lora_rank`) is
uploaded without the models inside it (`merged/`), and with its base model named by a Hub id when one is known
(`base_model_id`, else the card of the local base folder): its `adapter_config.json` and card are then uploaded as
modified copies, in one `HfApi.create_commit`. ONNX exports (`onnx/model.onnx`) are uploaded and listed as such.
Authentication is huggingface_hub's own: the
`token` argument, else `HF_TOKEN`, else the token saved by `hf auth login`. The endpoint is the `endpoint`
argument, else `HF_ENDPOINT` (read when the function runs), else huggingface_hub's default.

`scripts/push_to_hub.py` is the command-line front end.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import DEFAULT_IGNORE_PATTERNS, filter_repo_objects, get_token, validate_repo_id

from .model_card import adapter_card_for_upload, card_repo_id


CONFIG_NAME = "config.json"
MODEL_CARD_NAME = "README.md"
SAFE_WEIGHTS_NAME = "model.safetensors"
SAFE_WEIGHTS_INDEX_NAME = "model.safetensors.index.json"
PREPROCESSOR_NAME = "preprocessor_config.json"
# Extensions of files written with Python's pickle (torch.save, Trainer's training_args.bin, ...). Loading a pickle
# can run arbitrary code, so they are never published.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")
# What a training output folder holds that a model repository must not: Trainer's checkpoints (optimizer state,
# RNG states) and pickles such as `training_args.bin`. Skipped by `upload_folder(ignore_patterns=...)`.
SKIP_PATTERNS = ["checkpoint-*", *(f"*{suffix}" for suffix in PICKLE_SUFFIXES)]
SKIP_REASON = f"Trainer checkpoints and pickles, {', '.join(SKIP_PATTERNS)}"
# A sub-folder holding one of these is a model of its own (train.py --merge_lora writes OUTPUT/merged/).
MODEL_FILE_NAMES = ("config.json", "model.safetensors", "model.safetensors.index.json", "adapter_config.json")
ONNX_NOTE = "ONNX export"
DEFAULT_COMMIT_MESSAGE = "Upload CeiT model with ceit_hf"


class ModelFolderError(ValueError):
    """The folder cannot be published as it is (missing config or weights, pickled files, ...)."""


class PushError(RuntimeError):
    """The upload cannot start: no token, or huggingface_hub is in offline mode."""


@dataclass(frozen=True)
class FileToUpload:
    path_in_repo: str
    size: int
    note: str = ""  # why the file is skipped, or what it is / what the upload changes in it


def _is_onnx(path_in_repo: str) -> bool:
    name = path_in_repo.rsplit("/", 1)[-1]
    return name.endswith(".onnx") or ".onnx_data" in name or ".onnx.data" in name


@dataclass
class FolderCheck:
    """What `check_model_folder` found: the files `upload_folder` will send, and non-fatal problems."""

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
        """Lines that name what the upload includes beyond the model: ONNX exports, and the files uploaded as
        modified copies (`rewritten`)."""
        onnx = [f for f in self.files if f.note == ONNX_NOTE]
        lines = [f"Including ONNX export {f.path_in_repo} ({format_size(f.size)})" for f in onnx]
        if rewritten:
            lines += [f"{f.path_in_repo}: {f.note}" for f in self.files if f.path_in_repo in self.contents]
        return lines


@dataclass
class PushResult:
    repo_id: str
    repo_url: str
    files: list[FileToUpload]
    dry_run: bool
    revision: str | None = None
    commit_url: str | None = None


def format_size(num_bytes: int) -> str:
    size = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{num_bytes} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def format_file_list(files: list[FileToUpload], notes: bool = True) -> str:
    """One line per file (size right-aligned, the path in the repository, its note), and a total."""
    lines = [
        f"{format_size(f.size):>12}  {f.path_in_repo}" + (f"  ({f.note})" if notes and f.note else "") for f in files
    ]
    lines.append(f"{len(files)} file(s), {format_size(sum(f.size for f in files))} in total")
    return "\n".join(lines)


def list_folder_files(folder: str | os.PathLike) -> tuple[list[FileToUpload], list[FileToUpload]]:
    """(the files `HfApi.upload_folder` sends for `folder` with `ignore_patterns=SKIP_PATTERNS`, the files those
    patterns skip), sorted, with their sizes; `.git/` and `.cache/huggingface/` are left out of both as upload_folder
    always does."""
    folder = Path(folder).expanduser().resolve()
    paths = {path.relative_to(folder).as_posix(): path for path in sorted(folder.glob("**/*")) if path.is_file()}
    listed = list(filter_repo_objects(list(paths), ignore_patterns=list(DEFAULT_IGNORE_PATTERNS)))
    kept = set(filter_repo_objects(listed, ignore_patterns=SKIP_PATTERNS))
    size = lambda name: paths[name].stat().st_size  # noqa: E731
    return (
        [FileToUpload(n, size(n), ONNX_NOTE if _is_onnx(n) else "") for n in listed if n in kept],
        [FileToUpload(n, size(n), SKIP_REASON) for n in listed if n not in kept],
    )


def safetensors_problem(path: str | os.PathLike) -> str | None:
    """None if `path` is a readable safetensors file (its header parses and its tensors fit in the file), else what
    safetensors says is wrong (truncated, damaged, a Git LFS pointer, ...)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy"):
            return None
    except Exception as error:  # safetensors raises its own SafetensorError, and OSError for unreadable files
        return str(error) or type(error).__name__


def _auto_map_modules(auto_map: dict) -> set[str]:
    modules = set()
    for reference in auto_map.values():
        if isinstance(reference, dict):  # one class per image processor backend
            reference = list(reference.values())
        for item in reference if isinstance(reference, list) else [reference]:
            if isinstance(item, str) and "--" not in item and "." in item:
                modules.add(item.rsplit(".", 1)[0] + ".py")
    return modules


ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"


def hub_id_of_base(base_model: str | None) -> str | None:
    """The Hub repository of the base model an adapter_config.json names: the name itself when it is a Hub id (no
    folder here), the repository named in the card (README.md) of a local base folder, else None."""
    if not base_model:
        return None
    path = Path(base_model).expanduser()
    if path.is_dir():
        card = path / MODEL_CARD_NAME
        return card_repo_id(card.read_text(encoding="utf-8")) if card.is_file() else None
    return None if path.is_absolute() or path.exists() or not _is_repo_id(base_model) else base_model


def _is_repo_id(name: str, namespace: bool = False) -> bool:
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return "/" in name or not namespace


def _adapter_problems(folder: Path, names: set[str], base_model_id: str | None) -> list[str]:
    """What keeps an adapter folder (or a folder given a `base_model_id`) from being uploaded."""
    if ADAPTER_CONFIG_NAME not in names:
        return [f"--base_model_id names the base model of a LoRA adapter, but it has no {ADAPTER_CONFIG_NAME}"]
    problems = []
    if ADAPTER_WEIGHTS_NAME not in names:
        problems.append(f"it has {ADAPTER_CONFIG_NAME} but no {ADAPTER_WEIGHTS_NAME} (the adapter weights)")
    try:
        if not isinstance(json.loads((folder / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8")), dict):
            problems.append(f"its {ADAPTER_CONFIG_NAME} is not a JSON object")
    except (OSError, ValueError) as error:
        problems.append(f"its {ADAPTER_CONFIG_NAME} is not valid JSON ({error})")
    if base_model_id and not _is_repo_id(base_model_id, namespace=True):
        problems.append(f"--base_model_id {base_model_id!r} is no Hub repository id: expected 'namespace/name'")
    return problems


def _nested_model_folders(files: list[FileToUpload]) -> list[str]:
    """The top-most sub-folders (of the paths in `files`) that hold a model of their own, such as `merged/`."""
    folders = sorted(
        {
            f.path_in_repo.rsplit("/", 1)[0]
            for f in files
            if "/" in f.path_in_repo and f.path_in_repo.rsplit("/", 1)[1] in MODEL_FILE_NAMES
        }
    )
    return [name for name in folders if not any(name.startswith(f"{other}/") for other in folders)]


def _prepare_adapter(check: FolderCheck, base_model_id: str | None) -> None:
    """What uploading an adapter folder changes: the models inside it skipped, its base model named by its Hub id in
    adapter_config.json and the card (modified copies; the folder stays as it is), or a warning when none is known."""
    for nested in _nested_model_folders(check.files):
        reason = (
            f"{nested}/ holds another model, such as the merged model of train.py --merge_lora: publish it as a "
            f"repository of its own, scripts/push_to_hub.py --model_dir {check.folder / nested} "
            "--repo_id NAMESPACE/NAME"
        )
        inside = [f for f in check.files if f.path_in_repo.startswith(f"{nested}/")]
        check.files = [f for f in check.files if f not in inside]
        check.skipped += [FileToUpload(f.path_in_repo, f.size, reason) for f in inside]
    config = json.loads((check.folder / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8"))
    check.base_model = config.get("base_model_name_or_path")
    check.base_model_id = base_model_id or hub_id_of_base(check.base_model)
    if check.base_model is None and check.base_model_id is None:
        check.warnings.append(
            f"{ADAPTER_CONFIG_NAME} names no base model: give its Hub repository with --base_model_id NAMESPACE/NAME."
        )
    elif check.base_model_id is None:
        check.warnings.append(
            f"{ADAPTER_CONFIG_NAME} names the base model {check.base_model!r}, a local folder that people who "
            "download the adapter do not have (and no Hub repository is named in its card): give the base model's "
            "Hub repository with --base_model_id NAMESPACE/NAME. The uploaded card says which base model it needs."
        )
    if check.base_model_id and check.base_model_id != check.base_model:
        config["base_model_name_or_path"] = check.base_model_id
        check.contents[ADAPTER_CONFIG_NAME] = (json.dumps(config, indent=2) + "\n").encode()
    card = check.folder / MODEL_CARD_NAME
    if card.is_file():
        text = card.read_text(encoding="utf-8")
        uploaded = adapter_card_for_upload(text, check.base_model, check.base_model_id)
        if uploaded != text:
            check.contents[MODEL_CARD_NAME] = uploaded.encode()
    notes = {
        ADAPTER_CONFIG_NAME: f"base_model_name_or_path set to {check.base_model_id} in the upload",
        MODEL_CARD_NAME: f"uploaded naming the base model {check.base_model_id or check.base_model}",
    }
    check.files = [
        FileToUpload(f.path_in_repo, len(check.contents[f.path_in_repo]), notes[f.path_in_repo])
        if f.path_in_repo in check.contents
        else f
        for f in check.files
    ]


def check_model_folder(model_dir: str | os.PathLike, base_model_id: str | None = None) -> FolderCheck:  # noqa: C901
    """Check that `model_dir` can be published as a transformers model.

    Raises `ModelFolderError` when the folder is missing, has no (valid) `config.json`, has no safetensors weights
    (`model.safetensors`, or `model.safetensors.index.json` with all its shards). A PEFT adapter folder
    (`adapter_config.json` + `adapter_model.safetensors`, as `train.py --lora_rank` writes) is accepted without the
    models inside it (`merged/`), and with its base model named by the Hub id `base_model_id` (default: the one
    adapter_config.json or the local base folder's card names), see `FolderCheck.contents`.
    Trainer checkpoints and pickles are listed in `FolderCheck.skipped` and never uploaded. Problems
    that do not block the upload (no model card, no image processor, no remote-code mapping) are returned in
    `FolderCheck.warnings`.
    """
    folder = Path(model_dir).expanduser()
    if not folder.exists():
        raise ModelFolderError(f"Model folder {str(folder)!r} does not exist.")
    if not folder.is_dir():
        raise ModelFolderError(f"{str(folder)!r} is not a folder: pass the directory written by save_pretrained.")
    files, skipped = list_folder_files(folder)
    names = {f.path_in_repo for f in files}
    problems: list[str] = []
    notes: list[str] = []

    config = None
    # A PEFT adapter folder (train.py --lora_rank): adapter_config.json + adapter_model.safetensors, no model config.
    adapter = ADAPTER_CONFIG_NAME in names
    if adapter or base_model_id:
        problems += _adapter_problems(folder, names, base_model_id)
    if not adapter and CONFIG_NAME not in names:
        problems.append(f"it has no {CONFIG_NAME} (save the model with `save_pretrained` first)")
    elif not adapter:
        try:
            config = json.loads((folder / CONFIG_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError) as error:
            problems.append(f"its {CONFIG_NAME} is not valid JSON ({error})")
        else:
            if not isinstance(config, dict):
                problems.append(f"its {CONFIG_NAME} is not a JSON object")
                config = None

    if adapter:
        weight_files = [ADAPTER_WEIGHTS_NAME] if ADAPTER_WEIGHTS_NAME in names else []
    elif SAFE_WEIGHTS_NAME in names:
        weight_files = [SAFE_WEIGHTS_NAME]
    elif SAFE_WEIGHTS_INDEX_NAME in names:
        weight_files = []
        try:
            index = json.loads((folder / SAFE_WEIGHTS_INDEX_NAME).read_text(encoding="utf-8"))
            shards = sorted(set(index["weight_map"].values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as error:
            problems.append(f"its {SAFE_WEIGHTS_INDEX_NAME} has no readable `weight_map` ({error!r})")
        else:
            missing = [shard for shard in shards if shard not in names]
            if missing:
                problems.append(f"shard(s) named in {SAFE_WEIGHTS_INDEX_NAME} are missing: {', '.join(missing)}")
            elif not shards:
                problems.append(f"its {SAFE_WEIGHTS_INDEX_NAME} lists no shards")
            weight_files = [shard for shard in shards if shard in names]
    else:
        weight_files = []
        problems.append(
            f"it has no safetensors weights ({SAFE_WEIGHTS_NAME}, or a sharded checkpoint with "
            f"{SAFE_WEIGHTS_INDEX_NAME}; pickled files such as pytorch_model.bin are never uploaded: save the model "
            "with `save_pretrained`, which writes safetensors)"
        )
    for name in weight_files:
        error = safetensors_problem(folder / name)
        if error:
            problems.append(f"{name} is not a valid safetensors file: {error}")

    if problems:
        raise ModelFolderError(f"Cannot upload {str(folder)!r}: " + "; ".join(problems) + ".")

    if MODEL_CARD_NAME not in names:
        notes.append(
            f"{str(folder)!r} has no {MODEL_CARD_NAME} (model card): the Hub page will be empty. Write one with "
            "ceit_hf.model_card.render_template (fine-tuned models) or variant_card (official variants)."
        )
    if PREPROCESSOR_NAME not in names:
        notes.append(f"{str(folder)!r} has no {PREPROCESSOR_NAME}: AutoImageProcessor will not load from the repo.")
    if config is not None:
        if config.get("model_type") != "ceit":
            notes.append(f"{CONFIG_NAME} has model_type={config.get('model_type')!r}, not 'ceit'.")
        auto_map = config.get("auto_map")
        if not isinstance(auto_map, dict) or not auto_map:
            notes.append(
                f"{CONFIG_NAME} has no auto_map: the model will not load with trust_remote_code=True from the Hub "
                "(register the classes for the Auto API before save_pretrained)."
            )
        else:
            missing_code = sorted(_auto_map_modules(auto_map) - names)
            if missing_code:
                notes.append(f"auto_map in {CONFIG_NAME} refers to code files missing from the folder: {missing_code}")
    check = FolderCheck(folder=folder.resolve(), files=files, skipped=skipped, warnings=notes, adapter=adapter)
    if adapter:
        _prepare_adapter(check, base_model_id)
    return check


def resolve_endpoint(endpoint: str | None = None) -> str:
    """`endpoint`, else `HF_ENDPOINT` as set now, else huggingface_hub's configured endpoint."""
    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


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
    """Check `model_dir` and upload it to the model repository `repo_id` (created if needed).

    `private` applies only when the repository is created. `revision` names a branch, created from `main` if it
    does not exist. With `dry_run=True` the files that would be uploaded are logged and nothing is sent.
    `base_model_id` names the Hub repository of an adapter folder's base model. Non-fatal problems of the folder
    are issued as `UserWarning`s.
    """
    check = check_model_folder(model_dir, base_model_id=base_model_id)
    for note in check.warnings:
        warnings.warn(note, UserWarning, stacklevel=2)
    endpoint = resolve_endpoint(endpoint)
    branch = revision if revision and revision != constants.DEFAULT_REVISION else None
    target = f"{repo_id}" + (f" (branch {branch})" if branch else "")

    if dry_run:
        url = f"{endpoint}/{repo_id}" + (f"/tree/{branch}" if branch else "")
        log(f"Dry run: files of {check.folder} that would be uploaded to {target}:")
        log(format_file_list(check.files))
        for line in check.summary(rewritten=False):  # the list above has their notes
            log(line)
        for reason in dict.fromkeys(f.note for f in check.skipped):
            log(f"Skipped ({reason}):")
            log(format_file_list([f for f in check.skipped if f.note == reason], notes=False))
        log(f"Nothing was uploaded. Model repository would be: {url}")
        return PushResult(repo_id, f"{endpoint}/{repo_id}", check.files, dry_run=True, revision=branch)

    if constants.is_offline_mode():
        raise PushError("huggingface_hub is in offline mode (HF_HUB_OFFLINE is set): unset it to upload.")
    token = token or get_token()
    if not token:
        raise PushError("No Hugging Face token: set HF_TOKEN or run `hf auth login` (a token with write access).")

    api = HfApi(endpoint=endpoint, token=token)
    repo_url = api.create_repo(repo_id, private=True if private else None, exist_ok=True, repo_type="model")
    repo_id = repo_url.repo_id or repo_id  # the server may complete a bare name with the user's namespace
    if branch:
        api.create_branch(repo_id, branch=branch, exist_ok=True, repo_type="model")
    log(f"Uploading {len(check.files)} file(s), {format_size(check.total_size)}, from {check.folder} to {target}")
    for line in check.summary():
        log(line)
    if check.adapter:  # an explicit file list: without merged/, with the modified copies
        operations = [
            CommitOperationAdd(f.path_in_repo, check.contents.get(f.path_in_repo) or check.folder / f.path_in_repo)
            for f in check.files
        ]
        commit = api.create_commit(
            repo_id,
            operations,
            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
            revision=branch,
            repo_type="model",
        )
    else:
        commit = api.upload_folder(
            repo_id=repo_id,
            folder_path=check.folder,
            repo_type="model",
            revision=branch,
            commit_message=commit_message or DEFAULT_COMMIT_MESSAGE,
            ignore_patterns=SKIP_PATTERNS,
        )
    url = str(repo_url) + (f"/tree/{branch}" if branch else "")
    log(f"Committed {commit.oid}: {commit.commit_url}")
    log(f"Model repository: {url}")
    return PushResult(
        repo_id, str(repo_url), check.files, dry_run=False, revision=branch, commit_url=commit.commit_url
    )


__all__ = [
    "FileToUpload",
    "FolderCheck",
    "ModelFolderError",
    "PushError",
    "PushResult",
    "check_model_folder",
    "hub_id_of_base",
    "safetensors_problem",
    "format_file_list",
    "list_folder_files",
    "push_model_folder",
    "resolve_endpoint",
]
