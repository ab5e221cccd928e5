#!/usr/bin/env python
"""CeiT vs DeiT of about the same size, same data, recipe and epoch budget, several seeds: validation accuracy
per epoch, written to OUTPUT_DIR/comparison.json and OUTPUT_DIR/comparison.png (see examples/comparison.py).

    python examples/compare_with_deit.py --output_dir runs/compare                 # bundled digits, 30 epochs, seeds 0 1
    python examples/compare_with_deit.py --output_dir runs/compare --epochs 10 --seeds 0 1 2
    python examples/compare_with_deit.py --output_dir runs/mine --train_dir imgs/train --validation_dir imgs/val

Other flags of scripts/train.py (--learning_rate, --per_device_train_batch_size, ...) apply to both models.
"""

import sys
from pathlib import Path


sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run by path: the repository root's packages

from examples.comparison import main  # noqa: E402


if __name__ == "__main__":
    main()
