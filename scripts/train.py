#!/usr/bin/env python
"""Train or fine-tune CeiT with transformers' Trainer (the project's main job).

    python scripts/train.py --output_dir runs/digits            # offline default: bundled digits, small CeiT
    python scripts/train.py --train_dir imgs/train --validation_dir imgs/val --output_dir runs/mine
    python scripts/train.py --model_name_or_path ceit-hf/ceit_tiny_patch16_224 --dataset_name cifar10 \
        --ignore_mismatched_sizes --output_dir runs/cifar10
    torchrun --nproc_per_node 8 scripts/train.py --preset ceit_tiny_patch16_224 --recipe deit \
        --dataset_name imagenet-1k --bf16 --output_dir runs/ceit-t

Every TrainingArguments flag works; see `python scripts/train.py --help` and ceit_hf/training/.
"""

from ceit_hf.training import main


if __name__ == "__main__":
    main()
