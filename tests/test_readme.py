"""The README's Python example runs as written, and its commands name files that exist."""

import re
import subprocess
import sys
from pathlib import Path


ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_python_example_runs(tmp_path):
    block = re.search(r"## Python\n\n```python\n(.*?)```", README, re.DOTALL).group(1)
    result = subprocess.run(
        [sys.executable, "-c", block],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "torch.Size([1, 10]) torch.Size([1, 3, 1, 12])" in result.stdout
    assert (tmp_path / "ceit-tiny-10" / "model.safetensors").is_file()


def test_first_commands_are_the_main_job_and_the_tests():
    commands = re.search(r"## Two commands\n\n```bash\n(.*?)```", README, re.DOTALL).group(1)
    assert 'pip install -e ".[dev]" && python scripts/train.py --output_dir runs/digits' in commands
    assert "python -m pytest" in commands
    assert "python3 -m pytest -q" in (ROOT / ".ci" / "run").read_text()


def test_referenced_files_exist():
    for path in set(re.findall(r"(?:scripts|configs/accelerate|model_cards)/[\w./-]+\.(?:py|yaml|md)", README)):
        assert (ROOT / path).is_file(), path


def test_accelerate_configs_parse():
    from accelerate.commands.config.config_args import load_config_from_file

    multi = load_config_from_file(str(ROOT / "configs/accelerate/multi_gpu.yaml"))
    fsdp = load_config_from_file(str(ROOT / "configs/accelerate/fsdp.yaml"))
    assert multi.distributed_type.value == "MULTI_GPU" and fsdp.distributed_type.value == "FSDP"
    assert fsdp.fsdp_config["fsdp_transformer_layer_cls_to_wrap"] == "CeiTLayer"
