"""CeiT vs DeiT comparison (examples/compare_with_deit.py -> examples/comparison.py)."""

import json
import struct
from pathlib import Path

import pytest

from ceit_hf.training import small_config
from examples.comparison import (
    deit_config_for,
    epochs_to_reach_summary,
    eval_curve,
    first_epoch_reaching,
    run_comparison,
    split_args,
)


ROOT = Path(__file__).resolve().parents[2]
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_script_on_a_tiny_budget(tmp_path):
    """The script's job end to end (in-process: a second interpreter costs seconds of imports): 2 epochs, 2 seeds,
    a few digits; both models through the training job."""
    from examples.comparison import main

    out = tmp_path / "compare"
    main(
        [
            "--output_dir",
            str(out),
            "--epochs",
            "2",
            "--seeds",
            "0",
            "1",
            "--max_train_samples",
            "64",
            "--max_eval_samples",
            "32",
            "--torch_threads",
            "1",
        ]
    )

    data = json.loads((out / "comparison.json").read_text())
    assert {"ceit", "deit", "epochs_to_reach"} <= set(data)
    for name in ("ceit", "deit"):
        model = data[name]
        assert set(model) == {"params", "seeds", "curves", "final_accuracy"}
        assert isinstance(model["params"], int) and model["params"] > 0
        assert model["seeds"] == [0, 1]
        assert set(model["curves"]) == {"0", "1"}
        for curve in model["curves"].values():
            assert len(curve) == 2 and all(0.0 <= acc <= 1.0 for acc in curve)
        assert model["final_accuracy"] == pytest.approx(sum(c[-1] for c in model["curves"].values()) / 2)
    assert abs(data["deit"]["params"] / data["ceit"]["params"] - 1) <= 0.15
    reach = data["epochs_to_reach"]
    assert reach["target_accuracy"] == data["deit"]["final_accuracy"]
    assert reach["deit"] is not None and 1 <= reach["deit"] <= 2  # DeiT's mean curve ends at the target
    assert reach["ceit"] is None or 1 <= reach["ceit"] <= 2
    assert set(reach["per_seed"]["ceit"]) == {"0", "1"}
    assert data["budget"]["epochs"] == 2 and data["data"]["image_size"] == 32
    assert data["data"]["train_examples"] == 64 and data["data"]["validation_examples"] == 32
    assert data["models"]["deit"]["config"]["model_type"] == "deit"
    # both models trained through the training job (its saved outputs), with the same recipe
    for run in ("ceit-seed0", "ceit-seed1", "deit-seed0", "deit-seed1"):
        results = json.loads((out / "runs" / run / "all_results.json").read_text())
        assert results["epoch"] == 2.0
    deit_config = json.loads((out / "runs" / "deit-seed1" / "config.json").read_text())
    assert deit_config["model_type"] == "deit" and deit_config["patch_size"] == 8

    png = (out / "comparison.png").read_bytes()
    assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR"
    width, height = struct.unpack(">II", png[16:24])
    assert width >= 800 and height >= 400 and 20_000 < len(png) < 2_000_000


def test_deit_is_matched_to_the_small_ceit():
    from transformers import DeiTForImageClassification

    from ceit_hf import CeiTForImageClassification

    id2label = {i: str(i) for i in range(10)}
    for size, patch in ((32, 8), (48, 8), (96, 16)):
        ceit = small_config(size, id2label)
        deit = deit_config_for(ceit)
        assert deit.patch_size == patch and (size // patch, size // patch) == ceit.token_grid_size(size, size)
        assert (deit.hidden_size, deit.num_attention_heads, deit.num_hidden_layers) == (64, 2, 5)
        if size == 32:
            ceit_params = sum(p.numel() for p in CeiTForImageClassification(ceit).parameters())
            deit_params = sum(p.numel() for p in DeiTForImageClassification(deit).parameters())
            assert (ceit_params, deit_params) == (279_978, 264_330)


def test_curve_from_log_history_and_epochs_to_reach():
    history = [
        {"loss": 2.0, "epoch": 0.5},
        {"eval_accuracy": 0.5, "epoch": 1.0},
        {"eval_accuracy": 0.8, "epoch": 2.0},
        {"train_runtime": 1.0, "epoch": 2.0},
        {"eval_accuracy": 0.8, "epoch": 2.0},  # the final trainer.evaluate()
    ]
    assert eval_curve(history, 2) == [0.5, 0.8]
    with pytest.raises(ValueError, match="epoch"):
        eval_curve(history, 3)
    assert first_epoch_reaching([0.1, 0.5, 0.9], 0.5) == 2
    assert first_epoch_reaching([0.1, 0.5], 0.6) is None

    ceit = {"curves": {"0": [0.6, 0.9, 0.95], "1": [0.7, 0.95, 0.95]}, "final_accuracy": 0.95}
    deit = {"curves": {"0": [0.3, 0.6, 0.9], "1": [0.4, 0.7, 0.8]}, "final_accuracy": 0.85}
    reach = epochs_to_reach_summary(ceit, deit)
    assert reach["target_accuracy"] == 0.85
    assert (reach["ceit"], reach["deit"], reach["speedup"]) == (2, 3, 1.5)
    assert reach["per_seed"] == {"ceit": {"0": 2, "1": 2}, "deit": {"0": 3, "1": 3}}
    assert reach["per_seed_mean"] == {"ceit": 2.0, "deit": 3.0}
    slow = {"curves": {"0": [0.1, 0.2, 0.3], "1": [0.1, 0.2, 0.3]}, "final_accuracy": 0.3}
    reach = epochs_to_reach_summary(slow, deit)
    assert reach["ceit"] is None and reach["per_seed_mean"]["ceit"] is None and reach["speedup"] is None


def test_flags_that_would_make_the_models_differ_are_refused(tmp_path):
    options, training = split_args(
        ["--output_dir", str(tmp_path), "--learning_rate", "5e-4", "--max_train_samples", "10"]
    )
    assert options.epochs == 40 and options.seeds == [0, 1]
    assert training == ["--learning_rate", "5e-4", "--max_train_samples", "10"]
    for flags in (
        ["--config_overrides", "d_model=32"],
        ["--num_train_epochs", "3"],
        ["--seed", "4"],
        ["--model_name_or_path", "x"],
    ):
        with pytest.raises(SystemExit):
            split_args(["--output_dir", str(tmp_path), *flags])
    with pytest.raises(SystemExit, match="no stochastic depth"):
        run_comparison(["--output_dir", str(tmp_path), "--recipe", "deit"])
