#!/usr/bin/env python
"""CeiT vs DeiT of about the same size, same data, recipe and epoch budget, several seeds: validation accuracy
per epoch, written to OUTPUT_DIR/comparison.json and OUTPUT_DIR/comparison.png (see ceit_hf/comparison.py).

    python scripts/compare_with_deit.py --output_dir runs/compare                 # bundled digits, 30 epochs, seeds 0 1
    python scripts/compare_with_deit.py --output_dir runs/compare --epochs 10 --seeds 0 1 2
    python scripts/compare_with_deit.py --output_dir runs/mine --train_dir imgs/train --validation_dir imgs/val

Other flags of scripts/train.py (--learning_rate, --per_device_train_batch_size, ...) apply to both models.
"""

from ceit_hf.comparison import main


if __name__ == "__main__":
    main()
