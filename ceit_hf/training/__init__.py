# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Training CeiT through transformers' `Trainer` (`scripts/train.py`), in four parts (the data is `ceit_hf.data`):

- `arguments`: the command line (dataclasses, the job's and the DeiT recipe's defaults, resume checks);
- `model`: the model to train (small, preset or pretrained, LoRA) and its image processor;
- `callbacks`: the EMA of the weights and the epoch of the seeded augmentation;
- `run`: the Trainer, the distributed setup, `main()`.

Heavy libraries (torch, torchvision, datasets, Trainer) are imported where they are used, so `--help` is fast.
"""

from .arguments import (
    DEIT_RECIPE,
    DataArguments,
    ModelArguments,
    RecipeArguments,
    checkpoint_problems,
    parse_args,
    resolve_resume_checkpoint,
)
from .callbacks import EpochCallback, ModelEMACallback
from .model import build_model, image_processor_for, load_image_processor, parse_config_overrides, small_config
from .run import (
    check_output_dir,
    choose_image_size,
    data_source,
    describe_setup,
    main,
    prepare_job,
    set_torch_threads,
    setup_logging,
    soft_target_loss,
    train_and_evaluate,
)
