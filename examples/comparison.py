# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""CeiT vs DeiT of (nearly) equal size under one training budget: the paper's convergence claim at small scale.

`run_comparison(argv)` (the logic of `examples/compare_with_deit.py`) trains, for every seed, the small CeiT that
the project's main job trains (`ceit_hf.training.small_config`) and a transformers `DeiTForImageClassification`
matched to it, both through the project's own training job (`ceit_hf.training.train_and_evaluate`: the same
`CeiTTrainer`, data, image size, augmentation, optimizer, learning-rate schedule, epoch budget and seed), evaluates
them after every epoch, and writes `comparison.json` and `comparison.png` (validation accuracy vs epoch).

The DeiT is sized by one rule (`deit_config_for`): CeiT's width, attention heads, MLP ratio (4), LayerNorm eps,
dropouts (0) and token grid (its patch is the CeiT's total stride: stem x4 times CeiT's patch, so 32 px images give
both models a 4x4 grid), with one more block than CeiT's encoder blocks (CeiT's LCA block is a fifth transformer
block). On 32x32 digits that is 264,330 parameters against CeiT's 279,978 (-5.6%).

`comparison.json`:

    {"ceit": {"params": int, "seeds": [0, 1], "curves": {"0": [acc after epoch 1, ...], ...},
              "final_accuracy": mean over seeds of the last epoch's accuracy},
     "deit": {... the same ...},
     "epochs_to_reach": {...},  # see `epochs_to_reach_summary`
     ...extra keys: summary (spread, best, wall time per model), models (both configs), budget (the recipe),
        data, machine, wall_time_s, command}

Accuracies are fractions (0..1) of the validation split; the curves are read from `trainer.state.log_history`.
"""

from __future__ import annotations

import argparse
import gc
import json
import logging
import os
import shlex
import statistics
import sys
import time
from pathlib import Path

import torch

from benchmarks.common import machine_info
from benchmarks.models import deit_config_for as _deit_config_for
from ceit_hf.training import (
    build_model,
    check_output_dir,
    parse_args,
    prepare_job,
    set_torch_threads,
    setup_logging,
    train_and_evaluate,
)


logger = logging.getLogger("ceit_hf.examples.comparison")

MODELS = ("ceit", "deit")
LABELS = {"ceit": "CeiT", "deit": "DeiT"}
COLORS = {"ceit": "tab:blue", "deit": "tab:orange"}
DEFAULT_EPOCHS = 40
DEFAULT_SEEDS = (0, 1)
# Every run uses the same train/validation split (and the same `--max_*_samples` subset), whatever its seed.
DATA_SEED = 0
MAX_PARAM_GAP = 0.15
# Flags the comparison sets itself (per model and seed), or that would make the two models differ.
RESERVED_FLAGS = {
    "output_dir": "--output_dir",
    "seed": "--seeds",
    "num_train_epochs": "--epochs",
    "max_steps": "--epochs",
    "model_name_or_path": None,
    "preset": None,
    "config_overrides": None,
    "resume_from_checkpoint": None,
    "push_to_hub": None,
    "eval_strategy": None,
}
# Defaults of every run of the comparison that the user may override: no checkpoints (the final models are still
# saved), no progress bars, no reporting integrations.
RUN_DEFAULTS = {"save_strategy": "no", "disable_tqdm": "true", "report_to": "none"}


# ----------------------------------------------------------------------------------------------------- models


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def deit_config_for(ceit_config):
    """The comparison's DeiT: CeiT's width, heads, MLP ratio, LayerNorm eps, dropouts and token grid, and CeiT's
    encoder blocks + 1 (for the LCA block)."""
    return _deit_config_for(ceit_config, extra_blocks=1)


def build_deit(ceit_config):
    from transformers import DeiTForImageClassification

    return DeiTForImageClassification(deit_config_for(ceit_config))


# ------------------------------------------------------------------------------------------------ the numbers


def eval_curve(log_history: list[dict], epochs: int, key: str = "eval_accuracy") -> list[float]:
    """Validation accuracy after each epoch 1..`epochs`, from `trainer.state.log_history` (the evaluation at the
    end of each epoch; the final `trainer.evaluate()` logs the last epoch a second time and is skipped)."""
    by_epoch: dict[int, float] = {}
    for entry in log_history:
        if key in entry and "epoch" in entry:
            by_epoch.setdefault(int(round(entry["epoch"])), float(entry[key]))
    missing = [e for e in range(1, epochs + 1) if e not in by_epoch]
    if missing:
        raise ValueError(f"No {key} logged after epoch(s) {missing} (logged: {sorted(by_epoch)}).")
    return [by_epoch[e] for e in range(1, epochs + 1)]


def first_epoch_reaching(curve: list[float], target: float, tolerance: float = 1e-9) -> int | None:
    """The first epoch (1-based) whose accuracy is at least `target`, or None."""
    return next((i + 1 for i, acc in enumerate(curve) if acc >= target - tolerance), None)


def mean_curve(curves: dict[str, list[float]]) -> list[float]:
    return [statistics.fmean(values) for values in zip(*curves.values())]


def epochs_to_reach_summary(ceit: dict, deit: dict) -> dict:
    """Epochs each model needs to reach DeiT's final accuracy.

    `ceit`/`deit` (the headline numbers): the first epoch at which the model's mean-over-seeds curve reaches DeiT's
    `final_accuracy` (the mean over seeds of DeiT's last-epoch accuracy), or None if it never does (DeiT's own
    value is at most the budget, by construction). `per_seed`: the same, seed by seed, against DeiT's final
    accuracy with the same seed (same initialisation seed, augmentation and data order), with its mean over seeds
    in `per_seed_mean` (None when some seed never reaches it). `speedup`: DeiT's epochs / CeiT's (None if either
    is None)."""
    target = deit["final_accuracy"]
    result = {
        "definition": (
            "first epoch (1-based) at which the model's validation accuracy, averaged over seeds epoch by epoch, "
            "reaches DeiT's final_accuracy (mean over seeds of the last epoch); null if never. per_seed: the same "
            "for each seed against DeiT's final accuracy with that seed; per_seed_mean: their mean over seeds "
            "(null if a seed never reaches it)"
        ),
        "target_accuracy": target,
    }
    for name, model in (("ceit", ceit), ("deit", deit)):
        result[name] = first_epoch_reaching(mean_curve(model["curves"]), target)
    per_seed = {name: {} for name in MODELS}
    for seed, deit_curve in deit["curves"].items():
        for name, model in (("ceit", ceit), ("deit", deit)):
            per_seed[name][seed] = first_epoch_reaching(model["curves"][seed], deit_curve[-1])
    result["per_seed"] = per_seed
    result["per_seed_mean"] = {
        name: (None if any(v is None for v in values.values()) else statistics.fmean(values.values()))
        for name, values in per_seed.items()
    }
    result["speedup"] = (result["deit"] / result["ceit"]) if result["ceit"] and result["deit"] else None
    return result


def model_summary(model: dict) -> dict:
    finals = [curve[-1] for curve in model["curves"].values()]
    return {
        "final_accuracy_min": min(finals),
        "final_accuracy_max": max(finals),
        "final_accuracy_std": statistics.pstdev(finals),
        "best_accuracy_mean": statistics.fmean(max(curve) for curve in model["curves"].values()),
    }


# ------------------------------------------------------------------------------------------------------ plot


def plot_comparison(result: dict, path: str | os.PathLike) -> None:
    """Validation accuracy vs epoch: the mean over seeds as a line, the min-max over seeds as a band, for both
    models; DeiT's final accuracy as a dotted line, and a star where each mean curve first reaches it. The right
    panel zooms on the top of the curves."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    target = 100 * result["epochs_to_reach"]["target_accuracy"]
    seeds = result["ceit"]["seeds"]
    fig, axes = plt.subplots(1, 2, figsize=(12, 5.4), dpi=100)
    for ax in axes:
        for name in MODELS:
            model = result[name]
            curves = 100 * np.array([model["curves"][str(s)] for s in model["seeds"]])
            epochs = np.arange(1, curves.shape[1] + 1)
            mean = curves.mean(axis=0)
            reach = result["epochs_to_reach"][name]
            label = (
                f"{LABELS[name]} ({model['params']:,} params): final {100 * model['final_accuracy']:.1f}%, "
                f"reaches DeiT's final accuracy at epoch {reach if reach is not None else '- (never)'}"
            )
            ax.plot(epochs, mean, color=COLORS[name], lw=2, marker="o", ms=3, label=label)
            if len(curves) > 1:
                ax.fill_between(
                    epochs,
                    curves.min(axis=0),
                    curves.max(axis=0),
                    color=COLORS[name],
                    alpha=0.2,
                    lw=0,
                    label=f"{LABELS[name]}: min-max over seeds",
                )
            if reach is not None:
                ax.plot([reach], [mean[reach - 1]], marker="*", ms=15, color=COLORS[name], mec="black", zorder=5)
        ax.axhline(target, color="gray", ls=":", lw=1.5, label=f"DeiT's final accuracy ({target:.1f}%)")
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy (%)")
        ax.grid(alpha=0.3)
        ax.set_xlim(0.5, len(epochs) + 0.5)
    axes[0].set_ylim(0, 100.5)
    axes[0].set_title("all epochs")
    bottom = max(0.0, np.floor(target - 10.0))
    axes[1].set_ylim(bottom, 100.5)
    axes[1].set_title(f"zoom on {bottom:.0f}-100%")
    handles, labels = axes[0].get_legend_handles_labels()
    lines = [i for i, label in enumerate(labels) if "min-max" not in label]  # first column: lines; second: bands
    order = lines + [i for i in range(len(labels)) if i not in lines]
    fig.legend(
        [handles[i] for i in order], [labels[i] for i in order], loc="lower center", ncol=2, fontsize=9, frameon=False
    )
    budget = result.get("budget") or {}
    fig.suptitle(
        f"CeiT ({result['ceit']['params']:,} params) vs DeiT ({result['deit']['params']:,} params): validation accuracy "
        f"per epoch on {result['data']['name']}\nsame data, augmentation, AdamW lr {budget.get('learning_rate', '?')}, "
        f"{budget.get('lr_scheduler', '?')} schedule and {len(epochs)}-epoch budget; mean and min-max over "
        f"{len(seeds)} seed{'s' if len(seeds) > 1 else ''}",
        fontsize=11,
    )
    fig.tight_layout(rect=(0, 0.1, 1, 1))
    fig.savefig(path)
    plt.close(fig)


# ------------------------------------------------------------------------------------------------------- run


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        allow_abbrev=False,  # --seed or --epoch must not pass for --seeds/--epochs
        description=(
            "Train a small CeiT and a DeiT of about the same size with the same data, recipe and epoch budget "
            "through the project's training job, for several seeds, and plot validation accuracy vs epoch. Other "
            "flags of scripts/train.py (--learning_rate, --per_device_train_batch_size, --recipe deit without "
            "drop path, ...) are passed to both models' runs."
        ),
    )
    parser.add_argument("--output_dir", required=True, help="Where comparison.json, comparison.png and the runs go.")
    parser.add_argument("--train_dir", help="Training images, one sub-folder per class (default: the bundled digits).")
    parser.add_argument("--validation_dir", help="Validation images, one sub-folder per class.")
    parser.add_argument(
        "--epochs", type=int, default=DEFAULT_EPOCHS, help=f"Epoch budget of every run ({DEFAULT_EPOCHS})."
    )
    parser.add_argument(
        "--seeds", type=int, nargs="+", default=list(DEFAULT_SEEDS), help="Seeds; each model trains once per seed."
    )
    parser.add_argument("--max_train_samples", type=int, help="Keep this many training examples (quick runs).")
    parser.add_argument("--max_eval_samples", type=int, help="Keep this many validation examples (quick runs).")
    parser.add_argument(
        "--torch_threads",
        type=int,
        help="torch's intra-op CPU threads (default: 1 on CPU, torch's default with CUDA; 0: torch's default). These "
        "models are too small to gain much from more threads, and on a shared CPU busy threads slow training by 5-20x.",
    )
    return parser


def split_args(argv: list[str]) -> tuple[argparse.Namespace, list[str]]:
    """(the comparison's options, the training flags both models' runs get)."""
    options, passthrough = build_parser().parse_known_args(argv)
    if options.epochs < 1:
        raise SystemExit("error: --epochs must be at least 1.")
    if len(set(options.seeds)) != len(options.seeds):
        raise SystemExit("error: --seeds must be distinct.")
    for arg in passthrough:
        if arg.startswith("--"):
            name = arg[2:].split("=", 1)[0].replace("-", "_")
            if name in RESERVED_FLAGS:
                instead = RESERVED_FLAGS[name]
                raise SystemExit(
                    f"error: --{name} cannot be given to the comparison"
                    + (f" (use {instead})." if instead else " (both models must get the same recipe and budget).")
                )
    training = list(passthrough)
    if options.train_dir:
        training += ["--train_dir", options.train_dir]
    if options.validation_dir:
        training += ["--validation_dir", options.validation_dir]
    for name in ("max_train_samples", "max_eval_samples"):
        if getattr(options, name) is not None:
            training += [f"--{name}", str(getattr(options, name))]
    return options, training


def run_argv(training: list[str], output_dir: Path, seed: int, epochs: int) -> list[str]:
    given = {arg[2:].split("=", 1)[0].replace("-", "_") for arg in training if arg.startswith("--")}
    defaults = [x for name, value in RUN_DEFAULTS.items() if name not in given for x in (f"--{name}", value)]
    return [
        *training,
        *defaults,
        "--output_dir",
        str(output_dir),
        "--seed",
        str(seed),
        "--num_train_epochs",
        str(epochs),
        "--eval_strategy",
        "epoch",
    ]


def run_comparison(argv: list[str] | None = None) -> dict:
    """Trains both models for every seed, writes `comparison.json` and `comparison.png`, returns the result."""
    argv = list(sys.argv[1:] if argv is None else argv)
    options, training = split_args(argv)
    threads = options.torch_threads
    previous = set_torch_threads((0 if torch.cuda.is_available() else 1) if threads is None else threads)
    try:
        return _run(options, training, argv)
    finally:
        torch.set_num_threads(previous)


def _run(options: argparse.Namespace, training: list[str], argv: list[str]) -> dict:
    from transformers import set_seed

    output_dir = Path(options.output_dir)
    check_output_dir(str(output_dir))
    started = time.perf_counter()

    # The data, labels, image size and image processor, as the main job would choose them; one split for all runs.
    model_args, data_args, recipe_args, training_args = parse_args(
        run_argv(training, output_dir / "runs", options.seeds[0], options.epochs)
    )
    setup_logging(training_args)  # each run's setup is logged by train_and_evaluate
    if recipe_args.drop_path:
        raise SystemExit(
            "error: --drop_path must be 0 (--recipe deit sets 0.1): transformers' DeiT has no stochastic depth, so the "
            "two models would not train with the same recipe."
        )
    # the same data, labels, image size and preprocessing for both models
    raw, labels, image_size, reference, processor = prepare_job(model_args, data_args, recipe_args, DATA_SEED)
    ceit_config = reference.config
    deit_config = deit_config_for(ceit_config)
    params = {"ceit": count_parameters(reference), "deit": count_parameters(build_deit(ceit_config))}
    gap = params["deit"] / params["ceit"] - 1
    logger.info(
        "CeiT %s parameters, DeiT %s parameters (%+.1f%%)", f"{params['ceit']:,}", f"{params['deit']:,}", 100 * gap
    )
    if abs(gap) > MAX_PARAM_GAP:
        raise SystemExit(f"error: DeiT's parameter count differs from CeiT's by {100 * gap:+.1f}% (more than 15%).")
    del reference

    curves = {name: {} for name in MODELS}
    run_times = {name: {} for name in MODELS}
    recipe = None
    for seed in options.seeds:
        for name in MODELS:
            folder = output_dir / "runs" / f"{name}-seed{seed}"
            model_args, data_args, recipe_args, training_args = parse_args(
                run_argv(training, folder, seed, options.epochs)
            )
            set_seed(seed)  # the same seed for each model's initialisation, data order and augmentation
            model = (
                build_model(model_args, recipe_args, labels, image_size) if name == "ceit" else build_deit(ceit_config)
            )
            assert count_parameters(model) == params[name]
            logger.info("Training %s, seed %d, %d epochs -> %s", LABELS[name], seed, options.epochs, folder)
            tic = time.perf_counter()
            trainer, metrics = train_and_evaluate(model, raw, processor, labels, data_args, recipe_args, training_args)
            run_times[name][str(seed)] = round(time.perf_counter() - tic, 1)
            curves[name][str(seed)] = eval_curve(trainer.state.log_history, options.epochs)
            logger.info(
                "%s seed %d: accuracy %s after epochs 1..%d (%.0f s)",
                LABELS[name],
                seed,
                " ".join(f"{100 * a:.1f}" for a in curves[name][str(seed)]),
                options.epochs,
                run_times[name][str(seed)],
            )
            if recipe is None:
                recipe = budget_of(training_args, recipe_args, options)
            del trainer, model
            gc.collect()

    result = {
        name: {
            "params": params[name],
            "seeds": list(options.seeds),
            "curves": curves[name],
            "final_accuracy": statistics.fmean(curve[-1] for curve in curves[name].values()),
        }
        for name in MODELS
    }
    result["epochs_to_reach"] = epochs_to_reach_summary(result["ceit"], result["deit"])
    result["summary"] = {
        name: {
            **model_summary(result[name]),
            "param_gap_vs_ceit": params[name] / params["ceit"] - 1,
            "wall_time_s_per_seed": run_times[name],
        }
        for name in MODELS
    }
    result["models"] = {
        "ceit": {"class": "ceit_hf.CeiTForImageClassification", "config": _config_dict(ceit_config)},
        "deit": {
            "class": "transformers.DeiTForImageClassification",
            "config": _config_dict(deit_config),
            "sizing_rule": "CeiT's width, heads, MLP ratio, LayerNorm eps, dropouts and token grid "
            "(patch = image size / CeiT's grid); CeiT's encoder blocks + 1 (its LCA block)",
        },
    }
    result["budget"] = recipe
    result["data"] = {
        "name": "sklearn digits (8x8 scans upscaled to 32x32)"
        if data_args.bundled
        else str(data_args.dataset_name or data_args.train_dir),
        "train_examples": len(raw["train"]),
        "validation_examples": len(raw["validation"]),
        "num_labels": len(labels),
        "image_size": image_size,
        "split_seed": DATA_SEED,
    }
    result["machine"] = machine_info()
    result["wall_time_s"] = round(time.perf_counter() - started, 1)
    result["command"] = shlex.join(["python", "examples/compare_with_deit.py", *argv])

    (output_dir / "comparison.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_comparison(result, output_dir / "comparison.png")
    reach = result["epochs_to_reach"]
    logger.info(
        "CeiT final %.2f%%, DeiT final %.2f%%; epochs to reach DeiT's final accuracy: CeiT %s, DeiT %s; %s and %s "
        "written in %.0f s",
        100 * result["ceit"]["final_accuracy"],
        100 * result["deit"]["final_accuracy"],
        reach["ceit"],
        reach["deit"],
        output_dir / "comparison.json",
        output_dir / "comparison.png",
        result["wall_time_s"],
    )
    return result


def budget_of(training_args, recipe_args, options) -> dict:
    """The recipe both models trained with (identical by construction: the same flags for every run)."""
    scheduler = training_args.lr_scheduler_type
    return {
        "epochs": options.epochs,
        "seeds": list(options.seeds),
        "optimizer": str(getattr(training_args.optim, "value", training_args.optim)),
        "learning_rate": training_args.learning_rate,
        "weight_decay": training_args.weight_decay,
        "lr_scheduler": str(getattr(scheduler, "value", scheduler)),
        "warmup_steps": training_args.warmup_steps,
        "per_device_train_batch_size": training_args.per_device_train_batch_size,
        "world_size": training_args.world_size,
        "label_smoothing_factor": training_args.label_smoothing_factor,
        "recipe": dict(vars(recipe_args).items()),
    }


def _config_dict(config) -> dict:
    return {k: v for k, v in config.to_dict().items() if k not in ("id2label", "label2id", "transformers_version")}


def main(argv: list[str] | None = None) -> dict:
    return run_comparison(argv)
