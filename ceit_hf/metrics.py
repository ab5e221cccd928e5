# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""Top-k accuracy as an `evaluate` metric that, unlike the Hub's "accuracy" script, needs no download."""

from __future__ import annotations

import datasets
import evaluate
import numpy as np


class TopKAccuracy(evaluate.Metric):
    """`compute(predictions=logits, references=labels)`: `accuracy`, `top{k}_accuracy` per `k` in top_k <= classes."""

    def __init__(self, top_k: tuple[int, ...] = (5,), **kwargs):
        super().__init__(**kwargs)
        self.top_k = tuple(top_k)

    def _info(self) -> evaluate.MetricInfo:
        return evaluate.MetricInfo(
            description="Top-1 and top-k classification accuracy from per-class scores.",
            citation="",
            inputs_description="predictions: (N, num_classes) scores; references: (N,) class indices.",
            features=datasets.Features(
                {"predictions": datasets.Sequence(datasets.Value("float32")), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        scores, labels = np.asarray(predictions, dtype=np.float32), np.asarray(references, dtype=np.int64)
        if scores.ndim != 2 or len(scores) != len(labels):
            raise ValueError(f"Expected (N, num_classes) scores for N labels, got {scores.shape} and {labels.shape}.")
        results = {"accuracy": float((scores.argmax(-1) == labels).mean())}
        for k in (k for k in self.top_k if scores.shape[1] >= k):
            top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            results[f"top{k}_accuracy"] = float((top == labels[:, None]).any(axis=1).mean())
        return results


def accuracy_metrics(logits, labels, top_k: tuple[int, ...] = (5,)) -> dict[str, float]:
    """`TopKAccuracy` on one batch of logits and labels."""
    return TopKAccuracy(top_k=top_k).compute(predictions=logits, references=labels)
