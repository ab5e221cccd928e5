#!/usr/bin/env python
"""Evaluate a CeiT (or any image classifier) folder or Hub repo, or a LoRA adapter of one: top-1/top-5 accuracy and
images/s.

    python scripts/validate.py --model runs/digits                       # the main job's validation split
    python scripts/validate.py --model runs/mine --validation_dir imgs/val --output_json eval.json
    python scripts/validate.py --model runs/lora --validation_dir imgs/val   # a LoRA adapter (train.py --lora_rank)
    python scripts/validate.py --model ceit-hf/ceit_tiny_patch16_224 --trust_remote_code \
        --dataset_name imagenet-1k --split validation --device cuda --dtype bfloat16
"""

from ceit_hf.evaluation import main


if __name__ == "__main__":
    main()
