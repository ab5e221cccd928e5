#!/usr/bin/env python
"""CeiT as the backbone of transformers' UperNet, trained briefly on digits pasted on 64x64 canvases (each pixel
labelled background or its digit): prints the held-out loss and mean IoU before and after.

    python examples/segmentation_example.py            # 800 steps, about 2 minutes on 2 CPU cores
"""

import argparse
import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run by path: the repository root's packages

from examples.segmentation import train_segmentation  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=800)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    _, history = train_segmentation(args.steps, args.batch_size, args.learning_rate, args.seed)
    for when in ("before", "after"):
        print(f"held-out {when} training: loss {history[when]['loss']:.3f}, mean IoU {history[when]['mean_iou']:.3f}")


if __name__ == "__main__":
    main()
