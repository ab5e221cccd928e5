# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Hub remote code: a saved CeiT folder carries its code and `auto_map`, and loads with `trust_remote_code=True` in a
Python where `ceit_hf` cannot be imported, giving exactly the outputs of the original model. Offline."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CODE_FILES, IMAGE_PROCESSOR_MAP, MODEL_AUTO_MAP
from PIL import Image
from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification

import ceit_hf
from ceit_hf import (
    CeiTConfig,
    CeiTForImageClassification,
    CeiTImageProcessor,
    CeiTImageProcessorPil,
    CeiTModel,
)
from ceit_hf.hub import check_model_folder


REPO_ROOT = Path(__file__).resolve().parents[2]
PACKAGE_DIR = Path(ceit_hf.__file__).resolve().parent
EXPECTED_AUTO_MAP = MODEL_AUTO_MAP


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A small CeiT (one block, two labels) and its processor, saved with save_pretrained; a fixed input."""
    root = tmp_path_factory.mktemp("remote")
    folder = root / "model"
    config = CeiTConfig.from_preset("ceit_tiny_patch16_224", num_encoder_blocks=1, id2label={0: "cat", 1: "dog"})
    torch.manual_seed(0)
    model = CeiTForImageClassification(config).eval()
    with torch.no_grad():  # non-trivial BatchNorm statistics, so that they are checked too
        for name, buffer in model.named_buffers():
            if name.endswith(("running_mean", "running_var")):
                buffer.uniform_(0.5, 1.5)
    model.save_pretrained(folder)
    CeiTImageProcessor().save_pretrained(folder)

    generator = torch.Generator().manual_seed(1)
    pixel_values = torch.randn(2, 3, 224, 224, generator=generator)
    np.save(root / "pixels.npy", pixel_values.numpy())
    image = Image.fromarray(torch.randint(0, 256, (250, 300, 3), generator=generator, dtype=torch.uint8).numpy())
    image.save(root / "image.png")
    with torch.no_grad():
        logits = model(pixel_values).logits
    return {
        "root": root,
        "folder": folder,
        "model": model,
        "pixel_values": pixel_values,
        "logits": logits,
        "image": image,
    }


# --------------------------------------------------------------------------------------------- the saved folder


def test_saved_folder_carries_code_and_auto_map(saved):
    folder = saved["folder"]
    names = {path.name for path in folder.iterdir()}
    assert set(CODE_FILES) <= names
    for name in CODE_FILES:
        assert (folder / name).read_bytes() == (PACKAGE_DIR / name).read_bytes()
    config = json.loads((folder / "config.json").read_text())
    assert config["auto_map"] == EXPECTED_AUTO_MAP
    assert config["model_type"] == "ceit" and config["id2label"] == {"0": "cat", "1": "dog"}
    preprocessor = json.loads((folder / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"] == {"AutoImageProcessor": IMAGE_PROCESSOR_MAP}
    # The Hub upload check finds every module the auto_map names.
    assert not [note for note in check_model_folder(folder).warnings if "auto_map" in note]


def test_saving_the_pil_processor_alone_writes_the_same_auto_map(tmp_path):
    CeiTImageProcessorPil().save_pretrained(tmp_path)
    assert {p.name for p in tmp_path.iterdir()} == {"preprocessor_config.json", "image_processing_ceit.py"}
    preprocessor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"] == {"AutoImageProcessor": IMAGE_PROCESSOR_MAP}
    # transformers records the processor's base name; the backend is chosen when loading.
    assert preprocessor["image_processor_type"] == "CeiTImageProcessor"
    assert type(AutoImageProcessor.from_pretrained(tmp_path, backend="pil")) is CeiTImageProcessorPil


# ------------------------------------------------------------------------------ loading where ceit_hf is absent

REMOTE_SCRIPT = textwrap.dedent(
    """
    import sys
    sys.modules["ceit_hf"] = None  # `import ceit_hf` raises ImportError from here on
    import json
    from pathlib import Path

    import numpy as np
    import torch
    from PIL import Image
    from transformers import AutoConfig, AutoImageProcessor, AutoModel, AutoModelForImageClassification, pipeline

    folder, work = Path(sys.argv[1]), Path(sys.argv[2])
    report = {"sys_path": sys.path}
    try:
        import ceit_hf  # noqa: F401
        report["ceit_hf_importable"] = True
    except ImportError:
        report["ceit_hf_importable"] = False

    config = AutoConfig.from_pretrained(folder, trust_remote_code=True)
    model = AutoModelForImageClassification.from_pretrained(folder, trust_remote_code=True).eval()
    base = AutoModel.from_pretrained(folder, trust_remote_code=True).eval()
    processor = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True)
    processor_pil = AutoImageProcessor.from_pretrained(folder, trust_remote_code=True, backend="pil")
    report["classes"] = {
        name: f"{type(obj).__module__}.{type(obj).__name__}"
        for name, obj in [("config", config), ("model", model), ("base", base), ("processor", processor),
                          ("processor_pil", processor_pil)]
    }
    report["id2label"] = {str(k): v for k, v in model.config.id2label.items()}

    pixel_values = torch.from_numpy(np.load(work / "pixels.npy"))
    image = Image.open(work / "image.png")
    with torch.no_grad():
        np.save(work / "logits.npy", model(pixel_values).logits.numpy())
        np.save(work / "pooled.npy", base(pixel_values).pooler_output.numpy())
    np.save(work / "processed.npy", processor(image, return_tensors="pt")["pixel_values"].numpy())
    np.save(work / "processed_pil.npy", processor_pil(image, return_tensors="np")["pixel_values"])

    report["pipeline"] = pipeline("image-classification", model=str(folder), trust_remote_code=True)(image)

    # Re-saving the remote-code objects: the code travels along.
    model.save_pretrained(work / "resaved")
    processor.save_pretrained(work / "resaved")
    model.save_pretrained(work / "model_only")  # its loader never fetched image_processing_ceit.py
    resaved = AutoModelForImageClassification.from_pretrained(work / "resaved", trust_remote_code=True).eval()
    model_only = AutoModelForImageClassification.from_pretrained(work / "model_only", trust_remote_code=True).eval()
    with torch.no_grad():
        np.save(work / "logits_resaved.npy", resaved(pixel_values).logits.numpy())
        np.save(work / "logits_model_only.npy", model_only(pixel_values).logits.numpy())
    report["resaved_processor"] = type(AutoImageProcessor.from_pretrained(work / "resaved", trust_remote_code=True,
                                                                         backend="pil")).__name__

    report["real_ceit_hf_modules"] = sorted(
        name for name, module in sys.modules.items()
        if module is not None and (name == "ceit_hf" or name.startswith("ceit_hf."))
    )
    report["ceit_hf_entry"] = repr(sys.modules.get("ceit_hf", "absent"))
    (work / "report.json").write_text(json.dumps(report))
    """
)


@pytest.fixture(scope="module")
def remote(saved):
    """Runs REMOTE_SCRIPT in a fresh interpreter: cwd a temporary folder, its own module cache, no repo on the path."""
    root = saved["root"]
    work = root / "work"
    work.mkdir()
    for name in ("pixels.npy", "image.png"):
        os.replace(root / name, work / name)
    script = root / "remote_load.py"
    script.write_text(REMOTE_SCRIPT)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME") and not k.startswith("HF_")}
    env.update(HF_MODULES_CACHE=str(root / "modules_cache"), HF_HUB_OFFLINE="1", HF_HUB_DISABLE_PROGRESS_BARS="1")
    completed = subprocess.run(
        [sys.executable, str(script), str(saved["folder"]), str(work)],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-5000:]
    report = json.loads((work / "report.json").read_text())
    return {"work": work, "report": report, "modules_cache": root / "modules_cache"}


def test_remote_code_loads_without_ceit_hf(remote):
    report = remote["report"]
    assert report["ceit_hf_importable"] is False
    assert report["real_ceit_hf_modules"] == [] and report["ceit_hf_entry"] == "None"
    assert all(Path(entry or ".").resolve() != REPO_ROOT for entry in report["sys_path"])  # cwd: a temp folder
    expected = {
        "config": "configuration_ceit.CeiTConfig",
        "model": "modeling_ceit.CeiTForImageClassification",
        "base": "modeling_ceit.CeiTModel",
        "processor": "image_processing_ceit.CeiTImageProcessor",
        "processor_pil": "image_processing_ceit.CeiTImageProcessorPil",
    }
    for name, suffix in expected.items():
        assert report["classes"][name].startswith("transformers_modules."), report["classes"][name]
        assert report["classes"][name].endswith(suffix)
    assert report["id2label"] == {"0": "cat", "1": "dog"}
    # The code was imported from the module cache the test chose, not from anywhere else.
    assert any(remote["modules_cache"].rglob("modeling_ceit.py"))


def test_remote_code_outputs_equal_the_original_model(saved, remote):
    work, model = remote["work"], saved["model"]
    logits = torch.from_numpy(np.load(work / "logits.npy"))
    assert torch.equal(logits, saved["logits"])
    with torch.no_grad():
        pooled = CeiTModel.from_pretrained(saved["folder"]).eval()(saved["pixel_values"]).pooler_output
    assert torch.equal(torch.from_numpy(np.load(work / "pooled.npy")), pooled)
    for name in ("logits_resaved.npy", "logits_model_only.npy"):
        assert torch.equal(torch.from_numpy(np.load(work / name)), saved["logits"]), name
    assert model.config.id2label == {0: "cat", 1: "dog"}


def test_remote_processors_equal_the_local_ones(saved, remote):
    work, image = remote["work"], Image.open(remote["work"] / "image.png")
    local = CeiTImageProcessor()(image, return_tensors="pt")["pixel_values"].numpy()
    local_pil = CeiTImageProcessorPil()(image, return_tensors="np")["pixel_values"]
    assert local.shape == (1, 3, 224, 224)
    np.testing.assert_array_equal(np.load(work / "processed.npy"), local)
    np.testing.assert_array_equal(np.load(work / "processed_pil.npy"), local_pil)


def test_remote_pipeline_returns_the_folder_labels(saved, remote):
    predictions = remote["report"]["pipeline"]
    assert {p["label"] for p in predictions} == {"cat", "dog"}
    assert sum(p["score"] for p in predictions) == pytest.approx(1.0, abs=1e-5)
    with torch.no_grad():
        image = Image.open(remote["work"] / "image.png")
        pixel_values = CeiTImageProcessor()(image, return_tensors="pt")["pixel_values"]
        probabilities = saved["model"](pixel_values).logits.softmax(-1)[0]
    assert predictions[0]["label"] == saved["model"].config.id2label[int(probabilities.argmax())]
    assert predictions[0]["score"] == pytest.approx(float(probabilities.max()), abs=1e-5)


def test_folder_resaved_from_remote_code_carries_code_and_auto_map(remote):
    resaved = remote["work"] / "resaved"
    names = {path.name for path in resaved.iterdir()}
    assert set(CODE_FILES) <= names and "model.safetensors" in names
    for name in CODE_FILES:  # the code that travelled is the package's code, unchanged
        assert (resaved / name).read_bytes() == (PACKAGE_DIR / name).read_bytes()
    # The model was saved before the processor: when config.json was written, image_processing_ceit.py was not in
    # the folder yet (the model's loader never fetched it), so config.json names the model code only; the image
    # processor's own entry is in preprocessor_config.json, where AutoImageProcessor looks first.
    model_entries = {key: value for key, value in EXPECTED_AUTO_MAP.items() if key != "AutoImageProcessor"}
    assert json.loads((resaved / "config.json").read_text())["auto_map"] == model_entries
    preprocessor = json.loads((resaved / "preprocessor_config.json").read_text())
    assert preprocessor["auto_map"] == {"AutoImageProcessor": IMAGE_PROCESSOR_MAP}
    assert remote["report"]["resaved_processor"] == "CeiTImageProcessorPil"
    assert not [note for note in check_model_folder(resaved).warnings if "auto_map" in note]


def test_model_resaved_alone_from_remote_code_names_only_present_code(remote):
    # The model's loader fetched configuration_ceit.py and modeling_ceit.py only; the saved auto_map must not name
    # image_processing_ceit.py, which is not there.
    folder = remote["work"] / "model_only"
    names = {path.name for path in folder.iterdir()}
    assert names == {"config.json", "model.safetensors", "configuration_ceit.py", "modeling_ceit.py"}
    auto_map = json.loads((folder / "config.json").read_text())["auto_map"]
    assert auto_map == {key: value for key, value in EXPECTED_AUTO_MAP.items() if key != "AutoImageProcessor"}
    assert not [note for note in check_model_folder(folder).warnings if "auto_map" in note]


# ---------------------------------------------------------------------------------------------- local code wins


def test_local_classes_win_without_trust_remote_code(saved):
    folder = saved["folder"]
    assert type(AutoConfig.from_pretrained(folder)) is CeiTConfig
    model = AutoModelForImageClassification.from_pretrained(folder)
    assert type(model) is CeiTForImageClassification
    assert type(AutoModel.from_pretrained(folder)) is CeiTModel
    assert type(AutoImageProcessor.from_pretrained(folder)) is CeiTImageProcessor
    assert type(AutoImageProcessor.from_pretrained(folder, backend="pil")) is CeiTImageProcessorPil
    with torch.no_grad():
        assert torch.equal(model.eval()(saved["pixel_values"]).logits, saved["logits"])


# ------------------------------------------------------------------------------------ what the code files import

# huggingface_hub: a requirement of transformers itself (its configs import `strict` from it)
THIRD_PARTY_ALLOWED = {"torch", "numpy", "transformers", "huggingface_hub"}
OPTIONAL = {"PIL", "torchvision"}  # only behind an ImportError guard or an availability check


def _parents(tree: ast.AST) -> dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _is_guarded(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    """Whether `node` sits in the body of a `try` that catches ImportError, or under an `if is_..._available()`."""
    child, parent = node, parents.get(node)
    while parent is not None:
        if isinstance(parent, ast.Try) and child in parent.body:
            caught = set()
            for handler in parent.handlers:
                types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
                caught |= {t.id for t in types if isinstance(t, ast.Name)}
                caught |= {"bare"} if handler.type is None else set()
            if caught & {"ImportError", "ModuleNotFoundError", "Exception", "bare"}:
                return True
        if isinstance(parent, ast.If) and child in parent.body:
            calls = [n for n in ast.walk(parent.test) if isinstance(n, ast.Call)]
            names = [getattr(c.func, "id", getattr(c.func, "attr", "")) for c in calls]
            if any(name.startswith("is_") and name.endswith("_available") for name in names):
                return True
        child, parent = parent, parents.get(parent)
    return False


@pytest.mark.parametrize("filename", CODE_FILES)
def test_code_file_imports_only_what_remote_code_may_use(filename):
    source = (PACKAGE_DIR / filename).read_text(encoding="utf-8")
    tree = ast.parse(source, filename)
    parents = _parents(tree)
    siblings = {name[: -len(".py")] for name in CODE_FILES}
    problems, seen = [], set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            if node.level != 1 or node.module not in siblings:
                problems.append(f"line {node.lineno}: relative import {'.' * node.level}{node.module or ''}")
            continue
        if isinstance(node, ast.ImportFrom):
            roots = [node.module.split(".")[0]]
        elif isinstance(node, ast.Import):
            roots = [alias.name.split(".")[0] for alias in node.names]
        else:
            continue
        for root in roots:
            seen.add(root)
            if root in sys.stdlib_module_names or root in THIRD_PARTY_ALLOWED:
                continue
            if root in OPTIONAL and _is_guarded(node, parents):
                continue
            problems.append(f"line {node.lineno}: imports {root}")
    assert problems == [], f"{filename}: {problems}"
    assert "transformers" in seen


def test_import_audit_catches_forbidden_imports():
    # The audit above would flag these (guards the guard).
    tree = ast.parse(
        "import PIL\nfrom ceit_hf import x\nfrom ..pkg import y\n"
        "try:\n    import torchvision\nexcept ImportError:\n    pass\n"
        "if is_vision_available():\n    from PIL import Image\n"
    )
    parents = _parents(tree)
    imports = [n for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom))]
    guarded = {ast.unparse(n): _is_guarded(n, parents) for n in imports}
    assert guarded == {
        "import PIL": False,
        "from ceit_hf import x": False,
        "from ..pkg import y": False,
        "import torchvision": True,
        "from PIL import Image": True,
    }
