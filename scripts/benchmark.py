#!/usr/bin/env python
"""CeiT vs transformers' DeiT (same width/depth/heads), side by side in one process, alternating rounds: the plain
CeiT, `optimize_for_inference` (eager and compiled) and DeiT (eager and compiled), inference at batch 1 and 32, the
training step at batch 32, peak memory, and achieved GFLOP/s against a matrix-multiply roof measured in the run.

    python scripts/benchmark.py                                   # CPU, fp32: CeiT-T/S vs DeiT-T/S
    python scripts/benchmark.py --device cuda --dtypes bfloat16 --batch_sizes 1 32 256 --train_batch_size 256

Prints a Markdown table and writes the JSON (--output_json) and the table (--output_markdown).
"""

import argparse

from ceit_hf.benchmarking import format_table, run_benchmark, write_json


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
    parser.add_argument("--output_json", default="benchmark.json")
    parser.add_argument("--output_markdown", help="also write the table here (e.g. benchmarks/cpu_fp32.md)")
    args = parser.parse_args(argv)
    results = run_benchmark(
        sizes=args.sizes, batch_sizes=args.batch_sizes, train_batch_size=args.train_batch_size, rounds=args.rounds,
        device=args.device, dtypes=args.dtypes, min_seconds=args.min_seconds, compile=not args.no_compile,
    )
    table = format_table(results)
    print(table)
    write_json(results, args.output_json)
    if args.output_markdown:
        with open(args.output_markdown, "w") as handle:
            handle.write(table + "\n")
    print(f"\nWritten to {args.output_json}" + (f" and {args.output_markdown}" if args.output_markdown else ""))


if __name__ == "__main__":
    main()
