# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The project's measurements, beside the package and not installed with it (as transformers' `benchmark/` and
timm's `benchmark.py`): run from the repository root, `python benchmarks/benchmark.py` (CeiT vs DeiT, levers,
profile, start-up, data-loader workers) and `python benchmarks/data_loader.py` (the data pipeline per core, `--feed`).
`common` holds what they share."""
