# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Trainer callbacks of the recipe: an EMA of the weights, the augmentation's epoch, FSDP's BatchNorm statistics."""

from __future__ import annotations

import math
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch.distributed.fsdp import FSDPModule
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from transformers import TrainerCallback

from ..distributed import ShardedEMA, average_batch_norm_statistics, exchanged
from .arguments import EMA_FILE


class ModelEMACallback(TrainerCallback):
    """An EMA of the weights (BatchNorm statistics included), updated after every optimizer step, written to each
    checkpoint (`ema.safetensors`) and restored on resume: torch's `AveragedModel`, or for an FSDP2-sharded model
    `ceit_hf.distributed.ShardedEMA` (same rule and file; its `on_save` is a collective)."""

    def __init__(self, decay: float, resume_from: str | None = None):
        self.decay, self.resume_from, self.ema = decay, resume_from, None

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if isinstance(model, FSDPModule):
            self.ema = ShardedEMA(model, self.decay)
        else:
            self.ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(self.decay), use_buffers=True)
        if self.resume_from and (Path(self.resume_from) / EMA_FILE).is_file():
            self.ema.load_state_dict(load_file(Path(self.resume_from) / EMA_FILE))

    def on_step_end(self, args, state, control, model=None, **kwargs):
        self.ema.update_parameters(model)

    def on_save(self, args, state, control, **kwargs):
        weights = self.ema.state_dict()  # gathered to process 0 under FSDP: on every process
        if state.is_world_process_zero:
            folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
            folder.mkdir(parents=True, exist_ok=True)
            save_file({k: v.detach().cpu().contiguous() for k, v in weights.items()}, folder / EMA_FILE)

    def swapped_into(self, model):
        """A context in which `model` (sharded or not) holds the EMA's weights; the trained ones are back after it."""
        if not isinstance(self.ema, AveragedModel):
            return self.ema.swapped_into(model)
        averaged = self.ema.module
        return exchanged(
            zip([*model.parameters(), *model.buffers()], [*averaged.parameters(), *averaged.buffers()], strict=True)
        )

    @property
    def model(self):
        """The EMA as a model of its own (unsharded models only)."""
        return self.ema.module


class EpochCallback(TrainerCallback):
    """Tells a `SeededAugmentation` the training loop's epoch (resumed mid-epoch too), in shared memory that its
    DataLoader workers see: Trainer calls `on_epoch_begin` before the workers start prefetching."""

    def __init__(self, augmentation):
        self.augmentation = augmentation

    def on_epoch_begin(self, args, state, control, **kwargs):
        self.augmentation.epoch = math.floor(state.epoch or 0)


class BatchNormStatisticsCallback(TrainerCallback):
    """Under FSDP: BatchNorm statistics averaged over the ranks after every step (evaluation and the EMA see one set)."""

    def on_step_end(self, args, state, control, model=None, **kwargs):
        average_batch_norm_statistics(model)
