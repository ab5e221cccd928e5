"""What the ecosystem's tools rely on: every module's forward calls its submodules, so PEFT adapters, forward hooks,
quantization, pruning, offloading and eval-mode gradients all see and change the function the model computes."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from conftest import free_port, tiny_config
from torch import nn

from ceit_hf import CeiTConfig, CeiTForImageClassification


def official_tiny(**overrides) -> CeiTConfig:
    """A tiny model with the official options (LeFF BatchNorms, pre-norm, conv patchify, layer-position embedding)."""
    return CeiTConfig.from_preset(
        "ceit_tiny_patch16_224",
        image_size=32,
        d_model=32,
        encoder_num_heads=2,
        num_encoder_blocks=2,
        i2t_out_channels=8,
        patch_size=2,
        num_classes=5,
        **overrides,
    )


def trained_statistics(model: CeiTForImageClassification) -> CeiTForImageClassification:
    """`model` with BatchNorm statistics away from their initial values, in eval mode."""
    model.train()
    with torch.no_grad():
        model(torch.randn(4, 3, 32, 32))
    return model.eval()


CONFIGS = {"official": official_tiny, "seed_api": tiny_config}
LORA_TARGETS = ["qkv", "proj", "expand", "reduce", "fc1", "fc2"]


@pytest.fixture(params=sorted(CONFIGS))
def model(request):
    torch.manual_seed(0)
    return trained_statistics(CeiTForImageClassification(CONFIGS[request.param]()))


@pytest.fixture
def x():
    return torch.randn(2, 3, 32, 32)


def test_lora_on_attention_lca_and_leff_changes_merges_and_trains(model, x):
    peft = pytest.importorskip("peft")
    with torch.no_grad():
        base = model(x).logits
    config = peft.LoraConfig(
        r=4, lora_alpha=8, target_modules=LORA_TARGETS, init_lora_weights=False, modules_to_save=["classifier"]
    )
    lora = peft.get_peft_model(copy.deepcopy(model), config).eval()
    wrapped = {name for name, module in lora.named_modules() if isinstance(module, peft.tuners.lora.LoraLayer)}
    for layer in (
        "encoder.layers.0.attention.qkv",
        "lca.attention.qkv",
        "lca.attention.proj",
        "encoder.layers.1.leff.expand",
        "encoder.layers.1.leff.reduce",
        "lca.mlp.fc1",
    ):
        assert any(name.endswith(layer) for name in wrapped), layer
    with torch.no_grad():
        adapted = lora(x).logits
    assert (adapted - base).abs().max() > 1e-3  # a non-zero adapter changes the eval output

    # the adapter only in the LCA: it still changes the logits (the LCA calls its qkv module)
    lca_only = peft.get_peft_model(
        copy.deepcopy(model), peft.LoraConfig(r=4, target_modules=r".*lca\.attention\.qkv", init_lora_weights=False)
    ).eval()
    with torch.no_grad():
        assert (lca_only(x).logits - base).abs().max() > 1e-4

    merged = copy.deepcopy(lora).merge_and_unload().eval()
    assert not any(isinstance(m, peft.tuners.lora.LoraLayer) for m in merged.modules())
    with torch.no_grad():
        assert (merged(x).logits - adapted).abs().max() < 1e-5

    lora.train()
    before = {name: p.detach().clone() for name, p in lora.named_parameters()}
    optimizer = torch.optim.SGD([p for p in lora.parameters() if p.requires_grad], lr=0.1)
    lora(x, labels=torch.tensor([0, 1])).loss.backward()
    optimizer.step()
    changed = {name for name, p in lora.named_parameters() if not torch.equal(p, before[name])}
    assert changed and all("lora_" in name or "modules_to_save" in name for name in changed)
    assert {name for name in changed if "lora_" in name} and any("lca" in name for name in changed)


def every_adaptable_layer(model) -> list[str]:
    """The names of every Linear and every ungrouped Conv2d (the stem and, with "conv" patchify, the patch
    projection): what a user's LoRA config may target."""
    return [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and m.groups == 1)
    ]


def test_lora_on_every_linear_and_convolution_applies_trains_and_merges(model, x):
    """Modules choose their computation from the configuration, not from their submodules' types: LoRA wrappers on
    every layer (stem convolution and patch projection included, both patchify techniques) change the eval logits,
    merge back within 1e-4, and every adapter but the dead last-block LeFF's gets a gradient."""
    peft = pytest.importorskip("peft")
    targets = every_adaptable_layer(model)
    assert (
        "ceit.embeddings.image_to_tokens.conv" in targets and "ceit.embeddings.patch_embeddings.projection" in targets
    )
    with torch.no_grad():
        base = model(x).logits
    for single in ("ceit.embeddings.image_to_tokens.conv", "ceit.embeddings.patch_embeddings.projection"):
        adapted = peft.get_peft_model(
            copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=[single], init_lora_weights=False)
        ).eval()
        with torch.no_grad():
            assert (adapted(x).logits - base).abs().max() > 1e-4, single
    lora = peft.get_peft_model(
        copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=targets, init_lora_weights=False)
    ).eval()
    assert sum(isinstance(m, peft.tuners.lora.LoraLayer) for m in lora.modules()) == len(targets)
    with torch.no_grad():
        adapted = lora(x).logits
        assert (adapted - base).abs().max() > 1e-3
        assert (copy.deepcopy(lora).merge_and_unload()(x).logits - adapted).abs().max() < 1e-4
    lora.train()(x, labels=torch.tensor([0, 1])).loss.backward()
    last_leff = f"encoder.layers.{model.config.num_encoder_blocks - 1}.leff."
    silent = [
        name
        for name, p in lora.named_parameters()
        if "lora_" in name and last_leff not in name and not p.grad.abs().sum() > 0
    ]
    assert not silent


def test_forward_hooks_fire_on_every_leaf_in_eval(model, x):
    leaves = {name: m for name, m in model.named_modules() if not list(m.children())}
    fired = set()
    handles = [m.register_forward_hook(lambda m, i, o, name=name: fired.add(name)) for name, m in leaves.items()]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    assert set(leaves) == fired


@pytest.mark.parametrize(
    "layer",
    [
        "ceit.embeddings.image_to_tokens.conv",
        "ceit.encoder.layers.0.leff.depthwise",
        "ceit.encoder.layers.0.leff.expand_norm",
        "ceit.lca.attention.qkv",
    ],
)
def test_a_hook_that_changes_an_output_changes_the_logits(model, x, layer):
    with torch.no_grad():
        base = model(x).logits
        handle = model.get_submodule(layer).register_forward_hook(lambda m, i, o: -o)
        changed = model(x).logits
        handle.remove()
    # (the same computation reruns bit for bit: a hook without effect would leave the logits exactly equal)
    assert (changed - base).abs().max() > 1e-6


def test_activations_kept_by_a_hook_are_not_overwritten(model, x):
    kept = {}
    model.ceit.encoder.layers[0].leff.expand.register_forward_hook(lambda m, i, o: kept.setdefault("expand", o))
    with torch.no_grad():
        model(x)
        copy_then = kept["expand"].clone()
        model(x * 2)  # a second call must not write into the first call's output
    assert torch.equal(kept["expand"], copy_then)


def test_eval_mode_gradients_reach_every_trainable_parameter(model, x):
    """Fine-tuning with frozen BatchNorm statistics (the model in eval mode) is a common recipe."""
    model.eval()
    # The last block's LeFF only transforms patch tokens, which the classifier never reads: the loss also looks at them
    out = model(x, labels=torch.tensor([0, 1]), output_hidden_states=True)
    (out.loss + out.hidden_states[-1].pow(2).mean()).backward()
    no_grad = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not no_grad
    assert model.ceit.encoder.layers[0].leff.depthwise.weight.grad.abs().sum() > 0


def test_dynamic_quantization_quantizes_every_linear(model, x):
    linears = sum(isinstance(m, nn.Linear) for m in model.modules())
    quantized = torch.ao.quantization.quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)
    dynamic = torch.ao.nn.quantized.dynamic.Linear
    assert sum(isinstance(m, dynamic) for m in quantized.modules()) == linears
    assert not any(type(m) is nn.Linear for m in quantized.modules())
    with torch.no_grad():
        reference, logits = model(x).logits, quantized(x).logits
    assert torch.isfinite(logits).all() and not torch.equal(logits, reference)
    assert (logits - reference).abs().max() < 0.1 * reference.abs().max() + 0.05


def test_pruning_takes_effect_and_survives_save_load(model, x, tmp_path):
    import torch.nn.utils.prune as prune

    with torch.no_grad():
        base = model(x).logits
    for layer in (
        model.ceit.encoder.layers[0].leff.expand,
        model.ceit.encoder.layers[0].leff.depthwise,
        model.ceit.lca.attention.qkv,
    ):
        prune.l1_unstructured(layer, "weight", amount=0.5)
    with torch.no_grad():
        pruned = model(x).logits
    assert (pruned - base).abs().max() > 1e-4
    for layer in (
        model.ceit.encoder.layers[0].leff.expand,
        model.ceit.encoder.layers[0].leff.depthwise,
        model.ceit.lca.attention.qkv,
    ):
        prune.remove(layer, "weight")
    model.save_pretrained(tmp_path)
    reloaded = CeiTForImageClassification.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(reloaded(x).logits, pruned)


def test_parametrizations_take_effect(model, x):
    with torch.no_grad():
        base = model(x).logits
    torch.nn.utils.parametrize.register_parametrization(
        model.ceit.encoder.layers[0].leff.reduce, "weight", _Scale(0.0)
    )
    with torch.no_grad():
        assert (model(x).logits - base).abs().max() > 1e-6


class _Scale(nn.Module):
    def __init__(self, factor):
        super().__init__()
        self.factor = factor

    def forward(self, weight):
        return weight * self.factor


def test_accelerate_cpu_offload_gives_equal_logits(model, x):
    accelerate = pytest.importorskip("accelerate")
    with torch.no_grad():
        reference = model(x).logits
    offloaded = accelerate.cpu_offload(copy.deepcopy(model), execution_device=torch.device("cpu"))
    with torch.no_grad():
        logits = offloaded(x).logits
    assert torch.isfinite(logits).all() and torch.allclose(logits, reference, atol=1e-6)


# --- BatchNorm statistics under activation checkpointing, synchronised across processes ------------------------


class CPUSyncBatchNorm(nn.SyncBatchNorm):
    """`nn.SyncBatchNorm` for CPU processes (torch's own runs on accelerators only): batch statistics are all-reduced
    across the gloo group, differentiably, exactly as SyncBatchNorm does with NCCL."""

    calls = 0

    def forward(self, x):
        if not self.training:
            return super().forward(x)
        type(self).calls += 1
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.ndim))
        count = torch.tensor(float(x.numel() // x.shape[1]))
        total = all_reduce(torch.stack([x.sum(dims), (x * x).sum(dims)]))
        count = all_reduce(count)
        mean = total[0] / count
        var = total[1] / count - mean * mean
        if self.momentum:
            with torch.no_grad():
                self.running_mean.mul_(1 - self.momentum).add_(self.momentum * mean.detach())
                self.running_var.mul_(1 - self.momentum).add_(self.momentum * var.detach() * count / (count - 1))
        self.num_batches_tracked.add_(1)
        shape = [1, -1] + [1] * (x.ndim - 2)
        normalised = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return normalised * self.weight.view(shape) + self.bias.view(shape)


def _convert(module):
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm):
            sync = CPUSyncBatchNorm(child.num_features, child.eps, child.momentum)
            sync.load_state_dict(child.state_dict())
            setattr(module, name, sync)
        else:
            _convert(child)
    return module


def _sync_batch_norm_worker(rank, world_size, port, results):
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world_size)
    torch.manual_seed(0)
    base = CeiTForImageClassification(official_tiny())
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(rank))  # each process its own batch
    labels = torch.tensor([0, 1, 2, 3])
    out = {}
    for name, kwargs in (
        ("plain", None),
        ("reentrant", {"use_reentrant": True}),
        ("non_reentrant", {"use_reentrant": False}),
    ):
        model = _convert(copy.deepcopy(base)).train()
        if kwargs is not None:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
        CPUSyncBatchNorm.calls = 0
        model(x, labels=labels).loss.backward()
        norm = model.ceit.encoder.layers[0].leff.expand_norm
        out[name] = {
            "grads": {n: p.grad.clone() for n, p in model.named_parameters()},
            "running_mean": norm.running_mean.clone(),
            "tracked": int(norm.num_batches_tracked),
            "calls": CPUSyncBatchNorm.calls,
        }
    results[rank] = out
    dist.destroy_process_group()


def test_checkpointing_updates_synced_batch_norm_statistics_once_and_replays_with_synced_statistics():
    results = mp.Manager().dict()
    mp.spawn(_sync_batch_norm_worker, args=(2, free_port(), results), nprocs=2, join=True)
    for rank in (0, 1):
        plain = results[rank]["plain"]
        assert plain["tracked"] == 1
        for name in ("reentrant", "non_reentrant"):
            run = results[rank][name]
            # the replay ran the synchronised BatchNorms again (3 per block, 2 blocks, plus the stem) ...
            assert run["calls"] > plain["calls"]
            # ... with the synchronised statistics (same gradients), updating the running statistics once
            assert run["tracked"] == 1 and torch.equal(run["running_mean"], plain["running_mean"])
            for key, grad in plain["grads"].items():
                assert torch.allclose(run["grads"][key], grad, atol=1e-5), (name, key)
    # synchronised: both processes hold the same running statistics from different batches
    assert torch.equal(results[0]["plain"]["running_mean"], results[1]["plain"]["running_mean"])
