# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Evaluate an image classifier (a folder or a Hub repo, or a LoRA adapter of one) on a labelled dataset: top-1/top-5
accuracy and throughput. The engine of `scripts/validate.py`."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import datasets
import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import AutoConfig, AutoModelForImageClassification
from transformers.utils import find_adapter_config_file
from transformers.utils import logging as hf_logging

from .data.decoding import BadImageError, decode_image, undecoded
from .data.sources import DataSource, image_folder_dataset, label_names, load_image_datasets
from .inference import optimize_if_ceit
from .metrics import TopKAccuracy
from .training import load_image_processor


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Top-1/top-5 accuracy and images/s of an image classifier on a labelled dataset. Without "
        "--dataset_name or --validation_dir, the bundled digits validation split of the main training job is used."
    )
    parser.add_argument("--model", required=True, help="model folder or Hub id, or LoRA adapter merged into its base")
    parser.add_argument("--base_model", help="base model of an adapter --model (default: its adapter_config.json's)")
    data = parser.add_mutually_exclusive_group()
    data.add_argument("--dataset_name", help="dataset on the Hub")
    data.add_argument("--validation_dir", help="images in one sub-folder per class")
    parser.add_argument("--dataset_config_name")
    parser.add_argument("--split", help="split to evaluate (default: validation, else test)")
    parser.add_argument("--image_column_name", default="image")
    parser.add_argument("--label_column_name", default="label")
    parser.add_argument("--max_eval_samples", type=int)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default="float32")
    parser.add_argument("--image_processor", help="default: the model's, else the CeiT evaluation transform")
    parser.add_argument("--trust_remote_code", action="store_true")
    parser.add_argument("--no_optimize", action="store_true", help="skip optimize_for_inference (same logits)")
    parser.add_argument("--output_json", help="write the results here (they are also printed)")
    return parser


def load_split(args):
    if args.validation_dir is not None:
        return image_folder_dataset(args.validation_dir, "--validation_dir", DataSource.verify_images_limit)[0]
    if args.dataset_name is None:
        return load_image_datasets(DataSource(), seed=0)["validation"]
    raw = datasets.load_dataset(args.dataset_name, args.dataset_config_name)
    split = args.split or next((s for s in ("validation", "val", "test") if s in raw), None)
    if split not in raw:
        raise SystemExit(f"error: split {split!r} is not in the dataset (splits: {list(raw)}); pass --split.")
    return raw[split]


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


def load_lora_classifier(adapter: str, base_model: str | None = None, trust_remote_code: bool = False):
    """`adapter` merged into its base model (default: adapter_config.json's) with the adapter's labels, fp32, eval."""
    try:
        import peft
    except ImportError:
        raise SystemExit(f"error: {adapter} is a LoRA adapter, which needs peft: pip install -e '.[peft]'.") from None

    base = base_model or peft.PeftConfig.from_pretrained(adapter).base_model_name_or_path
    try:
        config = AutoConfig.from_pretrained(base, trust_remote_code=trust_remote_code)
    except (OSError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise SystemExit(
            f"error: {adapter} is a LoRA adapter of the base model {base!r}, which cannot be loaded ({reason}); "
            "give the base model's folder or Hub id with --base_model."
        ) from None
    # the adapter's labels: its (or merged/'s) config.json's id2label, else the size of the classifier saved with it
    for config_file in (Path(adapter) / "config.json", Path(adapter) / "merged" / "config.json"):
        if config_file.is_file() and (id2label := json.loads(config_file.read_text(encoding="utf-8")).get("id2label")):
            config.id2label = {int(k): v for k, v in id2label.items()}
            config.label2id = {name: index for index, name in config.id2label.items()}
            break
    else:
        weights = peft.utils.load_peft_weights(adapter, device="cpu")
        heads = ("classifier.weight", "classifier.out_proj.weight")
        sizes = [w.shape[0] for k, w in weights.items() if k.endswith(heads)]
        if sizes and sizes[-1] != config.num_labels:
            config.num_labels = sizes[-1]  # LABEL_0, LABEL_1, ...
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # "newly initialized classifier" would be wrong: the adapter brings it
    try:
        model = AutoModelForImageClassification.from_pretrained(
            base, config=config, ignore_mismatched_sizes=True, trust_remote_code=trust_remote_code, dtype=torch.float32
        )
    finally:
        hf_logging.set_verbosity(verbosity)
    return peft.PeftModel.from_pretrained(model, adapter).merge_and_unload().eval()


def load_model(args):
    """(the model of `args.model` in fp32, eval mode; where its image processor is) for evaluate_model."""
    if find_adapter_config_file(args.model) is not None:
        model = load_lora_classifier(args.model, args.base_model, trust_remote_code=args.trust_remote_code)
        has_processor = not Path(args.model).is_dir() or (Path(args.model) / "preprocessor_config.json").is_file()
        return model, args.model if has_processor else (args.base_model or model.name_or_path)
    if args.base_model:
        raise SystemExit(f"error: --base_model is for LoRA adapters, but {args.model} has no adapter_config.json.")
    kwargs = {"trust_remote_code": args.trust_remote_code, "dtype": torch.float32}
    return AutoModelForImageClassification.from_pretrained(args.model, **kwargs).eval(), args.model


def evaluate_model(args) -> dict:
    model, processor_source = load_model(args)
    plain, dtype = model.to(args.device), getattr(torch, args.dtype)
    # cast after `optimize_for_inference`, which folds the BatchNorms in fp32
    model = (plain if args.no_optimize else optimize_if_ceit(plain, dtype=dtype)).to(dtype)
    processor = load_image_processor(
        args.image_processor or processor_source, model, trust_remote_code=args.trust_remote_code
    )
    dataset = load_split(args)
    if args.max_eval_samples is not None:
        dataset = dataset.select(range(min(args.max_eval_samples, len(dataset))))
    mapping = label_mapping(dataset, args.label_column_name, model.config)
    feature = dataset.features[args.image_column_name]
    dataset = undecoded(dataset, args.image_column_name)  # decoded below, so that a file that fails is named
    metric = TopKAccuracy(top_k=(5,) if model.config.num_labels >= 5 else ())
    model_time, total = 0.0, 0
    start = time.perf_counter()
    with torch.inference_mode():
        for begin in tqdm(range(0, len(dataset), args.batch_size), desc="Evaluating", unit="batch"):
            batch = dataset[begin : begin + args.batch_size]
            try:
                images = [decode_image(value, feature).convert("RGB") for value in batch[args.image_column_name]]
            except BadImageError as error:  # a score without some images would not be the data set's
                raise SystemExit(str(error)) from None
            labels = np.asarray(batch[args.label_column_name])
            labels = labels if mapping is None else mapping[labels]
            pixel_values = processor(images, return_tensors="pt")["pixel_values"].to(args.device, model.dtype)
            tick = time.perf_counter()
            logits = model(pixel_values).logits
            if args.device.startswith("cuda"):
                torch.cuda.synchronize()
            model_time += time.perf_counter() - tick
            metric.add_batch(predictions=logits.float().cpu().numpy(), references=labels)
            total += len(labels)
    elapsed = time.perf_counter() - start
    return {
        **{f"eval_{k}": v for k, v in metric.compute().items()},
        "model": str(args.model),
        "num_images": total,
        "images_per_second": total / elapsed,
        "model_images_per_second": total / model_time if model_time else None,
        "device": str(args.device),
        "dtype": str(model.dtype).removeprefix("torch."),  # the dtype the model really ran in
        "batch_size": args.batch_size,
        "optimized_for_inference": model is not plain,
    }


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)
    results = evaluate_model(args)
    text = json.dumps(results, indent=2)
    print(text)
    if args.output_json:
        Path(args.output_json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.output_json).write_text(text + "\n", encoding="utf-8")
    return results
