# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""What an image folder adds to the start of `scripts/train.py --train_dir F` (`benchmarks/benchmark.py --startup`)."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path


STARTUP_FLAGS = (
    "--max_steps 1 --logging_steps 1 --eval_strategy no --save_strategy no --per_device_train_batch_size 8 "
    "--dataloader_num_workers 0 --disable_tqdm true --report_to none"
).split()


def write_image_folder(folder, images: int, classes: int, size: int = 16):
    """`images` copies of one `size` x `size` JPEG spread over `classes` class folders of `folder` (reused when a
    previous call wrote the same: a marker file records it)."""

    import numpy as np
    from PIL import Image

    folder = Path(folder)
    marker = folder / ".ceit_hf_startup.json"
    wanted = {"images": images, "classes": classes, "size": size}
    if marker.is_file() and json.loads(marker.read_text()) == wanted:
        return folder
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=90)
    jpeg = buffer.getvalue()
    for label in range(classes):
        (folder / f"class_{label:04d}").mkdir(parents=True, exist_ok=True)
    for index in range(images):
        (folder / f"class_{index % classes:04d}" / f"{index:08d}.jpg").write_bytes(jpeg)
    marker.write_text(json.dumps(wanted))
    return folder


def peak_rss_mib(pid: int) -> float | None:
    """The peak resident memory of process `pid` so far (Linux' VmHWM), or None where /proc does not tell."""
    try:
        with open(f"/proc/{pid}/status", encoding="utf-8") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def time_to_first_step(command: list[str], timeout: float = 3600.0, env: dict | None = None) -> dict:
    """Runs `command` until it prints its first training loss (Trainer's `{'loss': ...}` line), then stops it:
    the seconds from launch to that line and the process's peak resident memory until then (MiB)."""
    import signal

    environment = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", **(env or {})}
    start = time.perf_counter()
    process = subprocess.Popen(
        command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=environment, start_new_session=True
    )
    timer = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
    timer.start()
    output = []
    try:
        for line in process.stdout:
            if "'loss'" in line:
                seconds = time.perf_counter() - start
                return {"seconds": seconds, "peak_rss_mib": peak_rss_mib(process.pid)}
            output.append(line)
        raise RuntimeError(f"{command[:3]} ended without a training step:\n{''.join(output[-30:])}")
    finally:
        timer.cancel()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        process.stdout.close()


def train_startup(folder, cache_dir, output_dir) -> dict:
    """`scripts/train.py --train_dir folder` to its first step, run twice with the index cache `cache_dir` (new
    the first time)."""
    import shutil
    from pathlib import Path

    shutil.rmtree(cache_dir, ignore_errors=True)
    script = Path(__file__).resolve().parents[1] / "scripts" / "train.py"
    command = [sys.executable, str(script), "--train_dir", str(folder), "--output_dir", str(output_dir)]
    command += ["--cache_dir", str(cache_dir), *STARTUP_FLAGS]
    return {"first_run": time_to_first_step(command), "second_run": time_to_first_step(command)}


def startup_benchmark(
    images=(10_000,), classes: int = 10, baseline: int = 200, root="startup_images", imagefolder=True, log=print
) -> dict:
    """For each count in `images` (and for `baseline` images): train.py's time to its first step and peak memory,
    first and second run (`train_startup`), what the folder adds to the baseline's start, and the indexing time of
    torchvision's `ImageFolder` and (unless `imagefolder` is False) of `datasets.load_dataset("imagefolder")`."""
    import shutil
    from pathlib import Path

    from torchvision.datasets import ImageFolder

    root = Path(root)
    work = Path(tempfile.mkdtemp(prefix="startup-"))
    try:
        base_folder = write_image_folder(root / f"{baseline}_{classes}", baseline, classes)
        base = train_startup(base_folder, work / "cache", work / "out")
        log(f"[start-up] {baseline} images: {base['first_run']['seconds']:.1f} s to the first step")
        results = {"classes": classes, "baseline": {"images": baseline, **base}, "folders": {}}
        for count in images:
            folder = write_image_folder(root / f"{count}_{classes}", count, classes)
            tick = time.perf_counter()
            ImageFolder(str(folder))
            entry = {"torchvision_index_seconds": time.perf_counter() - tick}
            if imagefolder:
                import datasets

                tick = time.perf_counter()
                datasets.load_dataset("imagefolder", data_dir=str(folder), cache_dir=str(work / "hf"), split="train")
                entry["load_dataset_imagefolder_seconds"] = time.perf_counter() - tick
                shutil.rmtree(work / "hf", ignore_errors=True)
            entry.update(train_startup(folder, work / "cache", work / "out"))
            for run in ("first_run", "second_run"):
                entry[run]["added_seconds"] = entry[run]["seconds"] - base[run]["seconds"]
            entry["target_added_seconds"] = 10 * entry["torchvision_index_seconds"]
            results["folders"][str(count)] = entry
            log(
                f"[start-up] {count} images: first step after {entry['first_run']['seconds']:.1f} s (first run), "
                f"{entry['second_run']['seconds']:.1f} s (second run); torchvision indexes it in "
                f"{entry['torchvision_index_seconds']:.2f} s"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return results


def format_startup(startup: dict) -> list[str]:
    """The start-up measurement as Markdown: one row per folder size."""
    base = startup["baseline"]
    lines = [
        f"Start-up of train.py --train_dir on tiny JPEGs in {startup['classes']} class folders; added = over a "
        f"folder of {base['images']} images ({base['first_run']['seconds']:.1f} s / {base['second_run']['seconds']:.1f} s "
        "to its first step, first / second run); target: added <= 10x torchvision's indexing time.",
        "",
        '| images | torchvision ImageFolder s | load_dataset("imagefolder") s | first run: s to step 1 (added) | '
        "second run: s (added) | peak RSS MiB (1st / 2nd) | target met (1st / 2nd) |",
        "|---|---|---|---|---|---|---|",
    ]
    for count, entry in startup["folders"].items():
        first, second, target = entry["first_run"], entry["second_run"], entry["target_added_seconds"]
        imagefolder = entry.get("load_dataset_imagefolder_seconds")
        lines.append(
            f"| {int(count):,} | {entry['torchvision_index_seconds']:.2f} | "
            f"{'skipped' if imagefolder is None else f'{imagefolder:.1f}'} | "
            f"{first['seconds']:.1f} ({first['added_seconds']:+.1f}) | {second['seconds']:.1f} "
            f"({second['added_seconds']:+.1f}) | {first['peak_rss_mib'] or 0:.0f} / {second['peak_rss_mib'] or 0:.0f} | "
            f"{'yes' if first['added_seconds'] <= target else 'no'} / {'yes' if second['added_seconds'] <= target else 'no'} |"
        )
    return lines
