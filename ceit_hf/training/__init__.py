# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Training CeiT with transformers' `Trainer` (`scripts/train.py`): the command line (`arguments`), the model
(`model`), the recipe's callbacks (`callbacks`) and the job (`run`)."""

from .arguments import DEIT_RECIPE, ModelArguments, checkpoint_problems, parse_args, resolve_resume_checkpoint
from .callbacks import EpochCallback, ModelEMACallback
from .model import build_model, image_processor_for, load_image_processor, parse_config_overrides, small_config
from .run import (
    check_output_dir,
    main,
    prepare_job,
    set_torch_threads,
    setup_logging,
    soft_target_loss,
    train_and_evaluate,
)
