# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Demonstrations built on the library, beside the package and not installed with it: run from the repository root,
`python examples/compare_with_deit.py` (CeiT vs DeiT through the same training code) and
`python examples/segmentation_example.py` (CeiT as UperNet's backbone)."""
