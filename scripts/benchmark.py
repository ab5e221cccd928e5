#!/usr/bin/env python
"""CeiT vs transformers' DeiT (same width/depth/heads), side by side in one process, alternating rounds.

    python scripts/benchmark.py                                   # CPU, fp32: CeiT-T/S vs DeiT-T/S
    python scripts/benchmark.py --device cuda --dtypes float32 bfloat16 float16 --batch_sizes 1 32 256 \
        --train_batch_size 256

Prints a table (images/s, CeiT/DeiT ratios, peak memory) and writes it as JSON (--output_json).
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
    parser.add_argument("--output_json", default="benchmark.json")
    args = parser.parse_args(argv)
    results = run_benchmark(
        sizes=args.sizes, batch_sizes=args.batch_sizes, train_batch_size=args.train_batch_size, rounds=args.rounds,
        device=args.device, dtypes=args.dtypes, min_seconds=args.min_seconds,
    )
    print(format_table(results))
    write_json(results, args.output_json)
    print(f"\nWritten to {args.output_json}")


if __name__ == "__main__":
    main()
