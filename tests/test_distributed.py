"""Multi-process training on CPU processes (gloo), as users run it on GPUs: FSDP2 in bf16 through the package's
wrapping (`ceit_hf.distributed`), DDP through `scripts/train.py` under torchrun (the README's multi-node command,
as 2 nodes of 1 process on localhost), and accelerate's FSDP config on CPU processes (which runs DDP, and says so)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from safetensors.torch import load_file

from ceit_hf.training.run import match_gradient_layout, prepare_distributed


ROOT = Path(__file__).resolve().parents[1]
TINY_RUN = (
    "--use_cpu --max_train_samples 64 --max_eval_samples 32 --per_device_train_batch_size 8 "
    "--num_train_epochs 1 --config_overrides num_encoder_blocks=2 --disable_tqdm true --report_to none "
    "--torch_threads 1 --dataloader_num_workers 0"
).split()


def environment():
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "default"}


def finish(processes, timeout=300):
    outputs = []
    for process in processes:
        out, _ = process.communicate(timeout=timeout)
        outputs.append(out)
    for process, out in zip(processes, outputs):
        assert process.returncode == 0, out[-4000:]
    return outputs


def test_fsdp2_bf16_trains_resumes_exactly_and_saves_a_loadable_folder(tmp_path):
    """`fully_shard_ceit` with a bf16 policy on 2 processes: BatchNorms stay fp32, the loss falls, a sharded
    checkpoint resumes to the same weights, the gathered folder loads with from_pretrained; `shard_for_accelerator`
    (train.py's FSDP path on GPUs) broadcasts rank 0's weights and keeps the BatchNorms fp32."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        "2",
        "--master_port",
        str(free_port()),
        "tests/fsdp_worker.py",
        str(tmp_path),
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    finish([process])
    result = json.loads((tmp_path / "result.json").read_text())
    assert result["world_size"] == 2
    assert result["batch_norm_dtypes"] == ["torch.float32"] and result["logits_dtype"] == "torch.bfloat16"
    losses = result["losses_same_batch"]
    assert losses[-1] < losses[0], losses
    assert result["resumed"] == result["after_checkpoint"] and result["resume_max_difference"] == 0.0
    assert result["saved_keys_equal"] and result["saved_max_difference"] == 0.0
    assert result["accelerate_path"] == {
        "equal_to_rank0": True,
        "norm_param_dtype": "torch.float32",
        "loss_finite": True,
    }


def test_two_nodes_train_evaluate_save_with_equal_weights(tmp_path):
    """The README's multi-node torchrun command as 2 nodes of 1 process on localhost, one output folder (a shared
    file system): both nodes train to the same weights (train.py compares them), evaluate, and save the model and
    its EMA; DDP neither searches for unused parameters nor warns about gradient strides."""
    port = str(free_port())
    processes = []
    for node in (0, 1):
        command = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nnodes",
            "2",
            "--node_rank",
            str(node),
            "--nproc_per_node",
            "1",
            "--master_addr",
            "127.0.0.1",
            "--master_port",
            port,
            "scripts/train.py",
            "--output_dir",
            str(tmp_path),
            "--model_ema_decay",
            "0.9",
            *TINY_RUN,
        ]
        processes.append(
            subprocess.Popen(
                command, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        )
    logs = finish(processes)
    for log in logs:
        assert "world size 2" in log and "MULTI_CPU" in log, log[-3000:]
        assert "find_unused_parameters" not in log and "Grad strides do not match" not in log
        assert "The trained weights are identical on all 2 processes." in log
    results = json.loads((tmp_path / "all_results.json").read_text())
    assert "eval_accuracy" in results and "eval_ema_accuracy" in results
    for folder in (tmp_path, tmp_path / "ema"):
        assert set(load_file(folder / "model.safetensors")) == set(load_file(tmp_path / "model.safetensors"))


def test_fsdp_and_bf16_asked_for_by_accelerate_on_cpu_are_reported(tmp_path, monkeypatch, ceit_log):
    """What `accelerate launch --config_file configs/accelerate/fsdp.yaml` passes on (its environment), in one
    process on the CPU: accelerate cannot shard there, and the setup log says so and reports the config's bf16."""
    from ceit_hf.training import main

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    main(
        [
            "--output_dir",
            str(tmp_path),
            "--max_steps",
            "1",
            "--eval_strategy",
            "no",
            "--save_strategy",
            "no",
            *TINY_RUN,
        ]
    )
    log = "\n".join(record.getMessage() for record in ceit_log)
    assert "FSDP was asked for, but accelerate runs FSDP only on GPUs" in log and "precision bf16 autocast" in log


@pytest.mark.slow
def test_accelerate_fsdp_config_on_cpu_processes_says_it_runs_ddp(tmp_path):
    """`accelerate launch --config_file configs/accelerate/fsdp.yaml` on 2 CPU processes: accelerate cannot shard
    there and runs DDP; the log says so, and reports the bf16 the config asks for."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "configs/accelerate/fsdp.yaml",
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
        "scripts/train.py",
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "2",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        *TINY_RUN,
    ]
    (log,) = finish(
        [
            subprocess.Popen(
                command, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
        ]
    )
    assert "FSDP was asked for, but accelerate runs FSDP only on GPUs" in log
    assert log.count("precision bf16 autocast") == 2 and "world size 2" in log
    assert (tmp_path / "out" / "model.safetensors").is_file()


def test_ema_is_refused_under_fsdp_with_the_alternative():
    """Under FSDP the EMA callback would need the full weights on every rank: refused, naming DDP."""
    from types import SimpleNamespace

    trainer = SimpleNamespace(is_fsdp_enabled=True)
    with pytest.raises(SystemExit, match=r"--model_ema_decay is not supported under FSDP.*multi_gpu\.yaml"):
        prepare_distributed(trainer, SimpleNamespace(model_ema_decay=0.999))


def test_depthwise_weights_take_the_strides_of_their_gradients():
    """DDP compares gradient strides with its buckets: after `match_gradient_layout`, LeFF's depthwise weights have
    the strides their (channels-last) gradients come with, hold the same values, and save as before."""
    from conftest import tiny_config

    from ceit_hf import CeiTForImageClassification

    model = CeiTForImageClassification(tiny_config()).train()
    depthwise = model.ceit.encoder.layers[0].leff.depthwise.weight
    assert depthwise.stride() == (9, 9, 3, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    match_gradient_layout(model)
    model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1])).loss.backward()
    depthwise = model.ceit.encoder.layers[0].leff.depthwise.weight
    assert depthwise.stride() == (9, 1, 3, 1) and depthwise.grad.stride() == depthwise.stride()
    assert all(
        torch.equal(v, before[k]) for k, v in model.state_dict().items() if "running" not in k and "num_" not in k
    )
