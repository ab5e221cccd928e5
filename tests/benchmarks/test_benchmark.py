"""The benchmark harness runs and reports what it claims (speed targets live in benchmarks/benchmark.py's output,
not in tests)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks import models as benchmarking
from benchmarks.common import write_json
from benchmarks.models import build_pair, format_table, run_benchmark


ROOT = Path(__file__).resolve().parents[2]


def test_pair_has_the_same_width_depth_and_heads():
    models = build_pair("tiny")
    ceit, deit = models["ceit_tiny"].config, models["deit_tiny"].config
    assert (ceit.d_model, ceit.num_encoder_blocks, ceit.encoder_num_heads) == (
        deit.hidden_size,
        deit.num_hidden_layers,
        deit.num_attention_heads,
    )
    assert deit.intermediate_size == 4 * deit.hidden_size


def test_benchmark_reports_medians_ratios_flops_and_memory(tmp_path):
    # CeiT-T and DeiT-T at 224 pixels with one block each (the measurement, not the models' size, is under test)
    results = run_benchmark(
        sizes=("tiny",),
        batch_sizes=(1,),
        train_batch_size=2,
        rounds=2,
        min_seconds=0.0,
        compile=False,
        log=lambda _: None,
        overrides={"num_encoder_blocks": 1},
        roof_size=256,
        roof_seconds=0.05,
    )
    assert results["matmul_roof_gflops"]["float32"] > 0
    for name in ("ceit", "ceit_optimized", "deit"):
        model = results["models"][f"{name}_tiny"]
        assert all(len(v) == 2 for v in model["all_rounds"].values())
        assert all(v > 0 for v in model["images_per_second"].values())
        # one block of CeiT-T/DeiT-T: 0.15-0.45 GFLOP per image (CeiT's stem 0.24 of it)
        assert model["gflops_per_image"]["infer_bs1_float32"] > 0.1
    assert set(results["models"]["ceit_tiny"]["images_per_second"]) == {"infer_bs1_float32", "train_bs2_float32"}
    assert set(results["models"]["ceit_optimized_tiny"]["images_per_second"]) == {"infer_bs1_float32"}
    ceit = results["models"]["ceit_tiny"]
    assert ceit["gflops_per_image"]["train_bs2_float32"] == 3 * ceit["gflops_per_image"]["infer_bs1_float32"]
    # the optimized model skips the last block's patch tokens: fewer FLOPs than the plain one
    assert (
        results["models"]["ceit_optimized_tiny"]["gflops_per_image"]["infer_bs1_float32"]
        < ceit["gflops_per_image"]["infer_bs1_float32"]
    )
    assert ceit["peak_memory_mib"]["train_bs2_float32"] > 0
    table = format_table(results)
    assert "| tiny | infer_bs1_float32 | ceit_optimized |" in table and "% of roof" in table
    write_json(results, tmp_path / "b.json")
    assert json.loads((tmp_path / "b.json").read_text())["rounds"] == 2


def measure_with(monkeypatch, time_once):
    """The model benchmark with `time_once` as its clock, 1 byte of memory, 1 GFLOP per image, a 10 GFLOP/s roof."""
    monkeypatch.setattr(benchmarking, "time_once", time_once)
    monkeypatch.setattr(benchmarking, "peak_memory", lambda *args: 1)
    monkeypatch.setattr(benchmarking, "flops_per_image", lambda *args: 1e9)
    monkeypatch.setattr(benchmarking, "matmul_roof", lambda *args: 10.0)


def test_ratio_is_speed_over_eager_deit_speed(monkeypatch):
    """With CeiT made to measure 4 img/s and DeiT 10 img/s, the reported ratio must be 0.4 and the medians exact."""
    from ceit_hf import CeiTForImageClassification

    def fake_time_once(model, optimizer, m, device, iterations):
        return 4.0 if isinstance(model, CeiTForImageClassification) else 10.0

    measure_with(monkeypatch, fake_time_once)
    results = run_benchmark(
        sizes=("tiny",),
        batch_sizes=(1,),
        train_batch_size=2,
        rounds=3,
        min_seconds=0.0,
        compile=False,
        log=lambda _: None,
    )
    assert results["models"]["ceit_tiny"]["images_per_second"]["infer_bs1_float32"] == 4.0
    assert results["ratios"]["tiny"]["ceit"] == {"infer_bs1_float32": 0.4, "train_bs2_float32": 0.4}
    assert results["models"]["ceit_tiny"]["achieved_gflops"]["infer_bs1_float32"] == 4.0
    assert "| tiny | infer_bs1_float32 | ceit | 4.0 | 0.40x | 1.00 | 40% | 0 |" in format_table(results)


def test_compiled_training_variants_are_measured_and_a_failing_one_is_left_out(monkeypatch):
    """The compiled models are timed in training (ceit_compiled, deit_compiled) and inference (the compiled
    optimized CeiT, deit_compiled); a compiled variant that fails is dropped with its error, the rest measured."""
    from torch._dynamo.eval_frame import OptimizedModule

    from ceit_hf import CeiTForImageClassification

    def fake_time_once(model, optimizer, m, device, iterations):
        compiled_ceit = isinstance(model, OptimizedModule) and isinstance(model._orig_mod, CeiTForImageClassification)
        if m.train and compiled_ceit:
            raise RuntimeError("compiler crashed")
        return 5.0

    measure_with(monkeypatch, fake_time_once)
    results = run_benchmark(
        sizes=("tiny",),
        batch_sizes=(1,),
        train_batch_size=2,
        rounds=1,
        min_seconds=0.0,
        compile=True,
        log=lambda _: None,
        overrides={"image_size": 32, "num_encoder_blocks": 1},
    )
    measured = {name: set(model["images_per_second"]) for name, model in results["models"].items()}
    assert measured == {
        "ceit_tiny": {"infer_bs1_float32", "train_bs2_float32"},
        "ceit_leff_stored_tiny": {"train_bs2_float32"},  # on the CPU, "auto" recomputes: the other choice
        "ceit_stem_stored_tiny": {"train_bs2_float32"},
        "ceit_optimized_tiny": {"infer_bs1_float32"},
        "ceit_optimized_compiled_tiny": {"infer_bs1_float32"},
        "deit_tiny": {"infer_bs1_float32", "train_bs2_float32"},
        "deit_compiled_tiny": {"infer_bs1_float32", "train_bs2_float32"},
    }
    assert results["errors"] == {"ceit_compiled_tiny/train_bs2_float32": "RuntimeError: compiler crashed"}
    assert "ceit_compiled" not in results["ratios"]["tiny"]
    assert results["config_overrides"] == {"image_size": 32, "num_encoder_blocks": 1}


# ------------------------------------------------------------------------------------------------ the GPU suite


def fake_benchmark(ceit_train, deit_train, ceit_infer, deit_infer, per_worker=250.0, cpus=16):
    """A benchmark JSON with the given images/s: (eager, compiled) pairs for training, eager/optimized/compiled
    for CeiT inference and (eager, compiled) for DeiT inference; CeiT with LeFF recomputation trains at 0.8x the
    eager CeiT in half its memory (2000 MiB; DeiT 1000), with the stem's recomputation at 0.95x in 0.9x."""
    train, infer = "train_bs256_bfloat16", "infer_bs256_bfloat16"
    speeds = {
        "ceit": {train: ceit_train[0], infer: ceit_infer[0]},
        "ceit_compiled": {train: ceit_train[1]},
        "ceit_leff_recompute": {train: 0.8 * ceit_train[0]},
        "ceit_stem_recompute": {train: 0.95 * ceit_train[0]},
        "ceit_optimized": {infer: ceit_infer[1]},
        "ceit_optimized_compiled": {infer: ceit_infer[2]},
        "deit": {train: deit_train[0], infer: deit_infer[0]},
        "deit_compiled": {train: deit_train[1], infer: deit_infer[1]},
    }
    memory = {"ceit": 2000.0, "ceit_leff_recompute": 1000.0, "ceit_stem_recompute": 1800.0, "deit": 1000.0}
    models = {
        f"{name}_tiny": {"images_per_second": v, "peak_memory_mib": {train: memory.get(name, 1.0)}}
        for name, v in speeds.items()
    }
    return {"models": models, "data_loader": {"per_worker_images_per_second": per_worker, "cpus": cpus}}


def test_targets_compare_the_fastest_ceit_with_the_fastest_deit():
    from gpu import suite as gpu_report

    benchmark = fake_benchmark(
        ceit_train=(900, 1000), deit_train=(1000, 1200), ceit_infer=(2000, 2500, 3300), deit_infer=(2800, 3000)
    )
    targets = gpu_report.targets(benchmark)
    train, infer = targets["train_step_vs_deit_tiny"], targets["inference_vs_deit_tiny"]
    assert train["measurement"] == "train_bs256_bfloat16"
    assert train["best"] == {"ratio": 1000 / 1200, "ceit": "ceit_compiled", "deit": "deit_compiled"}
    assert train["eager"]["ratio"] == 0.9 and train["compiled"]["ratio"] == 1000 / 1200
    assert train["met"] is False  # 0.83x < 0.9x
    assert infer["best"] == {"ratio": 1.1, "ceit": "ceit_optimized_compiled", "deit": "deit_compiled"}
    assert infer["eager"]["ratio"] == 2500 / 2800 and infer["met"] is True


def test_projection_of_the_paper_run():
    from gpu import suite as gpu_report

    p = gpu_report.projection(train_rate=4000.0, inference_rate=10000.0, per_worker=250.0, cpus_per_gpu=16)
    train_seconds = 300 * 1_281_167 / 4000.0
    eval_seconds = 300 * 50_000 / 10000.0
    assert p["gpu_hours"] == (train_seconds + eval_seconds) / 3600
    assert p["wall_hours"] == p["gpu_hours"] / 8
    assert (p["per_gpu_batch"], p["steps"]) == (128, 375_342)
    assert (p["workers_per_gpu"], p["data_loader_cores"]) == (16, 128)  # 4000 / 250
    assert p["loader_keeps_up_here"] is True
    assert gpu_report.projection(4001.0, None, 250.0, 16)["loader_keeps_up_here"] is False  # 17 workers > 16 CPUs


def test_report_markdown_and_docs_block(tmp_path):
    from gpu import suite as gpu_report

    report = {
        "gpu": "NVIDIA H200",
        "mode": "cuda",
        "started": "2026-12-01 12:00 UTC",
        "wall_seconds": 300.0,
        "environment": {"packages": {"torch": "2.11.0", "transformers": "5.24.0"}, "cpus": 16},
        "parts": {
            "tests": {"status": "passed", "rc": 0, "seconds": 50, "budget": 100, "description": "tests/gpu"},
            "train_fsdp": {"status": "timeout", "rc": -15, "seconds": 75, "budget": 75, "description": "fsdp"},
        },
        "benchmark": fake_benchmark((900, 1000), (1000, 1100), (2000, 2500, 3300), (2800, 3000)),
    }
    report["targets"] = gpu_report.targets(report["benchmark"])
    report["leff_recompute"] = gpu_report.recompute(report["benchmark"], "leff")
    report["stem_recompute"] = gpu_report.recompute(report["benchmark"], "stem")
    report["projection"] = gpu_report.paper_projection(report)
    assert report["projection"]["train_variant"] == "ceit_compiled"
    text = gpu_report.markdown(report)
    assert "| train_fsdp | timeout (rc -15) |" in text and "0.91x (ceit_compiled / deit_compiled) |" in text
    assert "GPU-hours" in text and "workers (CPU cores) per GPU" in text
    recompute = gpu_report.recompute(report["benchmark"], "leff")
    assert (recompute["speed_vs_storing"], recompute["memory_vs_storing"]) == (0.8, 0.5)
    assert recompute["memory_vs_deit"] == {"recompute": 1.0, "store": 2.0}
    stem = gpu_report.recompute(report["benchmark"], "stem")
    assert (stem["speed_vs_storing"], stem["memory_vs_storing"]) == (0.95, 0.9)
    assert "LeFF recomputation (`set_leff_recompute`) on this GPU" in text and "Stem recomputation" in text
    docs = tmp_path / "gpu.md"
    docs.write_text(f"# GPU\n\nintro\n\n{gpu_report.DOCS_BEGIN}\nold\n{gpu_report.DOCS_END}\n\nafter\n")
    gpu_report.update_docs(report, "benchmarks/gpu_nvidia_h200.json", docs)
    updated = docs.read_text()
    assert "old" not in updated and updated.startswith("# GPU\n\nintro\n") and updated.endswith("\n\nafter\n")
    row = "| train_step_vs_deit_tiny >= 0.9x (train_bs256_bfloat16) | 0.91x (ceit_compiled / deit_compiled) |"
    assert row in updated
    assert "LeFF recomputation (`set_leff_recompute`) on this GPU" in updated and "Stem recomputation" in updated
    assert "Parts that did not pass: train_fsdp" in updated


def test_a_part_over_its_budget_is_killed_with_its_children(tmp_path):
    from gpu import suite as gpu_report

    pid_file = tmp_path / "child.pid"
    part = gpu_report.Part("slow", "sleeps", 1, ["bash", "-c", f"sleep 60 & echo $! > {pid_file}; wait"])
    result = gpu_report.run_process(part, tmp_path / "slow.log", 1.0, dict(os.environ))
    assert result["status"] == "timeout" and result["seconds"] < 30
    # the backgrounded grandchild went with the group: gone, or a zombie that nothing has reaped yet
    try:
        state = (
            Path(f"/proc/{int(pid_file.read_text())}/stat").read_text(encoding="utf-8").rsplit(")", 1)[1].split()[0]
        )
    except FileNotFoundError:
        state = "gone"
    assert state in ("gone", "Z")


def test_levers_compute_what_the_model_computes_and_report_against_it():
    """`benchmarks/benchmark.py --levers`: every form of a lever gives the model's output and input gradient, and the
    table sets each against the model's form (the region compile is left to the GPU suite and slow runs)."""
    from benchmarks.step_levers import format_levers_table, measure_levers

    levers = measure_levers(
        ("depthwise", "batchnorm_gelu", "expand_batchnorm", "stem"), batch_size=1, rounds=1, seconds=0.0, log=None
    )
    for lever, entry in levers.items():
        assert len(entry["ms"]) >= 2 and next(iter(entry["ratio"].values())) == 1.0, lever
        assert max(entry["max_difference"].values()) < 1e-4, (lever, entry["max_difference"])
        assert max(entry["max_input_grad_difference"].values(), default=0.0) < 1e-4, lever
    assert levers["batchnorm_gelu"]["max_input_grad_difference"]["autograd function, plain ops"] > 0  # compared
    assert levers["expand_batchnorm"]["max_input_grad_difference"]["BatchNorm folded into the Linear"] > 0
    setup = {"machine": "cpu", "dtype": "float32", "batch_size": 1, "rounds": 1}
    table = format_levers_table({"levers": levers, "levers_setup": setup})
    assert "| depthwise | nine shifted multiply-adds |" in table and "| stem | convolution (model) |" in table


def test_profile_lists_each_models_operators_side_by_side():
    """`benchmarks/benchmark.py --profile`: the training step of both models by operator; CeiT has BatchNorms and
    convolutions where DeiT has none, and the table shows both columns."""
    from benchmarks.models import format_profile, profile_training_step

    profile = profile_training_step("tiny", 2, 1, "cpu", {"image_size": 32, "num_encoder_blocks": 1}, top=40)
    assert set(profile) == {"ceit_tiny", "deit_tiny"}
    assert "aten::native_batch_norm" in profile["ceit_tiny"]["ops"]
    assert "aten::native_batch_norm" not in profile["deit_tiny"]["ops"]
    for entry in profile.values():
        assert entry["step_ms"] >= sum(op["ms"] for op in entry["ops"].values()) > 0
    table = format_profile(profile)
    assert (
        table[0] == "| operator | ceit_tiny ms (calls) | deit_tiny ms (calls) |" and "all aten operators" in table[-1]
    )


def run_gpu_check_on_cpu(tmp_path, *arguments) -> dict:
    """`bash scripts/gpu_check.sh --cpu ...`: the report it wrote (its folder holds exactly the three files)."""
    env = {k: v for k, v in os.environ.items() if k != "OUT"}
    command = ["bash", "scripts/gpu_check.sh", "--cpu", "--output_dir", str(tmp_path / "out")]
    result = subprocess.run(
        [*command, "--work_dir", str(tmp_path / "work"), *arguments],
        cwd=ROOT,
        env={**env, "OMP_NUM_THREADS": "1", "PYTHON": sys.executable},  # the interpreter running the tests
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["gpu_cpu.json", "gpu_cpu.log", "gpu_cpu.md"]
    report = json.loads((tmp_path / "out" / "gpu_cpu.json").read_text())
    assert report["mode"] == "cpu" and report["environment"]["packages"]["torch"]
    return report


def test_gpu_check_cpu_mode_runs_the_tests_levers_and_benchmark_parts(tmp_path):
    """`bash scripts/gpu_check.sh --cpu --parts tests,levers,benchmark`: the GPU suite's own code (tests/gpu,
    benchmarks/benchmark.py, the report) at tiny sizes on the CPU, so a device run does not find its mistakes. Its
    training part is checked in process below, and all parts together by the slow test after it."""
    report = run_gpu_check_on_cpu(tmp_path, "--parts", "tests,levers,benchmark")
    assert {name: part["status"] for name, part in report["parts"].items()} == {
        "tests": "passed",
        "levers": "passed",
        "benchmark": "passed",
    }
    tests = report["tests"]
    assert tests["failed"] == tests["error"] == 0 and tests["passed"] >= 6
    assert any(c["outcome"] == "skipped" and "CUDA" in c["message"] for c in tests["cases"])  # flash attention
    benchmark = report["benchmark"]
    assert benchmark["models"]["ceit_tiny"]["images_per_second"]["train_bs4_bfloat16"] > 0
    assert set(benchmark["data_loader"]["workers"]) == {"1", str(report["environment"]["cpus"])}
    assert report["targets"]["train_step_vs_deit_tiny"]["measurement"] == "train_bs4_bfloat16"
    markdown = (tmp_path / "out" / "gpu_cpu.md").read_text()
    assert "| tests | passed |" in markdown and "## Targets" in markdown and "| workers | images/s |" in markdown
    assert (
        set(report["levers"]) == {"depthwise", "batchnorm_gelu", "expand_batchnorm", "stem"}
        and "## Training-step levers" in markdown
    )
    assert "===== benchmark: passed" in (tmp_path / "out" / "gpu_cpu.log").read_text()


def test_gpu_suite_training_part_trains_bf16_and_its_results_are_read(tmp_path, capsys):
    """The training part's own command (train.py's arguments after `accelerate launch --cpu`, which
    tests/training/test_distributed.py launches for real) trains two bf16 steps, and `training_results` reads what it left."""
    from gpu import suite as gpu_report

    from ceit_hf.training import main

    command = gpu_report.training_command(sys.executable, "configs/accelerate/multi_gpu.yaml", tmp_path / "run", True)
    main(command[command.index("scripts/train.py") + 1 :])
    (tmp_path / "train.log").write_text(capsys.readouterr().out)  # train.py logs to stdout
    training = gpu_report.training_results(tmp_path / "run", tmp_path / "train.log")
    assert training["saved"] and training["global_step"] == 2 and "bf16" in training["setup"]
    assert np.isfinite(training["metrics"]["eval_loss"]) and training["first_loss"] is not None


@pytest.mark.slow
def test_gpu_check_cpu_mode_runs_every_part_and_writes_the_report(tmp_path):
    """`bash scripts/gpu_check.sh --cpu`, every part, as the GPU run does (30 s on 2 cores)."""
    report = run_gpu_check_on_cpu(tmp_path)
    assert {name: part["status"] for name, part in report["parts"].items()} == {
        "tests": "passed",
        "train_bf16": "passed",
        "train_fsdp": "skipped",
        "levers": "passed",
        "feed": "passed",
        "benchmark": "passed",
    }
    assert report["feed"]["runs"] and "## Feeding the GPU" in (tmp_path / "out" / "gpu_cpu.md").read_text()
    training = report["training"]["train_bf16"]
    assert training["saved"] and training["global_step"] == 2 and "bf16" in training["setup"]
    assert np.isfinite(training["metrics"]["eval_loss"])
    assert report["projection"]["gpu_hours"] > 0 and report["projection"]["workers_per_gpu"] >= 1
    assert "===== train_bf16: passed" in (tmp_path / "out" / "gpu_cpu.log").read_text()


# ------------------------------------------------------------------------------------------ the data-loader benchmark


def data_loader_benchmark():
    """benchmarks/data_loader.py, the module its command line runs."""
    from benchmarks import data_loader

    return data_loader


def test_data_loader_benchmark_compares_the_pipelines_per_core_and_writes_its_table(tmp_path):
    """The per-core benchmark at a smoke size: every pipeline delivers images, the table sets each against timm's
    prefetcher form, and the step breakdown and the draft share are filled."""
    benchmark = data_loader_benchmark()
    result = benchmark.main(
        ["--images", "12", "--rounds", "1", "--batches", "1", "--batch_size", "4", "--image_size", "64"]
        + ["--output", str(tmp_path / "loader")]
    )
    rates = result["median_images_per_second"]
    assert set(rates) == set(benchmark.available_pipelines()) and all(rate > 0 for rate in rates.values())
    assert {"ceit_hf", "timm", "timm_prefetcher", "torchvision", "ceit_hf_float"} <= set(rates)
    table = (tmp_path / "loader.md").read_text()
    assert "| timm_prefetcher |" in table and "| ceit_hf |" in table and "1.00x" in table
    # crops of 64 px from 300-500 px images: most could be served by a half-scale draft decode
    assert result["breakdown_ms"]["horizontal flip 0.5"] > 0 and 0.5 < result["draft_share"] <= 1


def test_data_loader_benchmark_feed_mode_times_the_loader_feeding_a_training_step(tmp_path):
    """--feed at a smoke size on the CPU: the loader's and the step's images/s apart and together, and the share of
    the step spent waiting for data, for each prefetch factor."""
    result = data_loader_benchmark().main(
        "--feed --device cpu --workers 1 --images 8 --batch_size 4 --image_size 32 --steps 2".split()
        + ["--prefetch_factors", "2", "4", "--config_overrides", "num_encoder_blocks=1"]
        + ["--output", str(tmp_path / "feed")]
    )
    assert result["loader_images_per_second"] > 0 and result["step_images_per_second"] > 0
    assert [run["prefetch_factor"] for run in result["runs"]] == [2, 4]
    assert all(0 <= run["waiting_share"] <= 1 and run["images_per_second"] > 0 for run in result["runs"])
    assert "share of the step waiting for data" in (tmp_path / "feed.md").read_text()
