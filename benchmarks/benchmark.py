#!/usr/bin/env python
"""CeiT vs transformers' DeiT (same width/depth/heads), side by side in one process, alternating rounds: the plain
CeiT, `optimize_for_inference` (eager and compiled) and DeiT (eager and compiled), inference at batch 1 and 32, the
training step (forward, backward, AdamW; eager and with the model compiled) at batch 32, peak memory, and achieved
GFLOP/s against a matrix-multiply roof measured in the run. Before those, the data loader: images/s per worker of
the training pipeline (JPEG decode + the DeiT recipe's augmentation) with 1 worker and with one per CPU.

    python benchmarks/benchmark.py                                   # CPU, fp32: CeiT-T/S vs DeiT-T/S
    python benchmarks/benchmark.py --device cuda --dtypes bfloat16 --batch_sizes 1 32 256 --train_batch_size 256
    python benchmarks/benchmark.py --data_loader_only --data_loader_workers 1 16
    python benchmarks/benchmark.py --startup --startup_images 10000 100000   # image-folder start-up of train.py
    python benchmarks/benchmark.py --levers            # other forms of the training step's heaviest parts (all levers)
    python benchmarks/benchmark.py --profile --sizes tiny    # the training step by operator, CeiT beside DeiT

Prints a Markdown table and writes the JSON (--output_json) and the table (--output_markdown), both rewritten
after the data loader and after each size, so a killed run keeps what it finished.
"""

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run by path: the repository root's `benchmarks`

import torch  # noqa: E402

from benchmarks.common import machine_description, matmul_roof, stream_bandwidth, write_json  # noqa: E402
from benchmarks.models import format_table, profile_training_step, run_benchmark  # noqa: E402
from benchmarks.startup import format_startup, startup_benchmark  # noqa: E402
from benchmarks.step_levers import LEVERS, format_levers_table, measure_levers  # noqa: E402
from benchmarks.workers import data_loader_throughput, format_data_loader  # noqa: E402
from ceit_hf.cpu_memory import keep_freed_cpu_memory_if  # noqa: E402
from ceit_hf.training import parse_config_overrides  # noqa: E402
from ceit_hf.training.arguments import SWITCH  # noqa: E402


def report(results: dict) -> str:
    """The results as Markdown: the models' tables (and profile), the data-loader workers, the start-up, the levers
    (each when measured)."""
    tables = [
        format_table(results),
        "\n".join(format_data_loader(results["data_loader"])) if "data_loader" in results else "",
        "\n".join(format_startup(results["startup"])) if "startup" in results else "",
        format_levers_table(results),
    ]
    return "\n\n".join(table for table in tables if table)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=["tiny", "small"])
    parser.add_argument("--batch_sizes", nargs="+", type=int, default=[1, 32], help="inference batch sizes")
    parser.add_argument("--train_batch_size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--min_seconds", type=float, default=1.0, help="time each measurement at least this long")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtypes", nargs="+", default=["float32"], choices=["float32", "bfloat16", "float16"])
    parser.add_argument("--no_compile", action="store_true", help="leave out the torch.compile variants")
    parser.add_argument(
        "--compile_backend",
        default="inductor",
        help="torch.compile backend of the compiled variants ('eager' only traces: smoke runs)",
    )
    parser.add_argument("--config_overrides", help="config keys for both models, 'k=v,...' (e.g. image_size=32)")
    parser.add_argument(
        "--keep_freed_cpu_memory",
        choices=sorted(SWITCH),
        default="auto",
        help="keep freed CPU memory in glibc's heap for reuse, as train.py does ('auto': on for --device cpu)",
    )
    parser.add_argument("--roof_size", type=int, help="matrix size of the roof (default: 2048 on CPU, 8192 on GPU)")
    parser.add_argument("--roof_seconds", type=float, default=1.0)
    loader = parser.add_argument_group("data loader")
    loader.add_argument("--data_loader_only", action="store_true", help="measure only the data loader")
    loader.add_argument("--no_data_loader", action="store_true", help="leave the data loader out")
    loader.add_argument("--data_loader_workers", nargs="+", type=int, help="worker counts (default: 1 and every CPU)")
    loader.add_argument("--data_loader_seconds", type=float, default=5.0, help="time each worker count this long")
    loader.add_argument("--data_loader_images", type=int, default=64, help="distinct synthetic JPEGs")
    loader.add_argument("--data_loader_batch_size", type=int, default=32)
    startup = parser.add_argument_group("start-up (instead of everything else)")
    startup.add_argument(
        "--startup",
        action="store_true",
        help="measure only train.py's start on image folders of tiny JPEGs: time to the first step, first and "
        "second run, and peak memory, beside torchvision's ImageFolder and datasets' imagefolder indexing",
    )
    startup.add_argument("--startup_images", nargs="+", type=int, default=[10_000], help="folder sizes")
    startup.add_argument("--startup_classes", type=int, default=10)
    startup.add_argument("--startup_baseline", type=int, default=200, help="the small folder the others add to")
    startup.add_argument("--startup_root", default="startup_images", help="where the folders are written (kept)")
    startup.add_argument(
        "--startup_skip_imagefolder",
        action="store_true",
        help='leave out datasets.load_dataset("imagefolder") (it takes minutes from 100k files on)',
    )
    levers = parser.add_argument_group("levers (instead of everything else)")
    levers.add_argument(
        "--levers",
        nargs="*",
        choices=LEVERS,
        help="time other forms of the training step's heaviest parts against the model's, at CeiT-T's shapes and "
        "--train_batch_size, on --device in the first of --dtypes (all levers when none is named; ceit_hf.step_levers)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="instead of everything else: each model's training step by operator (torch.profiler), at the first of "
        "--sizes and --train_batch_size, fp32",
    )
    parser.add_argument("--output_json", default="benchmark.json")
    parser.add_argument("--output_markdown", help="also write the table here (e.g. benchmarks/cpu_fp32.md)")
    args = parser.parse_args(argv)
    if args.data_loader_only and args.no_data_loader:
        parser.error("--data_loader_only and --no_data_loader leave nothing to measure")

    results = {}

    def save(partial):
        """The results so far, as JSON and table: rewritten after each part, so a killed run keeps what it finished."""
        results.update(partial)
        write_json(results, args.output_json)
        if args.output_markdown:
            with open(args.output_markdown, "w", encoding="utf-8") as handle:
                handle.write(report(results) + "\n")

    device = torch.device(args.device)
    save({"cpu_memory_kept": keep_freed_cpu_memory_if(SWITCH[args.keep_freed_cpu_memory], device)})
    if args.profile:
        setup = {"machine": machine_description(device), "batch_size": args.train_batch_size, "steps": 2}
        setup.update(matmul_roof_gflops=matmul_roof(device, torch.float32), stream_gb_per_s=stream_bandwidth(device))
        overrides = parse_config_overrides(args.config_overrides)
        profile = profile_training_step(args.sizes[0], args.train_batch_size, 2, device, overrides)
        save({"profile_setup": setup, "profile": profile})
        print(report(results))
        return
    if args.levers is not None:
        setup = {"machine": machine_description(device), "dtype": args.dtypes[0], "batch_size": args.train_batch_size}
        save({"levers_setup": {**setup, "rounds": args.rounds}, "levers": {}})
        dtype = getattr(torch, args.dtypes[0])
        for lever in args.levers or LEVERS:  # saved after each, so a killed run keeps what it finished
            measured = measure_levers([lever], args.train_batch_size, device, dtype, args.rounds, args.min_seconds)
            save({"levers": results["levers"] | measured})
        print(report(results))
        return
    if args.startup:
        save(
            {
                "startup": startup_benchmark(
                    images=args.startup_images,
                    classes=args.startup_classes,
                    baseline=args.startup_baseline,
                    root=args.startup_root,
                    imagefolder=not args.startup_skip_imagefolder,
                )
            }
        )
        print(report(results))
        return

    # the data loader first: it is short and bounded (--data_loader_seconds per worker count), so a model
    # measurement that runs out of time (compiling) does not take it along
    if not args.no_data_loader:
        save(
            {
                "data_loader": data_loader_throughput(
                    workers=args.data_loader_workers or (1, None),
                    images=args.data_loader_images,
                    batch_size=args.data_loader_batch_size,
                    seconds=args.data_loader_seconds,
                )
            }
        )
    if not args.data_loader_only:
        run_benchmark(
            sizes=args.sizes,
            batch_sizes=args.batch_sizes,
            train_batch_size=args.train_batch_size,
            rounds=args.rounds,
            device=args.device,
            dtypes=args.dtypes,
            min_seconds=args.min_seconds,
            compile=not args.no_compile,
            overrides=parse_config_overrides(args.config_overrides),
            compile_backend=args.compile_backend,
            roof_size=args.roof_size,
            roof_seconds=args.roof_seconds,
            checkpoint=save,
        )
    print(report(results))
    print(f"\nWritten to {args.output_json}" + (f" and {args.output_markdown}" if args.output_markdown else ""))


if __name__ == "__main__":
    main()
