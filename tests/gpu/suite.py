# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The GPU suite (`bash scripts/gpu_check.sh`, docs/gpu.md): runs its parts and writes the report.

Each part is a separate process with its own time budget, after which its process group is killed: the tests of
`tests/gpu`, two short bf16 trainings through `accelerate launch` (plain and FSDP), and `benchmarks/benchmark.py`
(CeiT-T/S vs DeiT-T/S in bf16 at batch 256, eager and compiled, and the data loader's images/s per worker). A part
that fails or runs out of time is recorded as such and the suite goes on to the next; the report (`gpu_<name>.json`
and `.md`, where `<name>` comes from the GPU, and the parts' output in `gpu_<name>.log`) is rewritten after every
part, so a lease that ends early still returns what was done. From the figures it checks the project's GPU targets and
projects the paper's 300-epoch ImageNet-1k CeiT-T run onto 8 such GPUs (GPU-hours, data-loader cores).

`--cpu` runs the same parts at tiny sizes on the CPU (CI runs it: ~25 s).

Standard library only, and run by path (`python3 tests/gpu/suite.py`): importing the package would load torch
and transformers (seconds) and a broken install of either would take the report down with it.

    python3 tests/gpu/suite.py run [--cpu] [--output_dir DIR] [--parts tests,benchmark] [--budget tests=120]
    python3 tests/gpu/suite.py docs benchmarks/gpu_nvidia_h200.json     # its results into docs/gpu.md
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ElementTree
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path


ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs" / "gpu.md"
DOCS_BEGIN, DOCS_END = "<!-- gpu-report: begin -->", "<!-- gpu-report: end -->"
# The whole suite must end within 8 minutes of device time: the wheels' install takes about 15 s before this, and a
# part killed at the deadline up to 15 s more (TERM, then KILL).
SUITE_SECONDS = 450
# The paper's CeiT-T run (DeiT's recipe): 300 epochs of ImageNet-1k's training set, global batch 1024, validated
# after every epoch (../shared/reference/ceit_architecture.md).
PAPER_RUN = {"epochs": 300, "train_images": 1_281_167, "validation_images": 50_000, "global_batch": 1024, "gpus": 8}
TARGETS = {"train_step_vs_deit_tiny": 0.9, "inference_vs_deit_tiny": 1.0}
PACKAGES = (
    "torch",
    "torchvision",
    "triton",
    "transformers",
    "accelerate",
    "datasets",
    "evaluate",
    "huggingface_hub",
    "safetensors",
    "tokenizers",
    "pyarrow",
    "numpy",
    "pillow",
    "timm",
    "scikit-learn",
    "flash_attn",
    "kernels",
)


# ------------------------------------------------------------------------------------------------------- parts


@dataclass
class Part:
    name: str
    description: str
    budget: float | None  # seconds (None: what is left of the suite's time); then its process group is killed
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    skip: str | None = None  # why the part does not run in this mode
    outputs: list[Path] = field(default_factory=list)  # what it writes, removed before it runs (a reused work folder)


def training_command(python: str, config: str, output_dir: Path, cpu: bool) -> list[str]:
    """`accelerate launch` (one process) of scripts/train.py: bf16 CeiT-T on the bundled digits (upscaled), a few
    hundred steps on the GPU, two on the CPU, then its evaluation and save."""
    launch = [python, "-m", "accelerate.commands.launch", "--config_file", config, "--num_processes", "1"]
    train = [
        "scripts/train.py",
        "--preset",
        "ceit_tiny_patch16_224",
        "--bf16",
        "--seed",
        "0",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        "--output_dir",
        str(output_dir),
    ]
    if cpu:
        # accelerate's `--cpu` takes its simple launcher whatever the config file says; Trainer's `--use_cpu` allows
        # bf16 there
        return [
            *launch[:3],
            "--cpu",
            *launch[3:],
            *train,
            "--use_cpu",
            "true",
            "--image_size",
            "32",
            "--config_overrides",
            "num_encoder_blocks=1",
            "--max_steps",
            "2",
            "--per_device_train_batch_size",
            "8",
            "--per_device_eval_batch_size",
            "16",
            "--max_train_samples",
            "16",
            "--max_eval_samples",
            "16",
            "--logging_steps",
            "1",
        ]
    return [
        *launch,
        *train,
        "--image_size",
        "224",
        "--max_steps",
        "300",
        "--per_device_train_batch_size",
        "256",
        "--per_device_eval_batch_size",
        "256",
        "--dataloader_num_workers",
        "8",
        "--logging_steps",
        "25",
    ]


def benchmark_command(python: str, work: Path, cpu: bool, cpus: int) -> list[str]:
    """benchmarks/benchmark.py: the data loader (1 and `cpus` workers), then CeiT-T/S vs DeiT-T/S in bf16 (on the CPU:
    a 32-pixel one-block CeiT-T, no compiled variants, one round)."""
    command = [
        python,
        "benchmarks/benchmark.py",
        "--dtypes",
        "bfloat16",
        "--output_json",
        str(work / "benchmark.json"),
        "--output_markdown",
        str(work / "benchmark.md"),
        "--data_loader_workers",
        "1",
        str(cpus),
    ]
    if cpu:
        return command + [
            "--device",
            "cpu",
            "--sizes",
            "tiny",
            "--config_overrides",
            "image_size=32,num_encoder_blocks=1",
            "--batch_sizes",
            "4",
            "--train_batch_size",
            "4",
            "--rounds",
            "1",
            "--min_seconds",
            "0",
            "--no_compile",
            "--roof_size",
            "256",
            "--roof_seconds",
            "0.05",
            "--data_loader_seconds",
            "0.5",
            "--data_loader_images",
            "8",
            "--data_loader_batch_size",
            "4",
        ]
    return command + [
        "--device",
        "cuda",
        "--sizes",
        "tiny",
        "small",
        "--batch_sizes",
        "256",
        "--train_batch_size",
        "256",
        "--rounds",
        "3",
        "--min_seconds",
        "0.5",
        "--data_loader_seconds",
        "5",
        "--data_loader_images",
        "128",
    ]


def levers_command(python: str, work: Path, cpu: bool) -> list[str]:
    """benchmarks/benchmark.py --levers: the other forms of the training step's heaviest parts against the model's, bf16
    at batch 256 on the GPU (the region compile last: it compiles the longest); on the CPU the four that compile
    nothing, at batch 1."""
    command = [python, "benchmarks/benchmark.py", "--output_json", str(work / "levers.json")]
    command += ["--output_markdown", str(work / "levers.md"), "--levers", "depthwise", "batchnorm_gelu"]
    command += ["expand_batchnorm", "stem"]
    if cpu:
        return command + "--train_batch_size 1 --rounds 1 --min_seconds 0".split()
    return (
        command
        + "leff_stage --device cuda --dtypes bfloat16 --train_batch_size 256 --rounds 3 --min_seconds 0.3".split()
    )


def feed_command(python: str, work: Path, cpu: bool, cpus: int) -> list[str]:
    """benchmarks/data_loader.py --feed: the training DataLoader (one worker per CPU but the training process's)
    feeding CeiT-T's bf16 training step at batch 256 (on the CPU: a 32-pixel one-block CeiT-T, batches of 4)."""
    command = [python, "benchmarks/data_loader.py", "--feed", "--output", str(work / "feed")]
    command += ["--workers", str(max(1, cpus - 1))]
    if cpu:
        return (
            command
            + "--device cpu --images 16 --batch_size 4 --image_size 32 --steps 2 --prefetch_factors 2".split()
            + [
                "--config_overrides",
                "num_encoder_blocks=1",
            ]
        )
    return command + "--device cuda --images 1024 --batch_size 256 --steps 12".split()


def suite_parts(cpu: bool, work: Path, python: str = sys.executable, cpus: int | None = None) -> list[Part]:
    """The parts in the order they run. The benchmark, whose compiling (four graphs per size) takes the longest and
    the least predictable time, runs last with whatever is left of `SUITE_SECONDS` (at least 65 s when the others
    use their whole budgets): CeiT-T first, and the JSON rewritten after each size, so running out of time loses at
    most CeiT-S."""
    cpus = cpus or len(os.sched_getaffinity(0))
    device_env = {"CEIT_GPU_CHECK_DEVICE": "cpu"} if cpu else {}
    return [
        Part(
            "tests",
            "tests/gpu: attention implementations, optimize_for_inference, compiled training step, FSDP2",
            # tests/gpu's own conftest only (--confcutdir): the suite's property-test setup is seconds of imports.
            # -v: a line per test in the log, which is all there is if the part runs out of time (the JUnit XML is
            # written at the end); a test that hangs fails after 100 s instead of taking the part with it.
            150,
            [
                python,
                "-m",
                "pytest",
                "tests/gpu",
                "-v",
                "-p",
                "no:cacheprovider",
                "-p",
                "no:hypothesispytest",
                "--confcutdir=tests/gpu",
                "-o",
                "addopts=-ra",
                "--timeout=100",
                f"--junitxml={work / 'tests.xml'}",
            ],
            device_env,
            outputs=[work / "tests.xml"],
        ),
        Part(
            "train_bf16",
            "accelerate launch (multi_gpu.yaml, 1 process): bf16 CeiT-T, digits at 224, evaluate, save",
            75,
            training_command(python, "configs/accelerate/multi_gpu.yaml", work / "train_bf16", cpu),
            outputs=[work / "train_bf16"],
        ),
        Part(
            "train_fsdp",
            "accelerate launch (fsdp.yaml, 1 process): the same under FSDP2 (fully_shard_ceit) with the DeiT recipe "
            "(its EMA sharded) and a checkpoint at the last step",
            75,
            [
                *training_command(python, "configs/accelerate/fsdp.yaml", work / "train_fsdp", cpu),
                *["--recipe", "deit", "--save_strategy", "steps", "--save_steps", "300"],
            ],
            skip="accelerate shards on GPUs only (tests/training/test_distributed.py checks its CPU fallback)"
            if cpu
            else None,
            outputs=[work / "train_fsdp"],
        ),
        Part(
            "levers",
            "benchmarks/benchmark.py --levers: other forms of LeFF's depthwise convolution, BatchNorm+GELU, expansion "
            "BatchNorm and stage, "
            "and of the stem, against the model's (bf16, batch 256)",
            45,
            levers_command(python, work, cpu),
            outputs=[work / "levers.json", work / "levers.md"],
        ),
        Part(
            "feed",
            "benchmarks/data_loader.py --feed: the training DataLoader's workers feeding CeiT-T's bf16 training step "
            "(batch 256): loader and step images/s, share of each step waiting for data, pinned memory and prefetch",
            40,
            feed_command(python, work, cpu, cpus),
            outputs=[work / "feed.json", work / "feed.md"],
        ),
        Part(
            "benchmark",
            "benchmarks/benchmark.py: data loader, then CeiT-T/S vs DeiT-T/S bf16 batch 256",
            None,
            benchmark_command(python, work, cpu, cpus),
            outputs=[work / "benchmark.json", work / "benchmark.md"],
        ),
    ]


def run_process(part: Part, log_path: Path, budget: float, env: dict[str, str]) -> dict:
    """Runs `part.command` in its own process group with its output in `log_path`; kills the group (TERM, then
    KILL) after `budget` seconds."""
    start = time.monotonic()
    with open(log_path, "w", encoding="utf-8") as log:
        log.write(f"$ {' '.join(part.command)}\n")
        log.flush()
        try:
            process = subprocess.Popen(
                part.command,
                cwd=ROOT,
                env={**env, **part.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        except OSError as error:
            return {"status": "error", "rc": None, "seconds": 0.0, "error": str(error)}
        try:
            rc = process.wait(timeout=budget)
            status = "passed" if rc == 0 else "failed"
        except subprocess.TimeoutExpired:
            for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
                try:
                    os.killpg(process.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    process.wait(timeout=grace)
                    break
                except subprocess.TimeoutExpired:
                    continue
            rc, status = process.returncode, "timeout"
    return {"status": status, "rc": rc, "seconds": round(time.monotonic() - start, 1)}


def tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


# ------------------------------------------------------------------------------------------ what each part left


def read_json(path: Path):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def test_results(junit: Path) -> dict | None:
    """Outcome of each test in pytest's JUnit XML, with the skip reason or the first line of the failure."""
    try:
        root = ElementTree.parse(junit).getroot()
    except (OSError, ElementTree.ParseError):
        return None
    cases = []
    for case in root.iter("testcase"):
        outcome, message = "passed", ""
        for tag in ("failure", "error", "skipped"):
            found = case.find(tag)
            if found is not None:
                outcome = {"failure": "failed"}.get(tag, tag)
                message = next(iter((found.get("message") or found.text or "").strip().splitlines()), "")[:300]
                break
        cases.append(
            {
                "test": f"{case.get('classname', '')}::{case.get('name', '')}",
                "outcome": outcome,
                "seconds": float(case.get("time") or 0),
                "message": message,
            }
        )
    counts = {k: sum(c["outcome"] == k for c in cases) for k in ("passed", "failed", "error", "skipped")}
    return {**counts, "cases": cases}


def training_results(output_dir: Path, log_path: Path) -> dict:
    """What a training run left: its final metrics, the first and last logged losses, whether the model was saved,
    and the setup line the job logs (world size, parallel mode, precision)."""
    results = read_json(output_dir / "all_results.json") or {}
    state = read_json(output_dir / "trainer_state.json") or {}
    losses = [entry["loss"] for entry in state.get("log_history", []) if "loss" in entry]
    setup = (
        re.findall(r"Distributed setup: .*", log_path.read_text(encoding="utf-8", errors="replace"))
        if log_path.exists()
        else []
    )
    weights = ("model.safetensors", "model.safetensors.index.json")
    return {
        "metrics": results,
        "global_step": state.get("global_step"),
        "first_loss": losses[0] if losses else None,
        "last_loss": losses[-1] if losses else None,
        "saved": (output_dir / "config.json").is_file() and any((output_dir / w).is_file() for w in weights),
        "setup": setup[0] if setup else None,
    }


# ------------------------------------------------------------------------------------------ targets, projection


def _speed(benchmark: dict, variant: str, size: str, key: str) -> float | None:
    return benchmark.get("models", {}).get(f"{variant}_{size}", {}).get("images_per_second", {}).get(key)


def _best(benchmark: dict, variants: tuple[str, ...], size: str, key: str) -> tuple[float, str] | None:
    found = [(speed, v) for v in variants if (speed := _speed(benchmark, v, size, key)) is not None]
    return max(found) if found else None


def measurement_keys(benchmark: dict, size: str = "tiny") -> tuple[str | None, str | None]:
    """(training key, inference key at the largest batch) of the benchmark's measurements, e.g. `train_bs256_bfloat16`
    and `infer_bs256_bfloat16` (bf16 preferred)."""
    keys = list(benchmark.get("models", {}).get(f"deit_{size}", {}).get("images_per_second", {}))
    keys.sort(key=lambda k: ("bfloat16" not in k, -int(re.search(r"bs(\d+)", k).group(1))))
    train = next((k for k in keys if k.startswith("train_")), None)
    infer = next((k for k in keys if k.startswith("infer_")), None)
    return train, infer


def targets(benchmark: dict | None) -> dict:
    """The project's GPU targets on the measured figures: CeiT-T's bf16 training step >= 0.9x DeiT-T's and its inference
    >= 1.0x, each the fastest CeiT variant against the fastest DeiT variant (eager or compiled), with the eager/eager
    and compiled/compiled ratios beside."""
    if not benchmark:
        return {}
    train, infer = measurement_keys(benchmark)
    groups = {
        "train_step_vs_deit_tiny": (
            train,
            {
                "eager": (("ceit",), ("deit",)),
                "compiled": (("ceit_compiled",), ("deit_compiled",)),
                "best": (("ceit", "ceit_compiled"), ("deit", "deit_compiled")),
            },
        ),
        "inference_vs_deit_tiny": (
            infer,
            {
                "eager": (("ceit_optimized",), ("deit",)),
                "compiled": (("ceit_optimized_compiled",), ("deit_compiled",)),
                "best": (("ceit", "ceit_optimized", "ceit_optimized_compiled"), ("deit", "deit_compiled")),
            },
        ),
    }
    results = {}
    for name, (key, comparisons) in groups.items():
        if key is None:
            continue
        entry = {"measurement": key, "target": TARGETS[name]}
        for label, (ceit, deit) in comparisons.items():
            mine, theirs = _best(benchmark, ceit, "tiny", key), _best(benchmark, deit, "tiny", key)
            if mine and theirs:
                entry[label] = {"ratio": mine[0] / theirs[0], "ceit": mine[1], "deit": theirs[1]}
        if "best" in entry:
            entry["met"] = entry["best"]["ratio"] >= TARGETS[name]
        results[name] = entry
    return results


RECOMPUTED_PARTS = {
    "leff": "LeFF recomputation (`set_leff_recompute`)",
    "stem": "Stem recomputation (`set_stem_recompute`: its BatchNorm output and max-pool indices)",
}


def recompute(benchmark: dict | None, part: str = "leff") -> dict:
    """CeiT-T's eager training step with `part`'s activations recomputed (the `ceit_<part>_recompute` variant)
    against the default, which stores them on a GPU: speed and peak memory, each also against DeiT-T. What decides
    whether "auto" should recompute on GPUs too (docs/performance.md)."""
    train, _ = measurement_keys(benchmark or {})
    models = (benchmark or {}).get("models", {})
    try:
        on, off, deit = (models[f"{name}_tiny"] for name in (f"ceit_{part}_recompute", "ceit", "deit"))
        return {
            "measurement": train,
            "speed_vs_storing": on["images_per_second"][train] / off["images_per_second"][train],
            "memory_vs_storing": on["peak_memory_mib"][train] / off["peak_memory_mib"][train],
            "speed_vs_deit": {
                "recompute": on["images_per_second"][train] / deit["images_per_second"][train],
                "store": off["images_per_second"][train] / deit["images_per_second"][train],
            },
            "memory_vs_deit": {
                "recompute": on["peak_memory_mib"][train] / deit["peak_memory_mib"][train],
                "store": off["peak_memory_mib"][train] / deit["peak_memory_mib"][train],
            },
        }
    except (KeyError, TypeError, ZeroDivisionError):
        return {}


def recompute_text(r: dict, part: str = "leff") -> str:
    return (
        f"{RECOMPUTED_PARTS[part]} on this GPU ({r['measurement']}, eager CeiT-T): {r['speed_vs_storing']:.2f}x the "
        f"speed and {r['memory_vs_storing']:.2f}x the peak memory of storing the activations (vs DeiT-T: speed "
        f"{r['speed_vs_deit']['recompute']:.2f}x recomputing, {r['speed_vs_deit']['store']:.2f}x storing; memory "
        f"{r['memory_vs_deit']['recompute']:.2f}x / {r['memory_vs_deit']['store']:.2f}x)."
    )


def recompute_lines(report: dict) -> list[str]:
    return [
        line
        for part in RECOMPUTED_PARTS
        if report.get(f"{part}_recompute")
        for line in ("", recompute_text(report[f"{part}_recompute"], part))
    ]


def projection(
    train_rate: float,
    inference_rate: float | None,
    per_worker: float | None,
    cpus_per_gpu: int | None,
    run: dict = PAPER_RUN,
) -> dict:
    """The paper's CeiT-T run on `run['gpus']` GPUs that each train `train_rate` images/s and evaluate
    `inference_rate`: GPU-hours (training + one validation pass per epoch), wall-clock hours at linear scaling
    (DDP's gradient all-reduce of CeiT-T's 6 M parameters is small next to a step), and the data-loader workers
    (CPU cores) that keep each GPU fed at `per_worker` images/s per worker."""
    train_images = run["epochs"] * run["train_images"]
    seconds = train_images / train_rate
    if inference_rate:
        seconds += run["epochs"] * run["validation_images"] / inference_rate
    result = {
        "train_images": train_images,
        "train_images_per_second_per_gpu": train_rate,
        "gpus": run["gpus"],
        "per_gpu_batch": run["global_batch"] // run["gpus"],
        "gpu_hours": seconds / 3600,
        "wall_hours": seconds / 3600 / run["gpus"],
        "steps": math.ceil(train_images / run["global_batch"]),
    }
    if per_worker:
        workers = math.ceil(train_rate / per_worker)
        result.update(
            data_loader_images_per_second_per_worker=per_worker,
            workers_per_gpu=workers,
            data_loader_cores=workers * run["gpus"],
        )
        if cpus_per_gpu:
            result["cpus_per_gpu_here"] = cpus_per_gpu
            result["loader_keeps_up_here"] = workers <= cpus_per_gpu
    return result


def paper_projection(report: dict) -> dict:
    """`projection` from the report's benchmark: CeiT-T's fastest training step and inference, and the data loader's
    per-worker rate (the same machine's CPUs); also from the Trainer's end-to-end rate of the plain bf16 run."""
    benchmark = report.get("benchmark") or {}
    train, infer = measurement_keys(benchmark)
    best_train = _best(benchmark, ("ceit", "ceit_compiled"), "tiny", train) if train else None
    if not best_train:
        return {}
    inference_variants = ("ceit", "ceit_optimized", "ceit_optimized_compiled")
    best_infer = _best(benchmark, inference_variants, "tiny", infer) if infer else None
    loader = benchmark.get("data_loader") or {}
    cpus = loader.get("cpus")
    result = projection(best_train[0], best_infer and best_infer[0], loader.get("per_worker_images_per_second"), cpus)
    result.update(train_variant=best_train[1], measurement=train, inference_variant=best_infer and best_infer[1])
    trainer = (report.get("training", {}).get("train_bf16") or {}).get("metrics", {}).get("train_samples_per_second")
    if trainer:
        result["trainer_end_to_end"] = projection(trainer, best_infer and best_infer[0], None, None)
    return result


# ----------------------------------------------------------------------------------------------------- report


def gpu_name(cpu: bool) -> tuple[str, str]:
    """(the GPU's name as nvidia-smi gives it, its file-name form: 'NVIDIA H200' -> 'nvidia_h200'); ('CPU', 'cpu')
    in CPU mode. Raises SystemExit without a GPU."""
    if cpu:
        return "CPU", "cpu"
    try:
        name = (
            subprocess.run(
                ["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"],
                capture_output=True,
                text=True,
                timeout=60,
                check=True,
            )
            .stdout.splitlines()[0]
            .strip()
        )
    except (OSError, subprocess.SubprocessError, IndexError):
        raise SystemExit("error: no GPU found (nvidia-smi); `bash scripts/gpu_check.sh --cpu` runs the CPU mode.")
    return name, re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def environment(cpu: bool) -> dict:
    """Versions of the packages the suite runs on (as imported: /tmp/site's wheels first), CPUs, and the GPU."""
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    info = {
        "python": sys.version.split()[0],
        "packages": versions,
        "cpus": len(os.sched_getaffinity(0)),
        "pythonpath": os.environ.get("PYTHONPATH", ""),
    }
    if not cpu:
        query = "name,memory.total,driver_version,clocks.max.sm,power.limit"
        try:
            info["nvidia_smi"] = subprocess.run(
                ["nvidia-smi", f"--query-gpu={query}", "--format=csv"], capture_output=True, text=True, timeout=60
            ).stdout.strip()
        except (OSError, subprocess.SubprocessError) as error:
            info["nvidia_smi"] = f"failed: {error}"
    return info


def _ratio(entry: dict, label: str) -> str:
    found = entry.get(label)
    return f"{found['ratio']:.2f}x ({found['ceit']} / {found['deit']})" if found else "n/a"


def markdown(report: dict) -> str:  # noqa: C901 (the report section by section)
    """The report as Markdown: the parts, the targets, the benchmark, the tests, the trainings, the projection."""
    env = report["environment"]["packages"]
    lines = [
        f"# GPU check: {report['gpu']}",
        "",
        f"`bash scripts/gpu_check.sh{' --cpu' if report['mode'] == 'cpu' else ''}` on {report['started']}, "
        f"{report.get('wall_seconds', 0):.0f} s; torch {env.get('torch')}, transformers {env.get('transformers')}, "
        f"accelerate {env.get('accelerate')}, datasets {env.get('datasets')}; {report['environment']['cpus']} CPUs.",
    ]
    if report["mode"] == "cpu":
        lines += ["", "CPU mode: tiny sizes that check the suite's code; none of its figures mean anything."]
    lines += ["", "| part | status | seconds | budget | what |", "|---|---|---|---|---|"]
    for name, part in report["parts"].items():
        status = part["status"] + (f" (rc {part['rc']})" if part.get("rc") not in (0, None) else "")
        if part.get("reason"):
            status += f": {part['reason']}"
        lines.append(
            f"| {name} | {status} | {part.get('seconds', 0):.0f} | {part.get('budget', 0):.0f} | "
            f"{part['description']} |"
        )
    if report.get("targets"):
        lines += ["", "## Targets", "", *targets_table(report["targets"])]
    lines += recompute_lines(report)
    if report.get("benchmark_markdown"):
        lines += ["", "## Benchmark", "", report["benchmark_markdown"].strip()]
    if report.get("levers_markdown"):
        lines += ["", "## Training-step levers", "", report["levers_markdown"].strip()]
    if report.get("feed_markdown"):
        lines += [
            "",
            "## Feeding the GPU (data loader and training step together)",
            "",
            report["feed_markdown"].strip(),
        ]
    tests = report.get("tests")
    if tests:
        lines += [
            "",
            f"## Tests: {tests['passed']} passed, {tests['failed'] + tests['error']} failed, "
            f"{tests['skipped']} skipped",
            "",
            "| test | outcome | s | note |",
            "|---|---|---|---|",
        ]
        for case in tests["cases"]:
            note = case["message"].replace("|", "/")
            lines.append(f"| {case['test'].split('.')[-1]} | {case['outcome']} | {case['seconds']:.1f} | {note} |")
    if report.get("training"):
        lines += [
            "",
            "## Trainings (accelerate launch, bf16, digits)",
            "",
            "| run | steps | train img/s | eval accuracy | loss first -> last | saved | setup |",
            "|---|---|---|---|---|---|---|",
        ]
        for name, run in report["training"].items():
            metrics = run["metrics"]
            loss = f"{run['first_loss']:.3f} -> {run['last_loss']:.3f}" if run["first_loss"] is not None else "n/a"
            speed = metrics.get("train_samples_per_second")
            accuracy = metrics.get("eval_accuracy")
            if accuracy is not None and metrics.get("eval_ema_accuracy") is not None:
                accuracy = f"{accuracy} (EMA {metrics['eval_ema_accuracy']})"
            lines.append(
                f"| {name} | {run['global_step']} | {speed if speed is not None else 'n/a'} | "
                f"{accuracy if accuracy is not None else 'n/a'} | {loss} | {run['saved']} | "
                f"{(run['setup'] or '').removeprefix('Distributed setup: ')} |"
            )
    if report.get("projection"):
        lines += ["", "## The paper's CeiT-T run on 8 such GPUs", "", projection_text(report["projection"])]
    return "\n".join(lines) + "\n"


def projection_text(p: dict) -> str:
    run = PAPER_RUN
    text = (
        f"{run['epochs']} epochs x {run['train_images']:,} images = {p['train_images']:,} training images (global "
        f"batch {run['global_batch']}: {p['per_gpu_batch']} per GPU, {p['steps']:,} steps), plus a validation pass "
        f"per epoch. At {p['train_images_per_second_per_gpu']:,.0f} training images/s per GPU ({p['train_variant']}, "
        f"{p['measurement']}; measured at batch 256 per GPU): **{p['gpu_hours']:,.1f} GPU-hours, "
        f"{p['wall_hours']:,.1f} h on {p['gpus']} GPUs** (linear scaling)."
    )
    if "workers_per_gpu" in p:
        keeps = p.get("loader_keeps_up_here")
        text += (
            f" Data loading (JPEG decode + the DeiT augmentation) at "
            f"{p['data_loader_images_per_second_per_worker']:.0f} images/s per worker needs "
            f"**{p['workers_per_gpu']} workers (CPU cores) per GPU, {p['data_loader_cores']} in all**"
            + (
                ""
                if keeps is None
                else f"; this machine has {p['cpus_per_gpu_here']} CPUs per GPU, "
                + ("enough." if keeps else "too few: the loader, not the GPU, would set the pace.")
            )
        )
    if "trainer_end_to_end" in p:
        end = p["trainer_end_to_end"]
        text += (
            f" At the Trainer's end-to-end rate of the bf16 run ({end['train_images_per_second_per_gpu']:,.0f}"
            f" images/s, small digits images): {end['gpu_hours']:,.1f} GPU-hours, {end['wall_hours']:,.1f} h."
        )
    return text


def targets_table(targets: dict) -> list[str]:
    """The targets as Markdown table lines: the deciding best/best ratio, eager/eager and compiled/compiled."""
    lines = ["| target | best / best | eager / eager | compiled / compiled | met |", "|---|---|---|---|---|"]
    for name, entry in targets.items():
        met = {True: "met", False: "**not met**"}.get(entry.get("met"), "n/a")
        lines.append(
            f"| {name} >= {entry['target']}x ({entry['measurement']}) | {_ratio(entry, 'best')} | "
            f"{_ratio(entry, 'eager')} | {_ratio(entry, 'compiled')} | {met} |"
        )
    return lines


def failed_parts(report: dict) -> list[str]:
    return [name for name, part in report["parts"].items() if part["status"] not in ("passed", "skipped")]


def docs_block(report: dict, source: str) -> str:
    """docs/gpu.md's generated section: the latest report's targets and projection."""
    lines = [DOCS_BEGIN, f"Latest report: `{source}` ({report['gpu']}, {report['started']}).", ""]
    lines += targets_table(report.get("targets", {}))
    lines += recompute_lines(report)
    if report.get("projection"):
        lines += ["", projection_text(report["projection"])]
    if failed := failed_parts(report):
        lines += ["", f"Parts that did not pass: {', '.join(failed)} (see the report)."]
    return "\n".join(lines + [DOCS_END])


def update_docs(report: dict, source: str, path: Path = DOCS) -> None:
    text = path.read_text(encoding="utf-8")
    start, end = text.index(DOCS_BEGIN), text.index(DOCS_END) + len(DOCS_END)
    path.write_text(text[:start] + docs_block(report, source) + text[end:], encoding="utf-8")


class Suite:
    """The report of one run, written to every output folder after each part."""

    def __init__(self, cpu: bool, output_dirs: list[Path], work: Path):
        self.cpu, self.work, self.lock = cpu, work, threading.Lock()
        self.gpu, self.name = gpu_name(cpu)
        self.output_dirs = output_dirs
        self.started = time.monotonic()
        self.report = {
            "suite": "scripts/gpu_check.sh",
            "mode": "cpu" if cpu else "cuda",
            "gpu": self.gpu,
            "name": self.name,
            "started": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "environment": environment(cpu),
            "parts": {},
            "paper_run": PAPER_RUN,
        }

    def path(self, folder: Path, suffix: str) -> Path:
        return folder / f"gpu_{self.name}{suffix}"

    def record(self, part: Part, result: dict, log_path: Path | None):
        with self.lock:
            result = {"description": part.description, "budget": part.budget or 0, **result}
            if log_path is not None:
                result["command"] = " ".join(part.command)
                result["tail"] = tail(log_path)
                for folder in self.output_dirs:
                    with open(self.path(folder, ".log"), "a", encoding="utf-8") as log:
                        log.write(f"\n===== {part.name}: {result['status']} in {result.get('seconds')} s =====\n")
                        log.write(log_path.read_text(errors="replace")[-400_000:])
            self.report["parts"][part.name] = result
            if log_path is not None:
                self.collect(part.name)
            self.write()
            reason = f" ({result['reason']})" if result.get("reason") else ""
            print(
                f"[gpu_check] {part.name}: {result['status']} in {result.get('seconds', 0):.0f} s{reason}", flush=True
            )

    def collect(self, name: str):
        """Reads what the part left in the work folder into the report (also after a failure or a timeout: the
        benchmark writes its JSON after every size)."""
        if name == "tests":
            self.report["tests"] = test_results(self.work / "tests.xml")
        elif name.startswith("train_"):
            training = training_results(self.work / name, self.work / f"{name}.log")
            self.report.setdefault("training", {})[name] = training
        elif name == "levers":
            self.report["levers"] = (read_json(self.work / "levers.json") or {}).get("levers")
            md = self.work / "levers.md"
            self.report["levers_markdown"] = md.read_text() if md.exists() else None
        elif name == "feed":
            self.report["feed"] = read_json(self.work / "feed.json")
            md = self.work / "feed.md"
            self.report["feed_markdown"] = md.read_text() if md.exists() else None
        elif name == "benchmark":
            self.report["benchmark"] = read_json(self.work / "benchmark.json")
            md = self.work / "benchmark.md"
            self.report["benchmark_markdown"] = md.read_text() if md.exists() else None

    def write(self):
        """The report with what follows from the figures so far (the projection uses the benchmark and the plain
        training, which may finish in either order), to every output folder."""
        if self.report.get("benchmark"):
            self.report["targets"] = targets(self.report["benchmark"])
            for part in RECOMPUTED_PARTS:
                self.report[f"{part}_recompute"] = recompute(self.report["benchmark"], part)
            self.report["projection"] = paper_projection(self.report)
        self.report["wall_seconds"] = round(time.monotonic() - self.started, 1)
        for folder in self.output_dirs:
            self.path(folder, ".json").write_text(json.dumps(self.report, indent=2) + "\n")
            self.path(folder, ".md").write_text(markdown(self.report))

    def run(self, parts: list[Part], jobs: int = 1, deadline: float = SUITE_SECONDS):
        env = {k: v for k, v in os.environ.items() if k != "PYTHONSAFEPATH"}  # the children run scripts from scripts/

        def one(part: Part):
            if part.skip:
                return self.record(part, {"status": "skipped", "reason": part.skip, "seconds": 0.0}, None)
            left = deadline - (time.monotonic() - self.started)
            if left < 20:
                return self.record(
                    part, {"status": "skipped", "reason": "the suite's time ran out", "seconds": 0.0}, None
                )
            budget = left if part.budget is None else min(part.budget, left)
            for output in part.outputs:
                if output.is_dir():
                    shutil.rmtree(output)
                else:
                    output.unlink(missing_ok=True)
            log_path = self.work / f"{part.name}.log"
            result = run_process(part, log_path, budget, env)
            result["budget"] = round(budget)
            if part.budget is not None and budget < part.budget:
                result["reason"] = f"budget cut to {budget:.0f} s by the suite's deadline"
            self.record(part, result, log_path)

        for folder in self.output_dirs:
            self.path(folder, ".log").write_text("")
        self.write()
        with ThreadPoolExecutor(max_workers=jobs) as pool:
            for future in [pool.submit(one, part) for part in parts]:
                future.result()
        self.write()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run the suite")
    run.add_argument("--cpu", action="store_true", help="tiny sizes on the CPU (CI)")
    run.add_argument(
        "--output_dir",
        default=None,
        help="where gpu_<name>.{json,md,log} go (default: benchmarks, "
        "or a temporary folder with --cpu); also $OUT when it is set (the GPU machine)",
    )
    run.add_argument("--work_dir", help="the parts' outputs (models, logs; default: a temporary folder)")
    run.add_argument("--parts", help="comma-separated subset of: tests,train_bf16,train_fsdp,levers,feed,benchmark")
    run.add_argument("--budget", action="append", default=[], metavar="PART=SECONDS", help="a part's time budget")
    run.add_argument("--deadline", type=float, default=SUITE_SECONDS, help="seconds for all parts together")
    run.add_argument(
        "--jobs", type=int, help="parts at a time (default: 1 on the GPU, for clean timings; 2 on the CPU)"
    )
    docs = commands.add_parser("docs", help="write a report's targets and projection into docs/gpu.md")
    docs.add_argument("report")
    args = parser.parse_args(argv)

    if args.command == "docs":
        update_docs(json.loads(Path(args.report).read_text(encoding="utf-8")), args.report)
        print(f"Updated {DOCS}")
        return 0

    import tempfile

    work = Path(args.work_dir or tempfile.mkdtemp(prefix="ceit_gpu_check_"))
    work.mkdir(parents=True, exist_ok=True)
    output = Path(args.output_dir or (work / "report" if args.cpu else ROOT / "benchmarks"))
    output_dirs = [output] + ([Path(os.environ["OUT"])] if os.environ.get("OUT") else [])
    for folder in output_dirs:
        folder.mkdir(parents=True, exist_ok=True)
    parts = suite_parts(args.cpu, work)
    if args.parts:
        wanted = args.parts.split(",")
        unknown = set(wanted) - {p.name for p in parts}
        if unknown:
            parser.error(f"unknown parts {sorted(unknown)}; expected some of {[p.name for p in parts]}")
        parts = [p for p in parts if p.name in wanted]
    for item in args.budget:
        name, _, seconds = item.partition("=")
        for part in parts:
            if part.name == name:
                part.budget = float(seconds)
    suite = Suite(args.cpu, list(dict.fromkeys(output_dirs)), work)
    print(
        f"[gpu_check] {suite.gpu}: parts {[p.name for p in parts]}, work folder {work}, report in "
        f"{', '.join(map(str, output_dirs))}",
        flush=True,
    )
    suite.run(parts, jobs=args.jobs or (2 if args.cpu else 1), deadline=args.deadline)
    if not args.cpu and output.resolve() == (ROOT / "benchmarks").resolve() and DOCS.exists():
        update_docs(suite.report, str(suite.path(Path("benchmarks"), ".json")))
    print()
    print(markdown(suite.report))
    return 1 if failed_parts(suite.report) else 0


if __name__ == "__main__":
    sys.exit(main())
