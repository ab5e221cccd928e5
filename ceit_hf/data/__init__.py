# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The data of a run: `sources`, `decoding` (and `--bad_image_policy`), `streams` (`--streaming`), the recipe's
`transforms` and `loader` (DataLoader sizing, repeated augmentation). Nothing here imports `ceit_hf.training`."""

from .decoding import IGNORE_INDEX, BadImageError, DecodedExamples, decode_image, undecoded, with_transform
from .loader import cpus_per_process, default_num_workers
from .sources import DataSource, check_labels, digits_dataset, image_folder_dataset, label_names, load_image_datasets
