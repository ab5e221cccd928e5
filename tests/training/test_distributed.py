"""Multi-process training on CPU processes (gloo), as users run it on GPUs: FSDP2 in bf16 through the package's
wrapping (`ceit_hf.distributed`) and through train.py's Trainer with the DeiT recipe (one launch of
tests/fsdp_worker.py for all FSDP checks), DDP through `scripts/train.py` under torchrun (the README's multi-node
command, as 2 nodes of 1 process on localhost), and accelerate's FSDP config on CPU processes (which runs DDP, and
says so)."""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import free_port
from safetensors.torch import load_file

from ceit_hf.training.run import match_gradient_layout


ROOT = Path(__file__).resolve().parents[2]
TINY_RUN = (
    "--use_cpu --max_train_samples 64 --max_eval_samples 32 --per_device_train_batch_size 8 "
    "--num_train_epochs 1 --config_overrides num_encoder_blocks=2 --disable_tqdm true --report_to none "
    "--torch_threads 1 --dataloader_num_workers 0"
).split()
# what the refusals of FSDP settings CeiT cannot run tell the user to change, in full
VERSION_FIX = (
    'set `fsdp_version: 2` in the accelerate config (see configs/accelerate/fsdp.yaml), or `"version": 2` in '
    "--fsdp_config."
)
CHECKPOINTING_FIX = (
    "accelerate's FSDP activation checkpointing cannot wrap CeiT's layers once they are sharded: "
    "set `fsdp_activation_checkpointing: false` in the accelerate config (or leave `activation_checkpointing` out of "
    "--fsdp_config) and pass --gradient_checkpointing instead."
)


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


def accelerate_fsdp_on_two_processes() -> list[str]:
    """`accelerate launch` with configs/accelerate/fsdp.yaml on 2 processes, as a user starts train.py with it."""
    return [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--config_file",
        "configs/accelerate/fsdp.yaml",
        "--num_processes",
        "2",
        "--main_process_port",
        str(free_port()),
    ]


@pytest.fixture(scope="module")
def fsdp_run(tmp_path_factory):
    """tests/fsdp_worker.py on 2 gloo processes, started once for the FSDP tests below by `accelerate launch` with
    configs/accelerate/fsdp.yaml (the environment train.py gets from it): what rank 0 saw, and the log."""
    out = tmp_path_factory.mktemp("fsdp")
    command = [
        *accelerate_fsdp_on_two_processes(),
        "tests/fsdp_worker.py",
        str(out),
    ]
    process = subprocess.Popen(
        command, cwd=ROOT, env=environment(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    (log,) = finish([process])
    return json.loads((out / "result.json").read_text()), log


def test_fsdp2_bf16_dtypes_inside_forward(fsdp_run):
    """Inside forward (hooks; outside it FSDP2 keeps every sharded parameter in fp32): a BatchNorm's input and weight
    fp32 (its own unit), its output bf16 for the next layer; a Linear of a block gathered in bf16; bf16 logits."""
    result, _ = fsdp_run
    assert result["world_size"] == 2
    assert result["dtypes"] == {
        "batch_norm": {
            "input": "torch.float32",
            "weight": "torch.float32",
            "weight_sharded": False,
            "output": "torch.bfloat16",
        },
        "linear": {
            "input": "torch.bfloat16",
            "weight": "torch.bfloat16",
            "weight_sharded": False,
            "output": "torch.bfloat16",
        },
    }
    assert result["logits_dtype"] == "torch.bfloat16"
    losses = result["losses_same_batch"]
    assert losses[-1] < losses[0], losses


def test_fsdp2_batch_norm_statistics_are_the_mean_over_ranks(fsdp_run):
    """At each of 4 steps on different data per rank: the ranks' statistics differ before the averaging, and after
    it they are equal on both ranks and the mean of what each rank had alone."""
    steps = fsdp_run[0]["batch_norm"]
    assert len(steps) == 4
    for step in steps:
        assert step["ranks_differ_before"] > 1e-4 and step["ranks_differ_after"] == 0.0, step
        assert step["from_mean"] < 1e-6, step


def test_sharded_ema_equals_the_ema_of_the_full_weights_and_saves_a_loadable_folder(fsdp_run):
    """`ShardedEMA` (each rank its shards) gathered equals torch's `AveragedModel` updated with the gathered full
    weights (BatchNorm statistics included) exactly; saved in the model's place it is a folder that from_pretrained
    loads, with CeiT's code and auto_map (not FSDP's), the model's own weights back after it; it resumes exactly."""
    result, _ = fsdp_run
    assert result["ema_keys_equal"] and result["ema_max_difference"] == 0.0
    assert result["ema_moved_from_weights"] > 1e-4  # a 0.9 EMA over 4 steps is not the weights
    assert result["ema_folder_max_difference"] == 0.0 and result["weights_restored_after_swap"]
    assert not [name for name in result["ema_folder_files"] if "fsdp" in name]
    assert "modeling_ceit.py" in result["ema_folder_files"]
    assert all(
        value.split(".")[0] in ("modeling_ceit", "configuration_ceit")
        for value in result["ema_folder_auto_map"].values()
    )
    assert result["ema_resumed_equal"]


def test_fsdp2_checkpoint_resumes_exactly_and_saves_a_loadable_folder(fsdp_run):
    """A sharded checkpoint (torch.distributed.checkpoint) resumes to the same weights; the gathered folder loads
    with from_pretrained; `shard_for_accelerator` (train.py's FSDP path) broadcasts rank 0's weights."""
    result, _ = fsdp_run
    assert result["resumed"] == result["after_checkpoint"] and result["resume_max_difference"] == 0.0
    assert result["saved_keys_equal"] and result["saved_max_difference"] == 0.0
    assert result["accelerate_path"] == {"equal_to_rank0": True, "loss_finite": True}


def test_replicas_agree_compares_every_rank(fsdp_run):
    """`replicas_agree` on 2 ranks (what train.py logs after a DDP run): yes for the same weights, no when rank 1's
    differ. The gathering collectives (`full_state_dict`, `ShardedEMA.state_dict`) leave rank 1 nothing."""
    result, _ = fsdp_run
    assert result["replicas_agree"] == {"same": True, "different": False}
    assert result["other_ranks_hold_full_state"] is False


def test_every_ceit_model_shards_and_trains_a_bf16_step(fsdp_run):
    """CeiTModel, CeiTBackbone (alone and under UperNet) and a LoRA model, sharded by `fully_shard_ceit`: one bf16
    step each, with a finite loss, that changes the stem's weights (every unit entered through its forward) or the
    adapters."""
    models = fsdp_run[0]["models"]
    assert sorted(models) == ["CeiTBackbone", "CeiTModel", "LoRA", "UperNet"]
    for name, model in models.items():
        assert model["loss_finite"] and model["watched"] and model["changed"], (name, model)


def test_train_py_deit_recipe_under_fsdp_through_trainer(fsdp_run):
    """scripts/train.py's `main` with `--recipe deit` under FSDP (a real Trainer; accelerate's GPU check passed
    over): sharded by `prepare_distributed`, each parameter once in the optimizer, the BatchNorm statistics averaged
    before the sharded EMA takes them (equal on both ranks, in the model and in the EMA), a checkpoint with the EMA,
    and an `ema/` folder (auto-loadable) that holds the checkpoint's EMA, evaluated."""
    result, log = fsdp_run
    assert log.count("FSDP, precision bf16 (FSDP2 mixed precision, BatchNorms in fp32)") == 2, log[-3000:]
    trainer = result["trainer"]
    assert trainer["batch_norm_ranks_differ"] == 0.0 and trainer["ema_batch_norm_ranks_differ"] == 0.0
    assert (
        trainer["fsdp"] and trainer["sharded_ema"] == "ShardedEMA" and trainer["optimizer_holds_each_parameter_once"]
    )
    assert trainer["callbacks"] == ["BatchNormStatisticsCallback", "ModelEMACallback"]
    assert trainer["ema_folder_equals_checkpoint_ema"] and trainer["ema_differs_from_model"]
    assert 0.0 <= trainer["eval_ema_accuracy"] <= 1.0 and trainer["eval_loss_finite"]
    assert {"ema.safetensors", "modeling_ceit.py", "optimizer.bin"} <= set(trainer["checkpoint_files"])
    assert not [name for name in trainer["checkpoint_files"] if "fsdp" in name and name.endswith(".py")]


@pytest.mark.slow
def test_two_nodes_train_evaluate_save_with_equal_weights(tmp_path):
    """The README's multi-node torchrun command as 2 nodes of 1 process on localhost, one output folder (a shared
    file system): both nodes train to the same weights (train.py compares them), evaluate, and save the model and
    its EMA; DDP neither searches for unused parameters nor warns about gradient strides. (Slow: 12 s. In CI, DDP
    under torchrun runs through `ceit_hf.training.main` in test_streaming.py's two-process test, `replicas_agree` on
    two ranks in the FSDP launch above, and the gradient strides in process below.)"""
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
    model, ema = load_file(tmp_path / "model.safetensors"), load_file(tmp_path / "ema" / "model.safetensors")
    assert set(ema) == set(model)
    assert any(not torch.equal(ema[k], v) for k, v in model.items() if v.is_floating_point())  # the EMA, no copy


def test_fsdp_and_bf16_asked_for_by_accelerate_on_cpu_are_reported(tmp_path, monkeypatch, ceit_log):
    """What `accelerate launch --config_file configs/accelerate/fsdp.yaml` passes on (its environment), in one
    process on the CPU with the DeiT recipe: accelerate cannot shard there, and the setup log says so and reports the
    config's bf16; the recipe's EMA is trained and evaluated."""
    from ceit_hf.training import main

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_VERSION", "2")
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    metrics = main(
        ["--output_dir", str(tmp_path), "--max_steps", "1", "--save_strategy", "no", "--recipe", "deit", *TINY_RUN]
    )
    log = "\n".join(record.getMessage() for record in ceit_log)
    assert "FSDP was asked for, but accelerate runs FSDP only on GPUs" in log and "precision bf16 autocast" in log
    assert "this cpu process trains alone" in log and "eval_ema_accuracy" in metrics


@pytest.mark.parametrize(
    "environment, named",
    [
        ({"FSDP_VERSION": "1"}, VERSION_FIX),
        ({"FSDP_VERSION": "2", "FSDP_ACTIVATION_CHECKPOINTING": "true"}, CHECKPOINTING_FIX),
    ],
    ids=["fsdp_version_1", "fsdp_activation_checkpointing"],
)
def test_fsdp_settings_train_py_cannot_run_are_refused_before_the_data_load(tmp_path, monkeypatch, environment, named):
    """An accelerate FSDP config that train.py's FSDP path cannot run stops the run before any data is loaded, with
    the setting to change (also on CPU processes, which run DDP: the config is meant for GPUs)."""
    from ceit_hf.training import main, run

    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(run, "prepare_job", lambda *args, **kwargs: pytest.fail("the data was loaded first"))
    with pytest.raises(SystemExit, match=re.escape(named)):
        main(["--output_dir", str(tmp_path), "--recipe", "deit", *TINY_RUN])


@pytest.mark.slow
def test_accelerate_fsdp_config_on_cpu_processes_says_it_runs_ddp(tmp_path):
    """`accelerate launch --config_file configs/accelerate/fsdp.yaml` on 2 CPU processes: accelerate cannot shard
    there and runs DDP; the log says so, and reports the bf16 the config asks for."""
    command = [
        *accelerate_fsdp_on_two_processes(),
        "scripts/train.py",
        "--output_dir",
        str(tmp_path / "out"),
        "--max_steps",
        "2",
        "--eval_strategy",
        "no",
        "--save_strategy",
        "no",
        "--recipe",
        "deit",
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
    assert "these 2 cpu processes train with DDP (MULTI_CPU)" in log
    assert log.count("precision bf16 autocast") == 2 and "world size 2" in log
    assert (tmp_path / "out" / "model.safetensors").is_file() and (
        tmp_path / "out" / "ema" / "model.safetensors"
    ).is_file()


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


@pytest.fixture
def one_process_group():
    """A gloo group of this process alone and its device mesh: FSDP2 as on a single GPU, checked in the test
    process itself (the 2-process launches above check what needs two ranks)."""
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        yield init_device_mesh("cpu", (1,))
    finally:
        dist.destroy_process_group()


def test_fully_shard_ceit_in_one_process_units_dtypes_and_a_loadable_save(one_process_group, tmp_path):
    """`fully_shard_ceit` with a bf16 policy: the embeddings, each block and the root are FSDP units (resharded after
    forward), each BatchNorm one of its own that runs in fp32 (bf16 output); in fp32 the BatchNorms stay in their
    block. A second sharding is refused. The folder `save_pretrained_sharded` writes (on the main process only, with
    save_pretrained's options) loads without FSDP as a CeiT, with the model's weights, code and auto_map."""
    from conftest import tiny_config
    from fsdp_worker import BF16, record_dtypes_inside_forward
    from torch.distributed.fsdp import FSDPModule

    from ceit_hf import CeiTForImageClassification
    from ceit_hf.distributed import fully_shard_ceit, save_pretrained_sharded

    def units(model):
        return {type(m).__name__.removeprefix("FSDP") for m in model.modules() if isinstance(m, FSDPModule)}

    torch.manual_seed(0)
    model = fully_shard_ceit(CeiTForImageClassification(tiny_config()), mesh=one_process_group, mp_policy=BF16)
    assert units(model) == {"CeiTForImageClassification", "CeiTEmbeddings", "CeiTLayer", "BatchNorm1d", "BatchNorm2d"}
    seen = {}
    record_dtypes_inside_forward(model, seen)
    logits = model(torch.randn(2, 3, 32, 32)).logits
    assert logits.dtype == torch.bfloat16
    resharded = (model.classifier.weight, model.ceit.encoder.layers[0].attention.qkv.weight)
    assert {type(weight).__name__ for weight in resharded} == {"DTensor"}  # after forward, the root's too
    assert (seen["batch_norm"]["weight"], seen["batch_norm"]["output"]) == ("torch.float32", "torch.bfloat16")
    assert (seen["linear"]["input"], seen["linear"]["weight"]) == ("torch.bfloat16", "torch.bfloat16")
    with pytest.raises(
        ValueError, match=r"^The model is already sharded with FSDP2 \(fully_shard\); shard it once\.$"
    ):
        fully_shard_ceit(model, mesh=one_process_group)
    fp32 = fully_shard_ceit(CeiTForImageClassification(tiny_config()), mesh=one_process_group)
    assert units(fp32) == {"CeiTForImageClassification", "CeiTEmbeddings", "CeiTLayer"}

    save_pretrained_sharded(model, tmp_path / "other", is_main_process=False)
    assert not (tmp_path / "other").exists()
    save_pretrained_sharded(model, tmp_path / "saved", max_shard_size="100KB")  # save_pretrained's own options
    assert (tmp_path / "saved" / "model.safetensors.index.json").exists()
    config = json.loads((tmp_path / "saved" / "config.json").read_text())
    assert config["architectures"] == ["CeiTForImageClassification"]
    assert {value.split(".")[0] for value in config["auto_map"].values()} == {"configuration_ceit", "modeling_ceit"}
    assert type(model).__name__ == "FSDPCeiTForImageClassification"  # the class given back after the save
    loaded = CeiTForImageClassification.from_pretrained(tmp_path / "saved").state_dict()
    full = {k: v.full_tensor() if hasattr(v, "full_tensor") else v for k, v in model.state_dict().items()}
    assert loaded.keys() == full.keys() and all(torch.equal(loaded[k], full[k]) for k in loaded)


def test_sharded_ema_in_one_process_is_torchs_ema_swaps_and_resumes(one_process_group):
    """`ShardedEMA` over three bf16 steps equals torch's `AveragedModel` (EMA, buffers included) of the same weights,
    in keys and values; `swapped_into` gives the model the EMA's weights for the block and its own back after; a
    new EMA loaded from the state resumes with the same average; a state or a model of other tensors is refused."""
    from conftest import tiny_config
    from fsdp_worker import BF16, batches
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from ceit_hf import CeiTForImageClassification
    from ceit_hf.distributed import ShardedEMA, average_batch_norm_statistics, full_state_dict, fully_shard_ceit

    torch.manual_seed(0)
    model = fully_shard_ceit(CeiTForImageClassification(tiny_config()).train(), mesh=one_process_group, mp_policy=BF16)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    ema, reference = ShardedEMA(model, 0.8), CeiTForImageClassification(tiny_config())
    averaged = AveragedModel(reference, multi_avg_fn=get_ema_multi_avg_fn(0.8), use_buffers=True)
    for pixels, labels in batches(0, 3):
        model(pixel_values=pixels, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        before = {k: v.clone() for k, v in full_state_dict(model).items()}
        average_batch_norm_statistics(model)  # one process: its own statistics
        assert all(torch.equal(v, before[k]) for k, v in full_state_dict(model).items())
        ema.update_parameters(model)
        reference.load_state_dict(full_state_dict(model))
        averaged.update_parameters(reference)
    state, expected = ema.state_dict(), averaged.state_dict()
    assert state.keys() == expected.keys() and all(torch.equal(state[k], expected[k]) for k in expected)
    weights = full_state_dict(model)
    assert any(not torch.equal(state[f"module.{k}"], v) for k, v in weights.items() if v.is_floating_point())
    with ema.swapped_into(model):
        inside = full_state_dict(model)
        assert all(torch.equal(inside[k], state[f"module.{k}"]) for k in inside)
    after = full_state_dict(model)
    assert all(torch.equal(after[k], weights[k]) for k in weights)

    resumed = ShardedEMA(model, 0.8)
    resumed.load_state_dict(state)
    assert all(torch.equal(resumed.state_dict()[k], state[k]) for k in state)
    with pytest.raises(ValueError, match=r"missing \['n_averaged'\], unexpected \['extra'\]"):
        resumed.load_state_dict({**{k: v for k, v in state.items() if k != "n_averaged"}, "extra": torch.zeros(1)})
    other = fully_shard_ceit(CeiTForImageClassification(tiny_config(num_encoder_blocks=1)), mesh=one_process_group)
    with pytest.raises(ValueError, match="not those the EMA was made of"):
        ema.update_parameters(other)


def test_shard_for_accelerator_in_one_process_takes_the_accelerate_plugins_settings(one_process_group, monkeypatch):
    """train.py's FSDP path with accelerate's FSDP2 plugin: the model is sharded in place over the mesh's FSDP
    dimension (the whole mesh without a parallelism config, FSDP2's default without a mesh) with the plugin's mixed
    precision, resharding and CPU offload, and rank 0's weights; accelerate's own wrapping is turned off, and its
    preparation leaves each optimizer's parameters as they were. A plugin for FSDP version 1 (or an accelerate without
    versions) and accelerate's activation checkpointing are refused with the setting to change."""
    from types import SimpleNamespace

    from accelerate.utils import FullyShardedDataParallelPlugin
    from conftest import tiny_config
    from fsdp_worker import BF16
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, FSDPModule

    from ceit_hf import CeiTForImageClassification
    from ceit_hf.distributed import full_state_dict, shard_for_accelerator

    def accelerator(plugin, mesh=None, fsdp_dims=None):
        config = SimpleNamespace(fsdp_dim_names=fsdp_dims) if fsdp_dims else None
        return SimpleNamespace(
            state=SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=mesh, parallelism_config=config
        )

    monkeypatch.setenv("FSDP_CPU_RAM_EFFICIENT_LOADING", "False")  # (the plugin sets it for transformers)
    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2, cpu_ram_efficient_loading=True, reshard_after_forward=False, mixed_precision_policy=BF16
    )
    plugin.cpu_offload = CPUOffloadPolicy(pin_memory=False)  # (pinned memory needs a GPU)
    mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("dp_replicate", "dp_shard"))
    moved = []

    def prepare(*args, **kwargs):  # as accelerate's: an optimizer's parameters looked up again by data pointer (lost)
        moved.extend([*args, kwargs])
        for group in args[1].param_groups:
            group["params"] = []
        return args

    launch = accelerator(plugin, mesh, ["dp_shard"])
    launch.prepare = prepare

    torch.manual_seed(0)
    model = CeiTForImageClassification(tiny_config()).train()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert shard_for_accelerator(model, launch) is model and isinstance(model, FSDPModule)
    qkv = model.ceit.encoder.layers[0].attention.qkv
    assert qkv.weight.device_mesh.mesh_dim_names == ("dp_shard",)
    # (torch keeps the offload policy only on its parameter groups)
    assert model.ceit.encoder.layers[0]._get_fsdp_state()._fsdp_param_group.fsdp_params[0].offload_to_cpu
    full = full_state_dict(model)
    assert full.keys() == weights.keys() and all(torch.equal(full[k], weights[k]) for k in weights)
    assert plugin.auto_wrap_policy is None

    optimizer = torch.optim.AdamW(model.parameters())
    parameters = list(model.parameters())
    assert launch.prepare(model, optimizer, device_placement=[False, False]) == (model, optimizer)
    assert moved == [model, optimizer, {"device_placement": [False, False]}]
    assert optimizer.param_groups[0]["params"] == parameters
    logits = model(torch.randn(2, 3, 32, 32)).logits
    assert logits.dtype == torch.bfloat16
    assert type(qkv.weight).__name__ == "Parameter"  # gathered after forward: reshard_after_forward=False
    logits.float().sum().backward()
    assert type(qkv.weight).__name__ == "DTensor"

    plain = FullyShardedDataParallelPlugin(fsdp_version=2, cpu_ram_efficient_loading=False)
    whole_mesh = accelerator(plain, one_process_group)
    whole_mesh.prepare = lambda *args: args
    other = shard_for_accelerator(CeiTForImageClassification(tiny_config()), whole_mesh)
    assert other.ceit.encoder.layers[0].attention.qkv.weight.device_mesh == one_process_group
    assert other(torch.randn(2, 3, 32, 32)).logits.dtype == torch.float32
    assert type(other.ceit.encoder.layers[0].attention.qkv.weight).__name__ == "DTensor"  # resharded by default
    older = SimpleNamespace(state=SimpleNamespace(fsdp_plugin=plain), prepare=lambda *args: args)  # older accelerate
    shard_for_accelerator(CeiTForImageClassification(tiny_config()), older)  # no device mesh: FSDP2's default one

    refused = [
        (FullyShardedDataParallelPlugin(fsdp_version=1, cpu_ram_efficient_loading=False), VERSION_FIX),
        (SimpleNamespace(activation_checkpointing=False), VERSION_FIX),
        (
            FullyShardedDataParallelPlugin(
                fsdp_version=2, activation_checkpointing=True, cpu_ram_efficient_loading=False
            ),
            CHECKPOINTING_FIX,
        ),
    ]
    for plugin, fix in refused:
        with pytest.raises(ValueError, match=re.escape(fix)):
            shard_for_accelerator(CeiTForImageClassification(tiny_config()), accelerator(plugin))


def test_replicas_agree_without_a_process_group():
    """A model outside a process group is the only replica: `replicas_agree` says yes without a collective."""
    from conftest import tiny_config

    from ceit_hf import CeiTForImageClassification
    from ceit_hf.distributed import replicas_agree

    assert replicas_agree(CeiTForImageClassification(tiny_config())) is True
