# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Trainer callbacks of the recipe: an EMA of the weights, and the epoch for the seeded augmentation."""

from __future__ import annotations

import math
from pathlib import Path

from transformers import TrainerCallback

from .arguments import EMA_FILE


class ModelEMACallback(TrainerCallback):
    """An exponential moving average of the weights (BatchNorm statistics included, torch's `AveragedModel`),
    updated after every optimizer step, written to each checkpoint (`ema.safetensors`) and restored on resume."""

    def __init__(self, decay: float, resume_from: str | None = None):
        self.decay = decay
        self.resume_from = resume_from
        self.ema = None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
        if self.resume_from and (Path(self.resume_from) / EMA_FILE).is_file():
            from safetensors.torch import load_file

            self.ema.load_state_dict(load_file(Path(self.resume_from) / EMA_FILE))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update_parameters(model)

    def on_save(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            from safetensors.torch import save_file

            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in self.ema.state_dict().items()}, folder / EMA_FILE)

    @property
    def model(self):
        return self.ema.module


class EpochCallback(TrainerCallback):
    """Tells a `data.SeededAugmentation` which epoch the training loop is in (also when resuming mid-epoch). Its
    epoch is in shared memory, so DataLoader workers (persistent ones too) see it: Trainer calls `on_epoch_begin`
    before it starts iterating the epoch's data loader, which is when the workers start prefetching."""

    def __init__(self, augmentation):
        self.augmentation = augmentation

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.augmentation.epoch = math.floor(state.epoch or 0)


class BatchNormStatisticsCallback(TrainerCallback):
    """Under FSDP: the BatchNorm statistics averaged over the ranks after every optimizer step
    (`ceit_hf.distributed.average_batch_norm_statistics`), so that evaluation and checkpoints see one set."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        from ..distributed import average_batch_norm_statistics

        average_batch_norm_statistics(model)
