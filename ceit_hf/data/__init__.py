# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The data of a training run, one module per job:

- `sources`: the bundled digits, image folders (and their kept index), Hub datasets and local dataset folders;
- `decoding`: decoding each image, and what takes the place of one that fails (`--bad_image_policy`);
- `streams`: streamed datasets split between processes and workers, and their exact resume;
- `transforms`: the recipe's training augmentation (the official DeiT/CeiT pipeline), the evaluation transform and
  the batch-level steps of the training process (normalisation, random erasing, Mixup/CutMix);
- `loader`: DataLoader sizing and the repeated-augmentation sampler.

Its functions take plain values (`sources.DataSource`): nothing here imports `ceit_hf.training`.
"""

from .decoding import IGNORE_INDEX, BadImageError, DecodedExamples, decode_image, undecoded, with_transform
from .loader import cpus_per_process, data_loader_defaults, default_num_workers
from .sources import (
    DIGITS_IMAGE_SIZE,
    DataSource,
    check_labels,
    digits_dataset,
    example_count,
    image_folder_dataset,
    image_size_from_data,
    label_names,
    load_image_datasets,
)
