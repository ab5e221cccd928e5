"""`ceit_hf.metrics.TopKAccuracy`: top-1 and top-k accuracy from logits, against values worked out by hand."""

import numpy as np
import pytest

from ceit_hf.metrics import TopKAccuracy, accuracy_metrics


# Classes by decreasing score: row 0: 3 1 5 2 0 4; row 1: 2 0 1 5 3 4; row 2: 3, then five tied; row 3: 0 1 2 3 4 5.
LOGITS = np.array(
    [
        [0.1, 0.5, 0.2, 0.9, 0.0, 0.3],
        [2.0, 1.0, 3.0, 0.0, -1.0, 0.5],
        [0.0, 0.0, 0.0, 1.0, 0.0, 0.0],
        [5.0, 4.0, 3.0, 2.0, 1.0, 0.0],
    ],
    dtype=np.float32,
)
LABELS = np.array([3, 0, 3, 5])


def test_top1_and_top5_by_hand():
    # top-1: rows 0 and 2 right; top-5: row 3's class 5 is its lowest score, the others are in their top 5
    assert accuracy_metrics(LOGITS, LABELS) == {"accuracy": 0.5, "top5_accuracy": 0.75}
    # top-2 and top-3: row 1's class 0 is second, row 3's class 5 still out
    assert TopKAccuracy(top_k=(2, 3)).compute(predictions=LOGITS, references=LABELS) == {
        "accuracy": 0.5,
        "top2_accuracy": 0.75,
        "top3_accuracy": 0.75,
    }
    assert accuracy_metrics(LOGITS, [1, 2, 3, 0]) == {"accuracy": 0.75, "top5_accuracy": 1.0}


def test_ties():
    # a tie for the top score counts for the lowest class index only (numpy's argmax), not for each tied class
    tied = np.array([[1.0, 1.0, 0.0]])
    assert TopKAccuracy(top_k=()).compute(predictions=tied, references=[0]) == {"accuracy": 1.0}
    assert TopKAccuracy(top_k=()).compute(predictions=tied, references=[1]) == {"accuracy": 0.0}
    # three tied classes are the top 3 of six
    scores = np.array([[1.0, 1.0, 1.0, 0.0, 0.0, 0.0]] * 3)
    result = TopKAccuracy(top_k=(3,)).compute(predictions=scores, references=[0, 2, 3])
    assert result == {"accuracy": pytest.approx(1 / 3), "top3_accuracy": pytest.approx(2 / 3)}


def test_fewer_classes_than_k():
    three_classes = LOGITS[:, :3]
    assert accuracy_metrics(three_classes, [1, 0, 2, 0]) == {"accuracy": 0.5}  # no top-5 of 3 classes
    assert TopKAccuracy(top_k=(3, 5)).compute(predictions=three_classes, references=[1, 0, 2, 0]) == {
        "accuracy": 0.5,
        "top3_accuracy": 1.0,
    }
    five_classes = LOGITS[:, :5]  # top-5 of 5 classes: every label
    assert accuracy_metrics(five_classes, [4, 4, 4, 4])["top5_accuracy"] == 1.0


def test_batches_add_up_to_the_whole():
    metric = TopKAccuracy()
    metric.add_batch(predictions=LOGITS[:3], references=LABELS[:3])
    metric.add_batch(predictions=LOGITS[3:], references=LABELS[3:])
    assert metric.compute() == accuracy_metrics(LOGITS, LABELS)


def test_mismatched_inputs_are_refused():
    with pytest.raises(ValueError, match=r"predictions \(4\) and references \(3\)"):  # by `evaluate`
        accuracy_metrics(LOGITS, LABELS[:3])
    with pytest.raises(ValueError, match=r"Expected \(N, num_classes\) scores for N labels, got \(6,\)"):
        TopKAccuracy()._compute(LOGITS[0], LABELS)
