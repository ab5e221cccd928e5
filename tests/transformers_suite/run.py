"""Run transformers' own common tests against CeiT.

transformers' model, configuration, image-processing, backbone and pipeline test mixins are what "works like a
transformers model" means. They are not installed with transformers, so this harness takes them from the sdist of
the installed version (`pip download --no-deps --no-binary :all: transformers==X`, cached), lays out transformers'
tree in a temporary folder with CeiT's test files under `tests/models/ceit/` and runs pytest there, slow tests
included (`RUN_SLOW=1`). Nothing of transformers' test code is kept in this repository.

    python tests/transformers_suite/run.py --config seed            # CI
    python tests/transformers_suite/run.py --config all             # the seed-default and the official config
    python tests/transformers_suite/run.py --config seed -- -k sdpa  # extra pytest arguments after --

Expected failures are listed below by name with their reason and run as strict xfails: a new failure, or an expected
one that starts passing, fails the run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from importlib.metadata import version
from pathlib import Path


HERE = Path(__file__).resolve().parent
CONFIGS = ("seed", "official")
# The files of the sdist's `tests/` folder that the CeiT tests import.
COMMON_FILES = (
    "test_modeling_common.py",
    "test_configuration_common.py",
    "test_image_processing_common.py",
    "test_pipeline_mixin.py",
    "test_backbone_common.py",
)

# Test name (class::test, parameterized suffixes included) -> why it fails for a model that lives outside transformers.
EXPECTED_FAILURES: dict[str, str] = {
    "CeiTImageProcessingTest::test_pil_can_run_without_torchvision": (
        "it imports the processor in a fresh interpreter by transformers' module path "
        "(transformers.models.ceit...), which exists only for models inside transformers"
    ),
}

# Modules the common files import that the sdist does not ship (they live in transformers' git tree only). Each stand-in
# gives what the CeiT tests need of it.
STAND_INS = {
    # torch.export tests of the mixin: CeiT's export is tested by the project's own ONNX/torch.export tests.
    "tests/exporters/test_export.py": "class ExportTesterMixin:\n    pass\n",
    # generate() tests: CeiT is not generative, so the mixin's check wants it absent from the test class anyway.
    "tests/generation/test_utils.py": "class GenerationTesterMixin:\n    pass\n",
    # Every attribute of transformers 5's PreTrainedConfig, each set to a value other than its default.
    "tests/utils/test_configuration_utils.py": (
        "config_common_kwargs = {\n"
        '    "return_dict": False,\n'
        '    "output_hidden_states": True,\n'
        '    "output_attentions": True,\n'
        '    "dtype": "float16",\n'
        '    "chunk_size_feed_forward": 5,\n'
        '    "architectures": ["CeiTModel"],\n'
        '    "id2label": {0: "label"},\n'
        '    "label2id": {"label": "0"},\n'
        '    "problem_type": "regression",\n'
        "}\n"
    ),
    # No Hub access: the pipeline mixin finds no tiny Hub model for CeiT and skips its runs (after checking the
    # pipelines' signatures against the Hub task specs); the project's own pipeline tests run CeiT's pipelines.
    "tests/utils/tiny_model_summary.json": "{}\n",
    # No Hub access: the image tests' Hub photos are replaced by a photo scikit-learn ships (segmentation maps by a
    # label map made from it), written once into the tree.
    "utils/fetch_hub_objects_for_ci.py": (
        "from pathlib import Path\n"
        "\n"
        "import numpy as np\n"
        "from PIL import Image\n"
        "from sklearn.datasets import load_sample_image\n"
        "\n"
        "\n"
        "def url_to_local_path(url, return_url_if_not_found=True):\n"
        "    photo = np.asarray(load_sample_image('china.jpg'))[:240, :320]\n"
        "    is_map = url.endswith('.png')\n"
        "    path = Path(__file__).with_name('label_map.png' if is_map else 'photo.jpg')\n"
        "    if not path.exists():\n"
        "        Image.fromarray(photo[..., 0] // 32 if is_map else photo).save(path)\n"
        "    return str(path)\n"
    ),
}

CONFTEST = """\
import json
import os

import pytest

from transformers.models.auto import modeling_auto

import ceit_hf  # registers "ceit" with the Auto classes

EXPECTED = json.loads(os.environ["CEIT_EXPECTED_FAILURES"])

# The common tests pick each model's role (a base model trains no loss; a classifier gets labels) from the Auto
# classes' name tables, which list the models inside transformers: CeiT's entries, as an in-tree model would have them.
modeling_auto.MODEL_MAPPING_NAMES["ceit"] = "CeiTModel"
modeling_auto.MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES["ceit"] = "CeiTForImageClassification"
modeling_auto.MODEL_FOR_BACKBONE_MAPPING_NAMES["ceit"] = "CeiTBackbone"


def pytest_collection_modifyitems(config, items):
    for item in items:
        name = f"{item.cls.__name__}::{item.name}" if item.cls else item.name
        if name in EXPECTED:
            item.add_marker(pytest.mark.xfail(reason=EXPECTED[name], strict=True))
"""

PYTEST_INI = """\
[pytest]
markers =
    all_flash_attn_test
    flash_attn_test
    flash_attn_3_test
    flash_attn_4_test
    bitsandbytes
    generate
    is_training_test
    is_tensor_parallel_test
    is_expert_parallel_test
    is_fsdp_test
    torch_compile_test
    slow
    accelerate_tests
    is_pipeline_test
"""


def cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "ceit_hf" / "transformers-sdist"


def transformers_sdist(folder: Path) -> Path:
    """The sdist of the installed transformers, downloaded once into `folder`."""
    wanted = version("transformers")
    archive = folder / f"transformers-{wanted}.tar.gz"
    if not archive.exists():
        folder.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", "-d", str(folder)]
        subprocess.run([*command, f"transformers=={wanted}"], check=True)
    if not archive.exists():
        raise FileNotFoundError(f"pip did not write {archive.name} into {folder}.")
    return archive


def build_tree(archive: Path, root: Path) -> Path:
    """transformers' test layout in `root`: the sdist's common files, stand-ins, CeiT's tests in tests/models/ceit."""
    tests = root / "tests"
    with tarfile.open(archive) as tar:
        prefix = tar.getnames()[0].split("/")[0]
        for name in COMMON_FILES:
            source = tar.extractfile(f"{prefix}/tests/{name}")
            if source is None:
                raise FileNotFoundError(f"{archive.name} has no tests/{name}.")
            (tests / name).parent.mkdir(parents=True, exist_ok=True)
            (tests / name).write_bytes(source.read())
    for name, text in STAND_INS.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text, encoding="utf-8")
    ceit = tests / "models" / "ceit"
    ceit.mkdir(parents=True)
    for package in (tests, tests / "exporters", tests / "generation", tests / "utils", tests / "models", ceit):
        (package / "__init__.py").touch()
    shutil.copy(HERE / "ceit_model_tests.py", ceit / "test_modeling_ceit.py")
    shutil.copy(HERE / "ceit_image_processing_tests.py", ceit / "test_image_processing_ceit.py")
    shutil.copy(HERE.parent / "ceit_tester.py", ceit / "ceit_tester.py")
    (root / "conftest.py").write_text(CONFTEST, encoding="utf-8")
    (root / "pytest.ini").write_text(PYTEST_INI, encoding="utf-8")
    # The pipeline mixin imports transformers from `src/transformers` beside `tests/`: the installed package.
    import transformers

    (root / "src").mkdir()
    (root / "src" / "transformers").symlink_to(Path(transformers.__file__).parent)
    return ceit


def run(config: str, tree: Path, pytest_args: list[str]) -> int:
    env = {
        **os.environ,
        "CEIT_TESTER_CONFIG": config,
        "CEIT_EXPECTED_FAILURES": json.dumps(EXPECTED_FAILURES),
        "RUN_SLOW": "1",
        "HF_HUB_OFFLINE": "1",
    }
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfEX", str(tree), *pytest_args]
    print(f"== transformers {version('transformers')} common tests, CeiT config '{config}'", flush=True)
    return subprocess.run(command, cwd=tree.parents[2], env=env, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", choices=(*CONFIGS, "all"), default="seed")
    parser.add_argument("--cache-dir", type=Path, default=cache_dir(), help="where the sdist is kept between runs")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)
    archive = transformers_sdist(args.cache_dir)
    codes = []
    with tempfile.TemporaryDirectory(prefix="transformers-tests-") as folder:
        tree = build_tree(archive, Path(folder))
        for config in CONFIGS if args.config == "all" else (args.config,):
            codes.append(run(config, tree, args.pytest_args))
    return max(codes)


if __name__ == "__main__":
    sys.exit(main())
