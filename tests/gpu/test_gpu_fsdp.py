"""On the device: FSDP2 in bf16 with one process, through `ceit_hf.distributed.fully_shard_ceit` (the sharding that
`scripts/train.py` applies when accelerate runs FSDP): against the same model trained unsharded under bf16 autocast,
with the dtypes inside forward; one step of every CeiT model class; the sharded EMA against torch's `AveragedModel`.
(The 2-process checks run on CPU processes in CI: tests/training/test_distributed.py.)"""

import copy
import importlib

import pytest
import torch
import torch.distributed as dist

from .helpers import make_batch, make_model, relative_error


def fully_shard_ceit():
    try:
        return importlib.import_module("ceit_hf.distributed").fully_shard_ceit
    except (ImportError, AttributeError):
        pytest.skip("ceit_hf.distributed.fully_shard_ceit is not in this checkout")


@pytest.fixture
def process_group(device, tmp_path):
    """A one-process group (NCCL on a GPU, gloo on the CPU) and its device mesh, torn down after the test."""
    from torch.distributed.device_mesh import init_device_mesh

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)
    dist.init_process_group(
        "nccl" if device.type == "cuda" else "gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1
    )
    try:
        yield init_device_mesh(device.type, (1,))
    finally:
        dist.destroy_process_group()


def test_fsdp2_bf16_training_steps_follow_autocast(device, process_group):
    shard = fully_shard_ceit()
    from torch.distributed.fsdp import MixedPrecisionPolicy

    torch.manual_seed(0)
    reference = make_model(device, blocks=2).train()
    model = copy.deepcopy(reference)
    shard(
        model,
        mesh=process_group,
        mp_policy=MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32),
    )
    # Inside forward (outside it FSDP2 keeps every sharded parameter in fp32, whatever the policy): a pre-hook added
    # after `fully_shard` runs after FSDP's, which gathers the unit and casts its inputs.
    seen = {}

    def record(name):
        def hook(module, args):
            seen.setdefault(name, (args[0].dtype, module.weight.dtype))

        return hook

    layer = model.ceit.encoder.layers[0]
    layer.leff.expand_norm.register_forward_pre_hook(record("batch_norm"))
    layer.attention.qkv.register_forward_pre_hook(record("linear"))
    optimizers = [torch.optim.AdamW(m.parameters(), lr=1e-3) for m in (model, reference)]
    losses = {"fsdp": [], "autocast": []}
    for step in range(3):
        pixels, labels = make_batch(reference, 16, generator_seed=step)
        for name, module, optimizer in (("fsdp", model, optimizers[0]), ("autocast", reference, optimizers[1])):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=name == "autocast"):
                outputs = module(pixel_values=pixels, labels=labels)
            if name == "fsdp":
                assert outputs.logits.dtype == torch.bfloat16
            outputs.loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses[name].append(outputs.loss.detach().float())
    assert seen == {"batch_norm": (torch.float32,) * 2, "linear": (torch.bfloat16,) * 2}
    fsdp, autocast = torch.stack(losses["fsdp"]), torch.stack(losses["autocast"])
    assert torch.isfinite(fsdp).all()
    # bf16 weights (FSDP) and bf16 matmul operands on fp32 weights (autocast) round differently: bf16 closeness
    assert relative_error(fsdp, autocast) < 5e-2


BF16 = {"param_dtype": torch.bfloat16, "reduce_dtype": torch.float32}


@pytest.mark.parametrize("name", ["CeiTModel", "CeiTBackbone", "UperNet", "LoRA"])
def test_every_ceit_model_shards_and_trains_a_bf16_step(device, process_group, name):
    """Each model class sharded by `fully_shard_ceit` (every unit entered through its own forward): one bf16 step
    with a finite loss that changes the stem's weights (the LoRA adapters' for the PEFT model)."""
    shard = fully_shard_ceit()
    from torch.distributed.fsdp import MixedPrecisionPolicy

    from ceit_hf import CeiTBackbone, CeiTModel
    from examples.segmentation import small_upernet

    torch.manual_seed(0)
    classifier = make_model(device, blocks=2)
    config = classifier.config
    pixels, labels = make_batch(classifier, 4)
    if name == "CeiTModel":
        model, loss_of = CeiTModel(config), lambda m: m(pixels).pooler_output.float().square().mean()
    elif name == "CeiTBackbone":
        config.out_features = ["stem", "stage1", "stage2"]
        model = CeiTBackbone(config)
        loss_of = lambda m: sum(f.float().square().mean() for f in m(pixels).feature_maps)  # noqa: E731
    elif name == "UperNet":
        model = small_upernet(image_size=config.image_size)
        masks = torch.randint(0, 11, (4, config.image_size, config.image_size), device=device)
        loss_of = lambda m: m(pixels, labels=masks).loss  # noqa: E731
    else:
        peft = pytest.importorskip("peft")
        config = peft.LoraConfig(r=4, target_modules=["qkv"], modules_to_save=["classifier"])
        model = peft.get_peft_model(classifier, config)
        loss_of = lambda m: m(pixel_values=pixels, labels=labels).loss  # noqa: E731
    model = model.to(device).train()
    shard(model, mesh=process_group, mp_policy=MixedPrecisionPolicy(**BF16))
    watched = [p for n, p in model.named_parameters() if ("lora_B" if name == "LoRA" else "image_to_tokens.conv") in n]
    before = [p.detach().full_tensor().clone() for p in watched]
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    loss = loss_of(model)
    loss.backward()
    optimizer.step()
    assert watched and torch.isfinite(loss)
    assert all(not torch.equal(b, p.detach().full_tensor()) for b, p in zip(before, watched))


def test_sharded_ema_equals_averaged_model_of_the_full_weights(device, process_group):
    """`ceit_hf.distributed.ShardedEMA` on the sharded model, beside torch's `AveragedModel` updated from the gathered
    full weights: equal (BatchNorm statistics included) after three bf16 steps."""
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    from ceit_hf.distributed import ShardedEMA, full_state_dict

    shard = fully_shard_ceit()
    torch.manual_seed(0)
    model = make_model(device, blocks=2).train()
    reference = copy.deepcopy(model)
    shard(model, mesh=process_group, mp_policy=MixedPrecisionPolicy(**BF16))
    ema = ShardedEMA(model, 0.9)
    averaged = AveragedModel(reference, multi_avg_fn=get_ema_multi_avg_fn(0.9), use_buffers=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for step in range(3):
        pixels, labels = make_batch(reference, 8, generator_seed=step)
        model(pixel_values=pixels, labels=labels).loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        ema.update_parameters(model)
        reference.load_state_dict(full_state_dict(model))
        averaged.update_parameters(reference)
    gathered, expected = ema.state_dict(), averaged.state_dict()
    assert sorted(gathered) == sorted(expected)
    assert all(torch.equal(gathered[k], expected[k].cpu()) for k in expected)
