# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""CeiT under FSDP2 (`torch.distributed.fsdp.fully_shard`) with mixed precision.

A bf16 `MixedPrecisionPolicy` over a whole CeiT block casts its BatchNorm weights to bf16 while their running
statistics stay fp32, and the first forward fails (`expected scalar type BFloat16 but found Float`); BatchNorm's
statistics are also the one place where bf16 loses real accuracy. `fully_shard_ceit` therefore makes every BatchNorm
its own FSDP unit computing in fp32 (its output cast back to the compute dtype), and the embeddings, the blocks and
the root (with the LCA and the classifier) units of the requested policy. `scripts/train.py` applies it when
accelerate runs FSDP (accelerate's own FSDP2 preparation leaves a model that is already sharded as it is), and it works
as well on a plain torch training loop. `ShardedEMA` is the EMA of the weights (`--model_ema_decay`, the DeiT recipe)
that stays sharded.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn


def _units(model: nn.Module) -> list[nn.Module]:
    """The modules that become FSDP units of the compute policy, innermost first (the root comes last, separately)."""
    from .modeling_ceit import CeiTEmbeddings, CeiTLayer

    # The LCA stays in the root unit with the classifier: it runs last, and the root is gathered for the whole step.
    return [m for m in model.modules() if isinstance(m, (CeiTEmbeddings, CeiTLayer))]


def batch_norm_policy(mp_policy):
    """The policy of a BatchNorm unit under `mp_policy`: fp32 parameters and inputs, output in the compute dtype."""
    from torch.distributed.fsdp import MixedPrecisionPolicy

    return MixedPrecisionPolicy(
        param_dtype=torch.float32,
        reduce_dtype=torch.float32,
        output_dtype=mp_policy.param_dtype,
        cast_forward_inputs=True,
    )


def fully_shard_ceit(
    model: nn.Module,
    *,
    mesh=None,
    mp_policy=None,
    reshard_after_forward: bool = True,
    offload_policy=None,
    ignored_params: set[nn.Parameter] | None = None,
) -> nn.Module:
    """Shards `model` (a CeiT, or any model holding CeiT blocks: a PEFT model, a UperNet over `CeiTBackbone`) in place
    with FSDP2 and returns it.

    Units: each BatchNorm (fp32, see the module docstring, when `mp_policy` computes in lower precision), the
    `CeiTEmbeddings` and each `CeiTLayer`, then the root (the LCA, the classifier and what is left). `mp_policy`
    (default: none, fp32) is torch's `MixedPrecisionPolicy` for everything but the BatchNorms, e.g.
    `MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)`; `mesh`, `reshard_after_forward`,
    `offload_policy` and `ignored_params` go to every `fully_shard` call as they are."""
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

    if isinstance(model, FSDPModule):
        raise ValueError("The model is already sharded with FSDP2 (fully_shard); shard it once.")
    mp_policy = mp_policy or MixedPrecisionPolicy()
    common = {"mesh": mesh, "reshard_after_forward": reshard_after_forward}
    if offload_policy is not None:
        common["offload_policy"] = offload_policy
    if ignored_params:
        common["ignored_params"] = set(ignored_params)
    if mp_policy.param_dtype not in (None, torch.float32):  # in fp32 the BatchNorms shard with their block
        for norm in [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]:
            fully_shard(norm, mp_policy=batch_norm_policy(mp_policy), **common)
    for unit in _units(model):
        fully_shard(unit, mp_policy=mp_policy, **common)
    fully_shard(model, mp_policy=mp_policy, **common)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of an FSDP2 model, on rank 0's CPU (an empty dict on the other ranks; a
    collective: call it on all). The BatchNorm statistics are rank 0's: FSDP does not synchronise buffers."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_pretrained_sharded(model, save_directory, is_main_process: bool = True, **kwargs) -> None:
    """`save_pretrained` of an FSDP2-sharded CeiT: a collective that gathers the full weights, then the main process
    writes a normal transformers folder (safetensors, config, code) that `from_pretrained` loads without FSDP."""
    state_dict = full_state_dict(model)
    if is_main_process and state_dict:
        model.save_pretrained(save_directory, state_dict=state_dict, **kwargs)


def average_batch_norm_statistics(model: nn.Module, group=None) -> None:
    """Sets the running mean and variance of every BatchNorm of `model` to their mean over the ranks of `group`.

    FSDP replicates buffers without synchronising them (DDP broadcasts rank 0's before each forward): each rank's
    statistics follow its own batches, evaluation on each rank would normalise differently, and a checkpoint keeps
    one rank's copy. Averaging after each optimizer step keeps them equal, from all ranks' batches, for a single
    all-reduce of a few thousand numbers. A collective: call it on every rank."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return
    buffers = [
        buffer
        for module in model.modules()
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
        for buffer in (module.running_mean, module.running_var)
    ]
    if not buffers:
        return
    with torch.no_grad():
        flat = torch.cat([buffer.float().flatten() for buffer in buffers])
        dist.all_reduce(flat, group=group)
        flat /= dist.get_world_size(group)
        for buffer, value in zip(buffers, flat.split([buffer.numel() for buffer in buffers])):
            buffer.copy_(value.view_as(buffer))


def check_fsdp_settings(version: int, activation_checkpointing: bool = False) -> None:
    """`ValueError` naming the setting to change where accelerate's FSDP plugin asks for what `shard_for_accelerator`
    cannot give: FSDP version 1, or accelerate's activation checkpointing (it would wrap the layers of a model that is
    sharded already)."""
    if version != 2:
        raise ValueError(
            f"CeiT trains under FSDP version 2 (fully_shard), which keeps its BatchNorms in fp32, not version "
            f"{version}: set `fsdp_version: 2` in the accelerate config (see configs/accelerate/fsdp.yaml), or "
            '`"version": 2` in --fsdp_config.'
        )
    if activation_checkpointing:
        raise ValueError(
            "accelerate's FSDP activation checkpointing cannot wrap CeiT's layers once they are sharded: set "
            "`fsdp_activation_checkpointing: false` in the accelerate config (or leave `activation_checkpointing` "
            "out of --fsdp_config) and pass --gradient_checkpointing instead."
        )


def shard_for_accelerator(model: nn.Module, accelerator) -> nn.Module:
    """`fully_shard_ceit` with the settings of accelerate's FSDP2 plugin (mixed-precision policy, device mesh,
    resharding, CPU offload), before `accelerator.prepare`: accelerate's own FSDP2 preparation returns a model that is
    already sharded as it is (and maps the optimizer to its parameters), so the BatchNorms keep their fp32 units.
    For `Trainer`, call it on `trainer.model` once the trainer exists (it creates the accelerator)."""
    import torch.distributed as dist

    plugin = accelerator.state.fsdp_plugin
    check_fsdp_settings(getattr(plugin, "fsdp_version", 1), plugin.activation_checkpointing)
    mesh = getattr(accelerator, "torch_device_mesh", None)
    if mesh is not None and accelerator.parallelism_config is not None:
        mesh = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    # With cpu_ram_efficient_loading, transformers may have loaded the pretrained weights on rank 0 only; accelerate
    # would broadcast them in its preparation, which a pre-sharded model skips: broadcast them here instead.
    full = model.state_dict() if plugin.cpu_ram_efficient_loading and dist.get_rank() == 0 else None
    model = fully_shard_ceit(
        model,
        mesh=mesh,
        mp_policy=plugin.mixed_precision_policy,
        reshard_after_forward=plugin.reshard_after_forward,
        offload_policy=plugin.cpu_offload,
    )
    if plugin.cpu_ram_efficient_loading:
        from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, full or {}, options=options)
    # accelerate's preparation leaves the sharded model as it is, but first looks up the layer classes of its wrap
    # policy by name (`CeiTLayer`), which sharding renamed (`FSDPCeiTLayer`): nothing is left for the policy to wrap.
    plugin.auto_wrap_policy = None
    keep_optimizer_parameters(accelerator)
    return model


def keep_optimizer_parameters(accelerator) -> None:
    """Makes `accelerator.prepare` leave the parameters of the optimizers it prepares as they are (those of a model
    sharded before it). accelerate's FSDP2 preparation maps each optimizer parameter to the model's by the data
    pointer of its local shard, which is 0 for every empty shard: with 2 or more ranks, CeiT's class token and position
    embeddings (first dimension 1) have empty shards on every rank but 0, so they would all map to one parameter, and
    the optimizer's state no longer matches the model's (its checkpoint gather then fails or hangs)."""
    prepare = accelerator.prepare

    def prepare_keeping_parameters(*args, **kwargs):
        optimizers = [item for item in args if isinstance(item, torch.optim.Optimizer)]
        kept = [[list(group["params"]) for group in optimizer.param_groups] for optimizer in optimizers]
        prepared = prepare(*args, **kwargs)
        for optimizer, groups in zip(optimizers, kept):  # (the group dicts may be new ones by now)
            for group, parameters in zip(optimizer.param_groups, groups, strict=True):
                group["params"] = parameters
        return prepared

    accelerator.prepare = prepare_keeping_parameters


def replicas_agree(model: nn.Module, group=None) -> bool:
    """Whether every rank of `group` holds the same parameters (a collective). Data parallel training keeps them
    equal by construction; a difference means a rank diverged (a non-deterministic op, a rank-dependent branch) and
    the saved model is rank 0's alone. Compares each parameter's sum and sum of squares in float64."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_initialized():
        return True
    parameters = [p.detach().double() for p in model.parameters()]
    fingerprint = torch.stack([torch.stack((p.sum(), p.square().sum())) for p in parameters]).flatten()
    gathered = [torch.empty_like(fingerprint) for _ in range(dist.get_world_size(group))]
    dist.all_gather(gathered, fingerprint, group=group)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def local_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s parameters and buffers by name, each as this rank holds it: the local shard of a sharded (DTensor)
    parameter, a view that writes through to it, and any other tensor as it is."""
    from torch.distributed.tensor import DTensor

    named = [*model.named_parameters(), *model.named_buffers()]
    return {name: t.to_local() if isinstance(t, DTensor) else t for name, t in named}


class ShardedEMA:
    """An exponential moving average of the weights of an FSDP2-sharded model that stays sharded: each rank averages
    its own shards of the parameters (the local tensors of their DTensors, same placement) and its copy of the buffers
    (the BatchNorm statistics, which `average_batch_norm_statistics` keeps equal on all ranks), for one more copy of
    each rank's shards. The rule is that of torch's `AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay),
    use_buffers=True)`: the first `update_parameters` copies the weights, each later one sets ema = decay x ema +
    (1 - decay) x weights. `state_dict` and `load_state_dict` hold the full weights under `AveragedModel`'s keys
    ("module." + name, "n_averaged"), so a checkpoint's EMA resumes sharded or not. Call every method on all ranks
    (the model on each rank is sharded the same way)."""

    def __init__(self, model: nn.Module, decay: float):
        from torch.distributed.tensor import DTensor
        from torch.optim.swa_utils import get_ema_multi_avg_fn

        self.average = get_ema_multi_avg_fn(decay)
        self.n_averaged = 0
        # (mesh, placements, shape, stride) of each sharded tensor, to gather its shards and to cut a full one
        self.layouts = {
            name: (t.device_mesh, t.placements, t.shape, t.stride())
            for name, t in [*model.named_parameters(), *model.named_buffers()]
            if isinstance(t, DTensor)
        }
        self.averages = {name: t.detach().clone() for name, t in local_tensors(model).items()}

    @torch.no_grad()
    def update_parameters(self, model: nn.Module) -> None:
        current = local_tensors(model)
        if current.keys() != self.averages.keys():
            raise ValueError("The model's parameters and buffers are not those the EMA was made of.")
        if self.n_averaged == 0:
            for name, average in self.averages.items():
                average.copy_(current[name])
        else:
            # torch's EMA function takes tensors of one dtype: floats by lerp, integers by a rounding copy
            groups = {}
            for name, average in self.averages.items():
                pair = groups.setdefault((average.dtype, average.device), ([], []))
                pair[0].append(average)
                pair[1].append(current[name].detach())
            for averages, values in groups.values():
                self.average(averages, values, self.n_averaged)
        self.n_averaged += 1

    def state_dict(self, to_rank0_only: bool = True) -> dict[str, torch.Tensor]:
        """The full EMA on the CPU, under `AveragedModel`'s keys: a collective that gathers one tensor at a time;
        an empty dict on the ranks other than 0 when `to_rank0_only`."""
        import torch.distributed as dist
        from torch.distributed.tensor import DTensor

        keep = not to_rank0_only or not dist.is_initialized() or dist.get_rank() == 0
        state = {"n_averaged": torch.tensor(self.n_averaged)} if keep else {}
        for name, average in self.averages.items():
            if name in self.layouts:
                mesh, placements, shape, stride = self.layouts[name]
                local = average.to(mesh.device_type)  # a shard offloaded to the CPU joins the mesh's collective
                sharded = DTensor.from_local(local, mesh, placements, run_check=False, shape=shape, stride=stride)
                average = sharded.full_tensor()
            if keep:
                state[f"module.{name}"] = average.detach().cpu().clone()
        return state

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Takes each rank's shards of a full EMA (`state_dict`'s, or `AveragedModel`'s from an unsharded run)."""
        from torch.distributed.tensor import distribute_tensor

        names = {f"module.{name}" for name in self.averages} | {"n_averaged"}
        if set(state) != names:
            raise ValueError(
                f"The EMA state does not match the model: missing {sorted(names - set(state))[:5]}, unexpected "
                f"{sorted(set(state) - names)[:5]}."
            )
        with torch.no_grad():
            for name, average in self.averages.items():
                value = state[f"module.{name}"]
                if name in self.layouts:
                    mesh, placements, _, _ = self.layouts[name]
                    value = distribute_tensor(value.to(average.device), mesh, placements, src_data_rank=None)
                    value = value.to_local()
                average.copy_(value)
        self.n_averaged = int(state["n_averaged"])

    def swapped_into(self, model: nn.Module):
        """A context in which `model` holds the EMA's weights and the EMA the model's (`exchanged`): to evaluate or
        save the EMA the way the model is, sharded (a collective save included)."""
        from torch.distributed.fsdp import FSDPModule

        for module in model.modules():  # a forward in evaluation may leave units gathered; the shards are the weights
            if isinstance(module, FSDPModule):
                module.reshard()
        return exchanged((tensor, self.averages[name]) for name, tensor in local_tensors(model).items())


@contextmanager
def exchanged(pairs):
    """Exchanges the values of each pair of same-shaped tensors in place for the duration of the block, one tensor's
    copy at a time."""
    pairs = list(pairs)

    def swap():
        with torch.no_grad():
            for first, second in pairs:
                kept = first.clone()
                first.copy_(second)
                second.copy_(kept)

    swap()
    try:
        yield
    finally:
        swap()
