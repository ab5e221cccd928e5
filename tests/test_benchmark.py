"""The benchmark harness runs and reports what it claims (speed targets live in scripts/benchmark.py's output,
not in tests)."""

import json

from ceit_hf import benchmarking
from ceit_hf.benchmarking import build_pair, format_table, run_benchmark, write_json


def test_pair_has_the_same_width_depth_and_heads():
    models = build_pair("tiny")
    ceit, deit = models["ceit_tiny"].config, models["deit_tiny"].config
    assert (ceit.d_model, ceit.num_encoder_blocks, ceit.encoder_num_heads) == (
        deit.hidden_size, deit.num_hidden_layers, deit.num_attention_heads)
    assert deit.intermediate_size == 4 * deit.hidden_size


def test_benchmark_reports_medians_ratios_and_memory(tmp_path):
    results = run_benchmark(sizes=("tiny",), batch_sizes=(1,), train_batch_size=2, rounds=2, min_seconds=0.0,
                            log=lambda _: None)
    measurements = {"infer_bs1_float32", "train_bs2_float32"}
    for name in ("ceit_tiny", "deit_tiny"):
        model = results["models"][name]
        assert set(model["images_per_second"]) == measurements
        assert all(len(v) == 2 for v in model["all_rounds"].values())
        assert all(v > 0 for v in model["images_per_second"].values())
        assert model["peak_memory_mib"]["train_bs2_float32"] > 0
    table = format_table(results)
    assert "| tiny | infer_bs1_float32 |" in table and "CeiT/DeiT" in table
    write_json(results, tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["rounds"] == 2


def test_ratio_is_ceit_speed_over_deit_speed(monkeypatch):
    """With CeiT made to measure 4 img/s and DeiT 10 img/s, the reported ratio must be 0.4 and the medians exact."""
    from ceit_hf import CeiTForImageClassification

    def fake_time_once(model, optimizer, m, device, iterations):
        return 4.0 if isinstance(model, CeiTForImageClassification) else 10.0

    monkeypatch.setattr(benchmarking, "time_once", fake_time_once)
    monkeypatch.setattr(benchmarking, "peak_memory", lambda *args: 1)
    results = run_benchmark(sizes=("tiny",), batch_sizes=(1,), train_batch_size=2, rounds=3, min_seconds=0.0,
                            log=lambda _: None)
    assert results["models"]["ceit_tiny"]["images_per_second"]["infer_bs1_float32"] == 4.0
    assert results["ratios"]["tiny"] == {"infer_bs1_float32": 0.4, "train_bs2_float32": 0.4}
