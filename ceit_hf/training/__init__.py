# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Training CeiT through transformers' `Trainer` (`scripts/train.py`), in three parts (the data is `ceit_hf.data`):

- `arguments`: the command line (dataclasses, the job's and the DeiT recipe's defaults, resume checks);
- `callbacks`: the EMA of the weights and the epoch of the seeded augmentation;
- `run`: the model, the Trainer, `main()`.

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
from .run import (
    build_model,
    check_output_dir,
    choose_image_size,
    data_source,
    describe_setup,
    image_processor_for,
    load_image_processor,
    main,
    parse_config_overrides,
    prepare_job,
    set_torch_threads,
    setup_logging,
    small_config,
    soft_target_loss,
    train_and_evaluate,
)
