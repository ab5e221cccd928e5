"""One rank of the FSDP2 test (tests/test_distributed.py): `torchrun --nproc_per_node 2 tests/fsdp_worker.py OUT`.

A tiny CeiT sharded by `ceit_hf.distributed.fully_shard_ceit` with a bf16 policy on gloo CPU processes: three training
steps, a sharded checkpoint (torch.distributed.checkpoint), two more steps, then a fresh sharded model resumed from
the checkpoint runs the same two steps; finally a full-state-dict save that `from_pretrained` loads. Rank 0 writes
what it saw to OUT/result.json for the test to assert on.
"""

import json
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy


sys.path.insert(0, str(Path(__file__).resolve().parent))
from conftest import tiny_config  # noqa: E402

from ceit_hf import CeiTForImageClassification  # noqa: E402
from ceit_hf.distributed import (  # noqa: E402
    average_batch_norm_statistics,
    full_state_dict,
    fully_shard_ceit,
    save_pretrained_sharded,
    shard_for_accelerator,
)  # noqa: E402


def sharded_model(mesh, seed=0):
    torch.manual_seed(seed)
    model = CeiTForImageClassification(tiny_config(num_encoder_blocks=2)).train()
    policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    fully_shard_ceit(model, mesh=mesh, mp_policy=policy)
    return model, torch.optim.AdamW(model.parameters(), lr=3e-3)


def batches(rank, steps, start=0):
    """Each rank's own batches, the same in every run."""
    for step in range(start, start + steps):
        generator = torch.Generator().manual_seed(1000 * rank + step)
        yield torch.randn(8, 3, 32, 32, generator=generator), torch.randint(0, 5, (8,), generator=generator)


def train(model, optimizer, rank, steps, start=0, seen=None):
    losses = []
    for pixels, labels in batches(rank, steps, start):
        outputs = model(pixel_values=pixels, labels=labels)
        if seen is not None:
            seen.setdefault("logits_dtype", str(outputs.logits.dtype))
        outputs.loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        average_batch_norm_statistics(model)
        losses.append(outputs.loss.item())
    return losses


def accelerate_path(rank):
    """`shard_for_accelerator` with the FSDP2 plugin train.py gets from configs/accelerate/fsdp.yaml on GPUs (bf16,
    cpu_ram_efficient_loading): rank 1 starts from other weights, which rank 0's must replace; BatchNorms fp32."""
    from types import SimpleNamespace

    from accelerate.utils import FullyShardedDataParallelPlugin

    plugin = FullyShardedDataParallelPlugin(
        fsdp_version=2,
        cpu_ram_efficient_loading=True,
        reshard_after_forward=True,
        mixed_precision_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
    )
    accelerator = SimpleNamespace(
        state=SimpleNamespace(fsdp_plugin=plugin), torch_device_mesh=None, parallelism_config=None
    )
    torch.manual_seed(rank)
    model = CeiTForImageClassification(tiny_config()).train()
    rank0_weights = {k: v.detach().clone() for k, v in model.named_parameters()} if rank == 0 else None
    shard_for_accelerator(model, accelerator)
    pixels, labels = next(batches(rank, 1))
    loss = model(pixel_values=pixels, labels=labels).loss  # the weights do not change: no optimizer step
    loss.backward()
    gathered = full_state_dict(model)
    if rank == 0:
        return {
            "equal_to_rank0": all(torch.equal(gathered[k], rank0_weights[k]) for k in rank0_weights),
            "norm_param_dtype": str(model.ceit.encoder.layers[0].leff.expand_norm.weight.dtype),
            "loss_finite": bool(torch.isfinite(loss)),
        }
    return None


def main(out: Path):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.set_num_threads(1)
    mesh = init_device_mesh("cpu", (dist.get_world_size(),))
    result = {"world_size": dist.get_world_size()}

    model, optimizer = sharded_model(mesh)
    result["batch_norm_dtypes"] = sorted(
        {str(m.weight.dtype) for m in model.modules() if isinstance(m, torch.nn.BatchNorm1d)}
    )
    # the same data on every step: the loss must fall
    result["losses_same_batch"] = [train(model, optimizer, rank, 1, seen=result)[0] for _ in range(4)]
    model_state, optim_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=str(out / "checkpoint"))
    result["after_checkpoint"] = train(model, optimizer, rank, 2, start=10)
    final = full_state_dict(model)

    resumed, resumed_optimizer = sharded_model(mesh, seed=123)  # other initial weights: the checkpoint must win
    model_state, optim_state = get_state_dict(resumed, resumed_optimizer)
    state = {"model": model_state, "optim": optim_state}
    dcp.load(state, checkpoint_id=str(out / "checkpoint"))
    set_state_dict(resumed, resumed_optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
    result["resumed"] = train(resumed, resumed_optimizer, rank, 2, start=10)
    resumed_final = full_state_dict(resumed)  # rank 0 only
    if rank == 0:
        result["resume_max_difference"] = max(
            (final[k].float() - resumed_final[k].float()).abs().max().item() for k in final
        )

    save_pretrained_sharded(resumed, out / "model", is_main_process=rank == 0)
    result["accelerate_path"] = accelerate_path(rank)
    dist.barrier()
    if rank == 0:
        loaded = CeiTForImageClassification.from_pretrained(out / "model")
        loaded_state = loaded.state_dict()
        result["saved_keys_equal"] = sorted(loaded_state) == sorted(resumed_final)
        result["saved_max_difference"] = max(
            (loaded_state[k].float() - resumed_final[k].float()).abs().max().item() for k in resumed_final
        )
        (out / "result.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]))
