# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""The training job of `scripts/train.py`: data, model, `Trainer` with the recipe, evaluation, model card, push."""

from __future__ import annotations

import copy
import errno
import logging
import os
import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import transformers
from transformers import default_data_collator, set_seed

from ..cpu_memory import keep_freed_cpu_memory_if
from ..data import IGNORE_INDEX, BadImageError, DataSource, check_labels, label_names, load_image_datasets
from ..data.decoding import with_transform
from ..data.loader import RepeatedAugmentationSampler
from ..data.sources import DIGITS_IMAGE_SIZE, class_names_of, image_size_from_data
from ..data.streams import StreamedExamples, StreamError, StreamPositionCallback, streamed_splits
from ..data.transforms import BatchAugmentation, SeededAugmentation, batch_mixer, eval_transform, train_transform
from ..distributed import replicas_agree, shard_for_accelerator
from ..hub import push_model_folder
from ..model_card import training_card
from .arguments import SWITCH, DataArguments, ModelArguments, RecipeArguments, fsdp_requested, parse_args
from .callbacks import BatchNormStatisticsCallback, EpochCallback, ModelEMACallback
from .model import add_lora_adapters, build_model, hub_options, image_processor_for


logger = logging.getLogger("ceit_hf.training")
MIN_FREE_BYTES = 16 * 1024 * 1024  # less free space in --output_dir fails the run (the main job's checkpoints: ~8 MiB)


def data_source(data_args: DataArguments, model_args: ModelArguments | None = None, **changes) -> DataSource:
    """The `ceit_hf.data` description of what the command line asks to load."""
    fields = {name: getattr(data_args, name) for name in DataSource.__dataclass_fields__ if hasattr(data_args, name)}
    if model_args is not None:
        fields.update(hub_options(model_args))
    return DataSource(**fields | changes)


def _trainer_class():  # noqa: C901 (the overrides count as its branches)
    from transformers import Trainer

    class CeiTTrainer(Trainer):
        """`Trainer` with uint8 batches normalised on their device, random erasing and Mixup/CutMix in training only
        (from the global generators, which Trainer checkpoints) and the repeated-augmentation sampler."""

        def __init__(self, *args, batch_augmentation=None, repeated_augmentation: int = 0, **kwargs):
            super().__init__(*args, **kwargs)
            self.batch_augmentation = batch_augmentation or BatchAugmentation()
            self.repeated_augmentation = repeated_augmentation

        def _prepare_inputs(self, inputs):
            inputs = super()._prepare_inputs(inputs)
            if "pixel_values" in inputs:
                inputs["pixel_values"] = self.batch_augmentation.normalize(inputs["pixel_values"])
            return inputs

        def training_step(self, model, inputs, *args, **kwargs):
            batch = self._prepare_inputs(inputs)
            batch["pixel_values"], batch["labels"] = self.batch_augmentation(batch["pixel_values"], batch["labels"])
            return super().training_step(model, batch, *args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):  # (a stream has its own DataLoader: never here)
            if self.repeated_augmentation <= 1:
                return super()._get_train_sampler(train_dataset)
            args, dataset = self.args, self.train_dataset if train_dataset is None else train_dataset
            return RepeatedAugmentationSampler(
                len(dataset), self.repeated_augmentation, args.world_size, args.per_device_train_batch_size, args.seed
            )

        def get_train_dataloader(self):
            if isinstance(self.train_dataset, StreamedExamples):  # split between the processes already
                return self.train_dataset.data_loader(self.args)
            return super().get_train_dataloader()

        def get_eval_dataloader(self, eval_dataset=None):
            # a stream's processes each read their own share in step, and the gathering drops the padding
            dataset = self.eval_dataset if eval_dataset is None else eval_dataset
            if isinstance(dataset, StreamedExamples):
                loader = dataset.data_loader(self.args, self.accelerator)
                self.gather_function = loader.gather  # (the evaluation loop resets it when it ends)
                return loader
            return super().get_eval_dataloader(eval_dataset)

    return CeiTTrainer


def soft_target_loss(smoothing: float):
    """Trainer's `compute_loss_func`: label-smoothed cross-entropy of class indices or (mixed) probabilities."""

    def loss(outputs, labels, num_items_in_batch=None):
        return torch.nn.functional.cross_entropy(outputs["logits"].float(), labels, label_smoothing=smoothing)

    return loss


def compute_metrics_fn(num_labels: int):
    """Top-1/top-5 accuracy of the images that decoded, and the number of those that did not (`bad_images`)."""
    from ..metrics import TopKAccuracy  # (evaluate and sklearn: not imported for --help)

    metric = TopKAccuracy(top_k=(5,) if num_labels >= 5 else ())

    def compute(eval_pred):
        logits = eval_pred.predictions[0] if isinstance(eval_pred.predictions, tuple) else eval_pred.predictions
        labels = np.asarray(eval_pred.label_ids)
        kept = labels != IGNORE_INDEX
        results = metric.compute(predictions=np.asarray(logits)[kept], references=labels[kept])
        return {**results, "bad_images": int((~kept).sum())}

    return compute


def train_and_evaluate(
    model, raw, processor, labels: list[str], data_args: DataArguments, recipe_args: RecipeArguments, training_args
):
    """Trains `model` (any transformers image classifier) on `raw["train"]` with the recipe, saves it, evaluates it
    (and its EMA) on `raw["validation"]` and writes the metrics. Returns (the trainer, the final metrics)."""
    for split in sorted({"train", "validation"} & set(raw)):  # (a stream checks each example as it is read)
        check_labels(raw[split], data_args.label_column_name, model.config.num_labels, split)
    if recipe_args.sync_batchnorm:
        if not torch.cuda.is_available():
            raise SystemExit("error: --sync_batchnorm needs CUDA devices (SyncBatchNorm has no CPU implementation).")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    size = (processor.crop_size["height"], processor.crop_size["width"])
    count = {split: "streamed" if data_args.streaming else len(raw[split]) for split in raw}
    logger.info(
        f"Model: {type(model).__name__}, {sum(p.numel() for p in model.parameters()):,} parameters, image size "
        f"{size}, {len(labels)} classes; {count['train']} training / {count.get('validation', 'no')} validation images"
    )
    recipe = {name: getattr(recipe_args, name) for name in ("crop_min_scale", "hflip", "auto_augment", "color_jitter")}
    augmentation = SeededAugmentation(train_transform(size, mean=processor.image_mean, **recipe), training_args.seed)
    callbacks = [EpochCallback(augmentation)]
    if data_args.streaming:
        train_set, eval_set = streamed_splits(
            raw,
            data_source(data_args),
            len(labels),
            augmentation,
            eval_transform(processor),
            seed=training_args.seed,
            shuffle_buffer_size=data_args.shuffle_buffer_size,
            rank=training_args.process_index,
            world_size=training_args.world_size,
        )
        callbacks.append(StreamPositionCallback(train_set, resume_from=training_args.resume_from_checkpoint))
    else:
        columns, policy = (data_args.image_column_name, data_args.label_column_name), data_args.bad_image_policy
        train_set = with_transform(raw["train"], *columns, augmentation, policy)
        eval_set = with_transform(raw["validation"], *columns, eval_transform(processor), policy, evaluation=True)
    ema = None
    if recipe_args.model_ema_decay:
        ema = ModelEMACallback(recipe_args.model_ema_decay, resume_from=training_args.resume_from_checkpoint)
        callbacks.append(ema)
    smoothing = training_args.label_smoothing_factor
    mix = batch_mixer(len(labels), recipe_args.mixup_alpha, recipe_args.cutmix_alpha)
    batch_augmentation = BatchAugmentation(processor.image_mean, processor.image_std, recipe_args.random_erasing, mix)
    trainer = _trainer_class()(
        model=model,
        args=training_args,
        train_dataset=train_set,
        eval_dataset=eval_set,
        data_collator=default_data_collator,
        processing_class=processor,
        compute_metrics=compute_metrics_fn(len(labels)),
        callbacks=callbacks,
        compute_loss_func=soft_target_loss(smoothing) if (mix or smoothing) else None,
        batch_augmentation=batch_augmentation,
        repeated_augmentation=recipe_args.repeated_augmentation,
    )
    prepare_distributed(trainer)
    train_result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    return trainer, save_and_evaluate(trainer, train_result.metrics, ema)


def save_and_evaluate(trainer, train_metrics: dict, ema) -> dict:
    """Saves the model and its training metrics; returns the metrics of it and its EMA (saved to OUTPUT_DIR/ema)."""
    if trainer.args.world_size > 1 and not trainer.is_fsdp_enabled:
        if replicas_agree(trainer.model):
            logger.info("The trained weights are identical on all %d processes.", trainer.args.world_size)
        else:
            logger.warning("The trained weights differ between processes; the saved model is process 0's.")
    trainer.save_model()
    trainer.log_metrics("train", train_metrics)
    trainer.save_metrics("train", train_metrics)
    trainer.save_state()
    metrics = {} if trainer.eval_dataset is None else trainer.evaluate()
    if not metrics:
        logger.info("No validation split: the trained model is not evaluated (nor given a model card).")
    if ema is not None:
        with ema.swapped_into(trainer.model):
            if metrics:
                metrics.update(trainer.evaluate(metric_key_prefix="eval_ema"))
            trainer.save_model(Path(trainer.args.output_dir) / "ema")
    if metrics:
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    return metrics


def check_output_dir(output_dir: str):
    """Fails before training when `output_dir` cannot be created or written, or has under `MIN_FREE_BYTES` free."""
    path = Path(output_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        free = shutil.disk_usage(path).free
    except OSError as error:
        raise SystemExit(f"error: cannot write to --output_dir {output_dir!r}: {error.strerror or error}.") from None
    if free < MIN_FREE_BYTES:
        raise SystemExit(
            f"error: cannot write to --output_dir {output_dir!r}: {os.strerror(errno.ENOSPC)} ({free // 1024} KiB "
            f"free, expected at least {MIN_FREE_BYTES // 2**20} MiB)."
        )


def set_torch_threads(threads: int | None) -> int:
    """Sets torch's intra-op threads when `threads` is positive; returns the previous count."""
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    return previous


def setup_logging(args=None):
    """INFO logs of `ceit_hf` on every process; with `args`, transformers' own at the level Trainer chooses for this
    process (`main` sets up ceit_hf's before parsing, so what parsing logs is shown)."""
    root = logging.getLogger("ceit_hf")
    if not root.handlers:
        handler = logging.StreamHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(logging.INFO)
    if args is not None:
        transformers.utils.logging.set_verbosity(args.get_process_log_level())


def match_gradient_layout(model) -> None:
    """Gives LeFF's depthwise weights `(C, 1, k, k)` the strides of their channels-last gradients, which DDP compares
    with its bucket views at every step ("Grad strides do not match bucket view strides")."""
    for module in model.modules():
        if isinstance(module, torch.nn.Conv2d) and module.groups > 1 and module.weight.shape[1] == 1:
            weight = module.weight.data
            height, width = weight.shape[2:]
            # set explicitly: with one input channel per group both layouts count as contiguous
            module.weight.data = weight.new_empty_strided(weight.shape, (height * width, 1, width, 1)).copy_(weight)


def prepare_distributed(trainer) -> None:
    """Logs the run as accelerate set it up (an accelerate config can turn on bf16 or FSDP without a flag of train.py).
    Under FSDP: CeiT's own FSDP2 sharding and BatchNorm statistics averaged over the ranks after each step, before the
    EMA takes them. FSDP asked for on CPU processes is logged with what runs instead."""
    args, accelerator = trainer.args, trainer.accelerator
    kind = " (FSDP2 mixed precision, BatchNorms in fp32)" if trainer.is_fsdp_enabled else " autocast"
    precision = "fp32" if accelerator.mixed_precision == "no" else accelerator.mixed_precision + kind
    logger.info(
        f"Distributed setup: world size {args.world_size}, process rank {args.process_index}, "
        f"device {args.device}, {accelerator.distributed_type.value}, precision {precision}, "
        f"per-device batch {args.per_device_train_batch_size}, gradient accumulation "
        f"{args.gradient_accumulation_steps}, torch threads {torch.get_num_threads()}"
    )
    if trainer.is_fsdp_enabled:
        shard_for_accelerator(trainer.model, accelerator)
        ema = trainer.pop_callback(ModelEMACallback)
        trainer.add_callback(BatchNormStatisticsCallback())
        if ema is not None:
            trainer.add_callback(ema)
        return
    if fsdp_requested(args):
        device, processes = args.device.type, args.world_size
        logger.warning(
            "FSDP was asked for, but accelerate runs FSDP only on GPUs and other accelerators: %s instead, without "
            "sharding (the EMA, if any, is a full copy on each process).",
            f"these {processes} {device} processes train with DDP ({accelerator.distributed_type.value})"
            if processes > 1
            else f"this {device} process trains alone",
        )
    if args.world_size > 1:
        match_gradient_layout(trainer.model)


def prepare_job(model_args, data_args, recipe_args, data_seed: int, needs_validation: bool = True):
    """(the data splits, the class names, the image size, the model, its image processor) of a run. Without
    `needs_validation` a stream may have no validation split."""
    source = data_source(data_args, model_args, needs_validation=needs_validation)
    raw = load_image_datasets(source, data_seed)
    labels = label_names(raw["train"], data_args.label_column_name, class_names_of(source))
    image_size = model_args.image_size  # from scratch: chosen from the data (32 for the digits) unless given
    if image_size is None and not (model_args.model_name_or_path or model_args.preset):
        image_size = (
            DIGITS_IMAGE_SIZE if data_args.bundled else image_size_from_data(raw["train"], data_args.image_column_name)
        )
    model = build_model(model_args, recipe_args, labels, image_size)
    if hasattr(model, "set_leff_recompute"):  # a CeiT (train.py also fine-tunes other classifiers)
        model.set_leff_recompute(SWITCH[model_args.leff_recompute])
        model.set_stem_recompute(SWITCH[model_args.stem_recompute])
    processor = image_processor_for(model_args, model)
    if model_args.lora_rank:
        model = add_lora_adapters(model, model_args)
    return raw, labels, image_size, model, processor


def main(argv: list[str] | None = None) -> dict:
    """The training job: parse, load data, build the model, train with Trainer, evaluate, save, card, push."""
    argv = list(sys.argv[1:] if argv is None else argv)
    setup_logging()
    model_args, data_args, recipe_args, training_args = parse_args(argv)
    setup_logging(training_args)
    if training_args.process_index == 0:
        check_output_dir(training_args.output_dir)
    set_torch_threads(recipe_args.torch_threads)
    if keep_freed_cpu_memory_if(SWITCH[recipe_args.keep_freed_cpu_memory], training_args.device):
        logger.info("Freed CPU memory is kept for the next step (glibc's heap; --keep_freed_cpu_memory)")
    set_seed(training_args.seed)
    evaluates = training_args.eval_strategy != "no"
    raw, labels, _, model, processor = prepare_job(model_args, data_args, recipe_args, training_args.seed, evaluates)
    # Trainer would push every checkpoint (with its pickled optimizer state); the final model is pushed below.
    push_requested, training_args.push_to_hub = training_args.push_to_hub, False
    try:
        trainer, metrics = train_and_evaluate(model, raw, processor, labels, data_args, recipe_args, training_args)
    except (BadImageError, StreamError) as error:  # --bad_image_policy stop, a stream that cannot go on: one line
        raise SystemExit(str(error)) from None
    if not trainer.is_world_process_zero():
        return metrics
    output_dir = training_args.output_dir
    if model_args.merge_lora:  # a plain CeiT folder that loads with from_pretrained
        merged = Path(output_dir) / "merged"
        copy.deepcopy(trainer.model).merge_and_unload().save_pretrained(merged)
        processor.save_pretrained(merged)
        logger.info("LoRA adapters merged into %s", merged)
    if "eval_accuracy" in metrics:  # (a stream trained without a validation split has no score to report)
        scheduler = training_args.lr_scheduler_type
        training_card(
            model_name=Path(output_dir).resolve().name,
            repo_id=training_args.hub_model_id,
            model=trainer.model,
            base_model=model_args.model_name_or_path,
            preset=model_args.preset,
            dataset=data_args.dataset_name,
            data_description=data_args.train_dir
            or data_args.dataset_name
            or "sklearn-digits (bundled with scikit-learn)",
            metrics=metrics,
            hyperparameters={
                "learning_rate": training_args.learning_rate,
                "epochs": training_args.num_train_epochs,
                "per_device_train_batch_size": training_args.per_device_train_batch_size,
                "world_size": training_args.world_size,
                "weight_decay": training_args.weight_decay,
                "lr_scheduler": str(getattr(scheduler, "value", scheduler)),
                "seed": training_args.seed,
            },
            command=shlex.join(["python", "scripts/train.py", *argv]),
        ).save(Path(output_dir) / "README.md")
    if push_requested:
        push_model_folder(
            output_dir,
            training_args.hub_model_id,
            token=training_args.hub_token,
            private=bool(training_args.hub_private_repo),
            revision=training_args.hub_revision,
        )
    return metrics
