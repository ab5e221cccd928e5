# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""CeiT under FSDP2 (`torch.distributed.fsdp.fully_shard`) with mixed precision, and its sharded EMA. A bf16 policy
over a CeiT block would cast its BatchNorm weights but not their running statistics (the first forward fails), and the
statistics are where bf16 loses accuracy: `fully_shard_ceit` makes every BatchNorm its own fp32 unit."""

from contextlib import contextmanager
from functools import partial

import torch
import torch.distributed as dist
from torch import nn
from torch.optim.swa_utils import get_ema_multi_avg_fn

from .modeling_ceit import CeiTEmbeddings, CeiTLayer, CeiTPreTrainedModel


if dist.is_available():  # builds of torch without it still import the package
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict, set_model_state_dict
    from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard
    from torch.distributed.tensor import DTensor, distribute_tensor


def fully_shard_ceit(model: nn.Module, *, mp_policy=None, reshard_after_forward=True, **fsdp_kwargs) -> nn.Module:
    """Shards `model` (a CeiT, or any model holding CeiT blocks: a PEFT model, a UperNet over `CeiTBackbone`) in place
    with FSDP2 and returns it. Units: each BatchNorm (in fp32 under a lower-precision `mp_policy`), the embeddings,
    each `CeiTLayer`, then the root (LCA, classifier, the rest). `mp_policy` (default fp32) is torch's
    `MixedPrecisionPolicy` for all but the BatchNorms; the other arguments (`mesh`, `offload_policy`, ...) go to every
    `fully_shard` call."""
    if isinstance(model, FSDPModule):
        raise ValueError("The model is already sharded with FSDP2 (fully_shard); shard it once.")
    mp_policy = mp_policy or MixedPrecisionPolicy()
    shard = partial(fully_shard, mp_policy=mp_policy, reshard_after_forward=reshard_after_forward, **fsdp_kwargs)
    if mp_policy.param_dtype not in (None, torch.float32):  # in fp32 the BatchNorms shard with their block
        norm_policy = MixedPrecisionPolicy(torch.float32, torch.float32, output_dtype=mp_policy.param_dtype)
        for norm in [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]:
            shard(norm, mp_policy=norm_policy)
    # The LCA stays in the root unit with the classifier: it runs last, and the root is gathered for the whole step.
    for unit in [m for m in model.modules() if isinstance(m, (CeiTEmbeddings, CeiTLayer))]:
        shard(unit)
    shard(model)
    if isinstance(model, CeiTPreTrainedModel):  # every save (Trainer's, `save_pretrained_sharded`) goes through it
        sharded_class = type(model)

        def save_pretrained(*args, **kwargs):  # as its CeiT class: as `FSDP<class>`, the code and auto_map are FSDP's
            model.__class__ = sharded_class.__bases__[-1]
            try:
                return model.__class__.save_pretrained(model, *args, **kwargs)
            finally:
                model.__class__ = sharded_class

        model.save_pretrained = save_pretrained
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole (unsharded) state dict of an FSDP2 model, on rank 0's CPU (an empty dict on the other ranks; a
    collective: call it on all). The BatchNorm statistics are rank 0's: FSDP does not synchronise buffers."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_pretrained_sharded(model, save_directory, is_main_process: bool = True, **kwargs) -> None:
    """`save_pretrained` of an FSDP2-sharded CeiT: a collective that gathers the full weights, then the main process
    writes a normal transformers folder (safetensors, config, code) that `from_pretrained` loads without FSDP."""
    state_dict = full_state_dict(model)
    if is_main_process and state_dict:
        model.save_pretrained(save_directory, state_dict=state_dict, **kwargs)


def average_batch_norm_statistics(model: nn.Module) -> None:
    """Sets the running mean and variance of every BatchNorm of `model` to their mean over the ranks (a collective).
    FSDP replicates buffers without synchronising them: averaged after each optimizer step, evaluation and checkpoints
    see one set, from all ranks' batches."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    buffers = [buffer for norm in norms for buffer in (norm.running_mean, norm.running_var)]
    if not buffers:
        return
    with torch.no_grad():
        flat = torch.cat([buffer.float().flatten() for buffer in buffers])
        dist.all_reduce(flat)
        flat /= dist.get_world_size()
        for buffer, value in zip(buffers, flat.split([buffer.numel() for buffer in buffers])):
            buffer.copy_(value.view_as(buffer))


def check_fsdp_settings(version: int, activation_checkpointing: bool) -> None:
    """`ValueError` naming the setting to change where accelerate's FSDP plugin asks for what CeiT cannot run."""
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
    """`fully_shard_ceit` with the settings of accelerate's FSDP2 plugin, before `accelerator.prepare` (which leaves a
    model that is sharded already as it is). For `Trainer`, call it on `trainer.model` once the trainer exists."""
    plugin = accelerator.state.fsdp_plugin
    check_fsdp_settings(getattr(plugin, "fsdp_version", 1), plugin.activation_checkpointing)
    mesh = getattr(accelerator, "torch_device_mesh", None)
    if mesh is not None and accelerator.parallelism_config is not None:
        mesh = mesh[tuple(accelerator.parallelism_config.fsdp_dim_names)]
    # With cpu_ram_efficient_loading, transformers may have loaded the pretrained weights on rank 0 only; accelerate
    # would broadcast them in its preparation, which a pre-sharded model skips: broadcast them here instead.
    full = model.state_dict() if plugin.cpu_ram_efficient_loading and dist.get_rank() == 0 else None
    settings = {"reshard_after_forward": plugin.reshard_after_forward, "offload_policy": plugin.cpu_offload}
    model = fully_shard_ceit(model, mesh=mesh, mp_policy=plugin.mixed_precision_policy, **settings)
    if plugin.cpu_ram_efficient_loading:
        options = StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
        set_model_state_dict(model, full or {}, options=options)
    # accelerate's preparation leaves the sharded model as it is, but first looks up the layer classes of its wrap
    # policy by name (`CeiTLayer`), which sharding renamed (`FSDPCeiTLayer`): nothing is left for the policy to wrap.
    plugin.auto_wrap_policy = None
    # accelerate maps each optimizer parameter to the model's by the data pointer of its local shard, 0 for every
    # empty one (the class token and position embeddings on every rank but 0): the optimizers keep theirs instead.
    prepare = accelerator.prepare

    def prepare_keeping_parameters(*args, **kwargs):
        optimizers = [item for item in args if isinstance(item, torch.optim.Optimizer)]
        kept = [(optimizer, [list(group["params"]) for group in optimizer.param_groups]) for optimizer in optimizers]
        prepared = prepare(*args, **kwargs)
        for optimizer, groups in kept:  # (the group dicts may be new ones by now)
            for group, parameters in zip(optimizer.param_groups, groups, strict=True):
                group["params"] = parameters
        return prepared

    accelerator.prepare = prepare_keeping_parameters
    return model


def replicas_agree(model: nn.Module) -> bool:
    """Whether every rank holds the same parameters (a collective; compares each parameter's sum and sum of squares in
    float64). A difference means a rank diverged, and the saved model is rank 0's alone."""
    if not dist.is_available() or not dist.is_initialized():
        return True
    parameters = [p.detach().double() for p in model.parameters()]
    fingerprint = torch.stack([torch.stack((p.sum(), p.square().sum())) for p in parameters]).flatten()
    gathered = [torch.empty_like(fingerprint) for _ in range(dist.get_world_size())]
    dist.all_gather(gathered, fingerprint)
    return all(torch.equal(gathered[0], other) for other in gathered[1:])


def local_tensors(model: nn.Module) -> dict[str, torch.Tensor]:
    """`model`'s parameters and buffers by name as this rank holds them (a sharded one's local shard, a view)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return {name: t.to_local() if isinstance(t, DTensor) else t for name, t in named}


class ShardedEMA:
    """An exponential moving average of the weights of an FSDP2-sharded model that stays sharded: each rank averages
    its own shards and its copy of the buffers (the BatchNorm statistics). The rule of torch's `AveragedModel(model,
    multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)`, and its `state_dict` keys ("module." + name,
    "n_averaged", full weights), so a checkpoint's EMA resumes sharded or not. Call every method on all ranks."""

    def __init__(self, model: nn.Module, decay: float):
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
                groups.setdefault((average.dtype, average.device), []).append((average, current[name].detach()))
            for pairs in groups.values():
                self.average(*map(list, zip(*pairs)), self.n_averaged)
        self.n_averaged += 1

    def state_dict(self) -> dict[str, torch.Tensor]:
        """The full EMA on rank 0's CPU (a collective; an empty dict on the other ranks)."""
        keep = dist.get_rank() == 0
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

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Takes each rank's shards of a full EMA (`state_dict`'s, or `AveragedModel`'s from an unsharded run)."""
        names = {f"module.{name}" for name in self.averages} | {"n_averaged"}
        if set(state) != names:
            raise ValueError(
                f"The EMA state does not match the model: missing {sorted(names - set(state))[:5]}, unexpected "
                f"{sorted(set(state) - names)[:5]}."
            )
        for name, average in self.averages.items():
            value = state[f"module.{name}"]
            if name in self.layouts:
                mesh, placements, _, _ = self.layouts[name]
                value = distribute_tensor(value.to(average.device), mesh, placements, src_data_rank=None).to_local()
            average.copy_(value)
        self.n_averaged = int(state["n_averaged"])

    def swapped_into(self, model: nn.Module):
        """A context in which `model` holds the EMA's weights and the EMA the model's: to evaluate or save the EMA the
        way the model is, sharded."""
        for module in model.modules():  # a forward in evaluation may leave units gathered; the shards are the weights
            if isinstance(module, FSDPModule):
                module.reshard()
        return exchanged((tensor, self.averages[name]) for name, tensor in local_tensors(model).items())


@contextmanager
def exchanged(pairs):
    """Exchanges the values of each pair of same-shaped tensors in place for the duration of the block."""
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
