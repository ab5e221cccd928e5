# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Evaluate an image classifier (a folder or a Hub repo) on a labelled dataset: top-1/top-5 accuracy and
throughput. The engine of `scripts/evaluate.py`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from transformers import AutoModelForImageClassification

from .inference import optimize_if_ceit
from .metrics import TopKAccuracy
from .training.data import check_image_folder
from .training import DataArguments, ModelArguments, label_names, load_image_datasets, load_image_processor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Top-1/top-5 accuracy and images/s of an image classifier on a labelled dataset. Without "
        "--dataset_name or --validation_dir, the bundled digits validation split of the main training job is used."
    )
    parser.add_argument("--model", required=True, help="model folder or Hub repo id")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--dataset_name", help="dataset on the Hub")
    data.add_argument("--validation_dir", help="images in one sub-folder per class")
    parser.add_argument("--dataset_config_name")
    parser.add_argument("--split", default=None, help="split to evaluate (default: validation, else test)")
    parser.add_argument("--image_column_name", default="image")
    parser.add_argument("--label_column_name", default="label")
    parser.add_argument("--max_eval_samples", type=int)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--image_processor", help="image processor to use instead of the model's (default: the "
                        "model's own, else the CeiT evaluation transform at the model's image size)")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--no_optimize", action="store_true",
                        help="run the plain model instead of ceit_hf.optimize_for_inference (same logits, slower)")
    parser.add_argument("--output_json", help="write the results here (they are also printed)")
    return parser


def load_split(args):
    import datasets

    if args.validation_dir is not None:
        check_image_folder(args.validation_dir, "--validation_dir")
        return datasets.load_dataset("imagefolder", data_dir=args.validation_dir, split="train")
    if args.dataset_name is not None:
        raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
        split = args.split or next((s for s in ("validation", "val", "test") if s in raw), None)
        if split not in raw:
            raise SystemExit(f"error: split {split!r} is not in the dataset (splits: {list(raw)}); pass --split.")
        return raw[split]
    return load_image_datasets(DataArguments(), ModelArguments(), seed=0)["validation"]


def label_mapping(dataset, label_column: str, config) -> np.ndarray | None:
    """dataset label index -> model label id, matched by class name when both sides have names (so folders
    sorted differently from the model's labels still score correctly); None to use the indices as they are."""
    names = label_names(dataset, label_column)
    label2id = {str(k): v for k, v in (config.label2id or {}).items()}
    if all(name in label2id for name in names):
        return np.array([label2id[name] for name in names])
    if len(names) > config.num_labels:
        raise SystemExit(
            f"error: the dataset has {len(names)} classes, the model {config.num_labels}, and their names do not match."
        )
    return None


def evaluate_model(args) -> dict:
    model = AutoModelForImageClassification.from_pretrained(
        args.model, trust_remote_code=args.trust_remote_code, dtype=getattr(torch, args.dtype)
    ).to(args.device).eval()
    plain = model
    if not args.no_optimize:
        model = optimize_if_ceit(model)
    processor = load_image_processor(args.image_processor or args.model, model, trust_remote_code=args.trust_remote_code)
    dataset = load_split(args)
    if args.max_eval_samples is not None:
        dataset = dataset.select(range(min(args.max_eval_samples, len(dataset))))
    mapping = label_mapping(dataset, args.label_column_name, model.config)
    metric = TopKAccuracy(top_k=(5,) if model.config.num_labels >= 5 else ())
    model_time, total = 0.0, 0
    start = time.perf_counter()
    with torch.inference_mode():
        for begin in tqdm(range(0, len(dataset), args.batch_size), desc="Evaluating", unit="batch"):
            batch = dataset[begin : begin + args.batch_size]
            images = [image.convert("RGB") for image in batch[args.image_column_name]]
            labels = np.asarray(batch[args.label_column_name])
            if mapping is not None:
                labels = mapping[labels]
            pixel_values = processor(images, return_tensors="pt")["pixel_values"].to(args.device, model.dtype)
            tick = time.perf_counter()
            logits = model(pixel_values).logits
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            model_time += time.perf_counter() - tick
            metric.add_batch(predictions=logits.float().cpu().numpy(), references=labels)
            total += len(labels)
    elapsed = time.perf_counter() - start
    results = {f"eval_{k}": v for k, v in metric.compute().items()}
    results.update(
        model=str(args.model),
        num_images=total,
        images_per_second=total / elapsed,
        model_images_per_second=total / model_time if model_time else None,
        device=str(args.device),
        dtype=args.dtype,
        batch_size=args.batch_size,
        optimized_for_inference=model is not plain,
    )
    return results


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    results = evaluate_model(args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(text + "\n")
    return results
