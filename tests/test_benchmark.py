"""The benchmark harness runs and reports what it claims (speed targets live in scripts/benchmark.py's output,
not in tests)."""

import json

import torch

from ceit_hf import benchmarking
from ceit_hf.benchmarking import build_pair, format_table, run_benchmark, write_json


def test_pair_has_the_same_width_depth_and_heads():
    models = build_pair("tiny")
    ceit, deit = models["ceit_tiny"].config, models["deit_tiny"].config
    assert (ceit.d_model, ceit.num_encoder_blocks, ceit.encoder_num_heads) == (
        deit.hidden_size, deit.num_hidden_layers, deit.num_attention_heads)
    assert deit.intermediate_size == 4 * deit.hidden_size


def test_benchmark_reports_medians_ratios_flops_and_memory(tmp_path):
    results = run_benchmark(sizes=("tiny",), batch_sizes=(1,), train_batch_size=2, rounds=2, min_seconds=0.0,
                            compile=False, log=lambda _: None)
    assert results["matmul_roof_gflops"]["float32"] > 0
    for name in ("ceit", "ceit_optimized", "deit"):
        model = results["models"][f"{name}_tiny"]
        assert all(len(v) == 2 for v in model["all_rounds"].values())
        assert all(v > 0 for v in model["images_per_second"].values())
        assert model["gflops_per_image"]["infer_bs1_float32"] > 1.0  # CeiT-T/DeiT-T: 2.2-2.5 GFLOP per image
    assert set(results["models"]["ceit_tiny"]["images_per_second"]) == {"infer_bs1_float32", "train_bs2_float32"}
    assert set(results["models"]["ceit_optimized_tiny"]["images_per_second"]) == {"infer_bs1_float32"}
    ceit = results["models"]["ceit_tiny"]
    assert ceit["gflops_per_image"]["train_bs2_float32"] == 3 * ceit["gflops_per_image"]["infer_bs1_float32"]
    # the optimized model skips the last block's patch tokens: fewer FLOPs than the plain one
    assert results["models"]["ceit_optimized_tiny"]["gflops_per_image"]["infer_bs1_float32"] < ceit["gflops_per_image"]["infer_bs1_float32"]
    assert ceit["peak_memory_mib"]["train_bs2_float32"] > 0
    table = format_table(results)
    assert "| tiny | infer_bs1_float32 | ceit_optimized |" in table and "% of roof" in table
    write_json(results, tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["rounds"] == 2


def test_ratio_is_speed_over_eager_deit_speed(monkeypatch):
    """With CeiT made to measure 4 img/s and DeiT 10 img/s, the reported ratio must be 0.4 and the medians exact."""
    from ceit_hf import CeiTForImageClassification

    def fake_time_once(model, optimizer, m, device, iterations):
        return 4.0 if isinstance(model, CeiTForImageClassification) else 10.0

    monkeypatch.setattr(benchmarking, "time_once", fake_time_once)
    monkeypatch.setattr(benchmarking, "peak_memory", lambda *args: 1)
    monkeypatch.setattr(benchmarking, "flops_per_image", lambda *args: 1e9)
    monkeypatch.setattr(benchmarking, "matmul_roof", lambda *args: 10.0)
    results = run_benchmark(sizes=("tiny",), batch_sizes=(1,), train_batch_size=2, rounds=3, min_seconds=0.0,
                            compile=False, log=lambda _: None)
    assert results["models"]["ceit_tiny"]["images_per_second"]["infer_bs1_float32"] == 4.0
    assert results["ratios"]["tiny"]["ceit"] == {"infer_bs1_float32": 0.4, "train_bs2_float32": 0.4}
    assert results["models"]["ceit_tiny"]["achieved_gflops"]["infer_bs1_float32"] == 4.0
    assert "| tiny | infer_bs1_float32 | ceit | 4.0 | 0.40x | 1.00 | 40% | 0 |" in format_table(results)
