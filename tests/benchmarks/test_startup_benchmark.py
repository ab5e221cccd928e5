"""`benchmarks/benchmark.py --startup`: the image folders it writes, how it times a command to its first training step
(and stops it there), its table; and, slow, the whole mode on tiny folders. (No timing targets here: the numbers
are taken on a quiet machine, docs/performance.md.)"""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.startup import format_startup, time_to_first_step, write_image_folder


ROOT = Path(__file__).resolve().parents[2]


def test_folder_first_step_timing_and_table(tmp_path):
    folder = write_image_folder(tmp_path / "f", images=7, classes=3)
    assert sorted(len(list(d.iterdir())) for d in folder.iterdir() if d.is_dir()) == [2, 2, 3]
    mtime = (folder / "class_0000" / "00000000.jpg").stat().st_mtime_ns
    write_image_folder(tmp_path / "f", images=7, classes=3)  # the same folder: kept as it is
    assert (folder / "class_0000" / "00000000.jpg").stat().st_mtime_ns == mtime

    # a stand-in for train.py: prints a loss line, then would go on for a minute
    script = "import time; print('starting'); x = bytearray(64 * 2**20); print(\"{'loss': 1.0}\"); time.sleep(60)"
    probe = time_to_first_step([sys.executable, "-c", script])
    assert probe["seconds"] < 30 and probe["peak_rss_mib"] >= 64
    with pytest.raises(RuntimeError, match=r"ended without a training step:\nstarting\nno step"):
        time_to_first_step([sys.executable, "-c", "print('starting'); print('no step')"])

    run = {"seconds": 12.0, "peak_rss_mib": 900.0}
    entry = {
        "torchvision_index_seconds": 0.5,
        "target_added_seconds": 5.0,
        "first_run": {**run, "added_seconds": 6.0},
        "second_run": {**run, "seconds": 8.0, "added_seconds": 2.0},
    }
    table = format_startup(
        {"classes": 10, "baseline": {"images": 200, "first_run": run, "second_run": run}, "folders": {"100000": entry}}
    )
    assert table[-1] == "| 100,000 | 0.50 | skipped | 12.0 (+6.0) | 8.0 (+2.0) | 900 / 900 | no / yes |"


@pytest.mark.slow
def test_startup_mode_runs_train_py_on_tiny_folders(tmp_path):
    out = tmp_path / "startup.json"
    command = [sys.executable, "benchmarks/benchmark.py", "--startup", "--startup_images", "60"]
    command += ["--startup_baseline", "20", "--startup_classes", "3", "--startup_root", str(tmp_path / "images")]
    command += ["--output_json", str(out)]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    startup = json.loads(out.read_text())["startup"]
    entry = startup["folders"]["60"]
    for run in ("first_run", "second_run"):
        assert entry[run]["seconds"] > 0 and entry[run]["peak_rss_mib"] > 100
    assert entry["load_dataset_imagefolder_seconds"] > 0 and "| 60 |" in result.stdout
