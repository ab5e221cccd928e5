"""`optimize_for_inference`: the same logits as the plain model (fp32, 1e-5), the original untouched, eval-only,
the fused CPU kernels and their fallback, torch.compile and torch.export."""

import copy

import pytest
import torch
from conftest import tiny_config

from ceit_hf import CeiTConfig, CeiTForImageClassification, inference, optimize_for_inference


CONFIGS = {
    "official": lambda: CeiTConfig.from_preset(
        "ceit_tiny_patch16_224", num_encoder_blocks=3, image_size=32, patch_size=2
    ),
    "seed_api": lambda: tiny_config(),  # post-norm, separable LeFF with final GELU, linear patchify, MLP-free head
    "pre_norm_layer_scale": lambda: tiny_config(
        ln_order="pre",
        lca_encoder_ln_order="pre",
        layer_scale=0.1,
        lca_encoder_layer_scale=0.1,
        qkv_bias=True,
        leff_depthwise_separable=False,
        patchify_technique="conv",
        classifier_mlp_d=16,
        i2t_conv_bias=True,
    ),
    "no_batch_norm": lambda: tiny_config(leff_batch_norm=False, leff_final_activation=False),
}


def trained_statistics(model, batch=8):
    """BatchNorm statistics, weights and biases away from their initial values (zero biases, unit scales), so that
    folding is not trivial and a bias left out shows."""
    model.train()
    size = model.config.image_hw[0]
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(batch, 3, size, size) * 2 + 0.5)
        for name, param in model.named_parameters():
            if name.endswith("norm.weight") or "_norm." in name:
                param.mul_(1.5).add_(0.1)
            if name.endswith("bias"):
                param.add_(torch.randn_like(param), alpha=0.1)
    return model.eval()


def assert_every_gradient_reaches_the_loss(model):
    """After a backward pass of the loss: every parameter has a non-zero gradient, except two kinds whose gradient is
    zero by construction. The last block's LeFF: its patch tokens reach no loss (only class tokens go on to the LCA)
    and it passes the class token through, so its gradients are exactly zero. The bias of a layer whose output only
    a BatchNorm in training mode normalises (LeFF's Linear/convolution layers, the stem's convolution): the batch
    mean cancels it, so its gradient is rounding noise, far below its weight's."""
    last_leff = f"ceit.encoder.layers.{len(model.ceit.encoder.layers) - 1}.leff."
    before_batch_norm = ("image_to_tokens.conv.bias",)
    if model.config.leff_batch_norm:
        before_batch_norm += tuple(f".leff.{name}.bias" for name in ("expand", "depthwise", "pointwise", "reduce"))
    gradients = {name: p.grad for name, p in model.named_parameters()}
    assert all(g is not None for g in gradients.values()), [n for n, g in gradients.items() if g is None]
    for name, gradient in gradients.items():
        if name.startswith(last_leff):
            assert not gradient.any(), name
        elif name.endswith(before_batch_norm):
            weight = gradients[name.removesuffix("bias") + "weight"]
            assert gradient.abs().max() <= 1e-4 * weight.abs().max(), name
        else:
            assert gradient.any(), name


@pytest.fixture(params=sorted(CONFIGS))
def model(request):
    torch.manual_seed(0)
    return trained_statistics(CeiTForImageClassification(CONFIGS[request.param]()))


@pytest.mark.parametrize("fused_kernels, channels_last", [(True, True), (False, False)])
def test_same_logits_and_pooled_output(model, fused_kernels, channels_last):
    x = torch.randn(4, 3, 32, 32)
    optimized = optimize_for_inference(model, fused_kernels=fused_kernels, channels_last=channels_last)
    with torch.no_grad():
        assert (optimized(x).logits - model(x).logits).abs().max() < 1e-5
        base = optimize_for_inference(model.ceit)
        assert (base(x).pooler_output - model.ceit(x).pooler_output).abs().max() < 1e-5
    assert not any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in optimized.modules())


def test_the_fallback_without_the_fused_kernel_is_exact(model, monkeypatch):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        fused = optimize_for_inference(model)(x).logits
        monkeypatch.setattr(inference, "_fused_conv_available", lambda: False)
        fallback = optimize_for_inference(model)(x).logits
        monkeypatch.undo()
        plain = model(x).logits
    assert (fallback - plain).abs().max() < 1e-5 and (fused - fallback).abs().max() < 1e-5


def test_the_original_is_untouched_and_still_trains(model):
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimized = optimize_for_inference(model)
    assert all(torch.equal(v, state[k]) for k, v in model.state_dict().items())
    model.train()
    model(torch.randn(2, 3, 32, 32), labels=torch.tensor([0, 1])).loss.backward()
    assert_every_gradient_reaches_the_loss(model)
    assert not any(p.requires_grad for p in optimized.parameters())


def test_eval_only(model, tmp_path):
    optimized = optimize_for_inference(model)
    for train in (optimized.train, optimized.ceit.encoder.layers[0].leff.train):
        with pytest.raises(RuntimeError) as refusal:
            train()
        assert str(refusal.value) == (
            "This model comes from ceit_hf.optimize_for_inference and is eval-only (its BatchNorms are folded into "
            "fixed weights). Train the original model instead."
        )
    optimized.eval()  # allowed
    for save in (optimized.save_pretrained, optimized.push_to_hub):
        with pytest.raises(RuntimeError) as refusal:
            save(tmp_path / "never-written")
        assert str(refusal.value) == (
            "This model comes from ceit_hf.optimize_for_inference: its BatchNorms are folded and its last block "
            "replaced, so its weights do not fit a CeiT checkpoint. Save the original model; optimize again after "
            "loading it."
        )
    assert not (tmp_path / "never-written").exists()
    with pytest.raises(ValueError) as refusal:
        optimize_for_inference(optimized)
    assert str(refusal.value) == "The model is already optimized for inference."
    with pytest.raises(TypeError) as refusal:
        optimize_for_inference(torch.nn.Linear(2, 2))
    assert str(refusal.value) == "optimize_for_inference takes a CeiTForImageClassification or CeiTModel, got Linear."


def test_optimize_if_ceit_takes_an_eval_ceit_only():
    """validate.py and the export script take any image classifier: only an installed CeiT in eval mode is optimized."""
    from ceit_hf.inference import optimize_if_ceit

    other = torch.nn.Linear(2, 2).eval()
    assert optimize_if_ceit(other) is other
    model = CeiTForImageClassification(CONFIGS["official"]())
    assert optimize_if_ceit(model.train()) is model
    optimized = optimize_if_ceit(model.eval(), dtype=torch.bfloat16)
    assert optimized is not model and optimized.dtype == torch.bfloat16
    assert isinstance(optimized.ceit.encoder.layers[0].leff, inference.CeiTInferenceLeFF)


def cpu_kernels(model, x):
    """The names of the CPU operators `model(x)` runs, as torch's profiler records them."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile, torch.no_grad():
        model(x)
    return {event.key for event in profile.key_averages()}


@pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="the fused kernel is oneDNN's")
def test_the_fused_kernel_and_channels_last_are_the_defaults_and_can_be_turned_off():
    """The documented CPU speed-ups: the depthwise convolution and GELU run as oneDNN's one fused kernel in eager fp32,
    and the stem's convolutions are channels-last, unless turned off."""
    torch.manual_seed(0)
    model = trained_statistics(CeiTForImageClassification(CONFIGS["official"]()))
    x = torch.randn(2, 3, 32, 32)
    fused = "mkldnn::_convolution_pointwise"
    default = optimize_for_inference(model)
    assert fused in cpu_kernels(default, x)
    assert fused not in cpu_kernels(optimize_for_inference(model, fused_kernels=False), x)
    stem = default.ceit.embeddings.image_to_tokens.conv
    assert stem.weight.is_contiguous(memory_format=torch.channels_last) and not stem.weight.is_contiguous()
    plain = optimize_for_inference(model, channels_last=False).ceit.embeddings.image_to_tokens.conv
    assert plain.weight.is_contiguous()


def test_gradients_with_respect_to_the_input_are_the_plain_models(model):
    """Saliency maps and adversarial examples go through the optimized model too: an input that requires a gradient
    takes the autograd-safe kernels (no in-place GELU, no fused kernel without a derivative) and gets the same one."""
    x = torch.randn(2, 3, 32, 32)
    gradients = []
    for candidate in (model, optimize_for_inference(model)):
        inputs = x.clone().requires_grad_(True)
        candidate(inputs).logits.logsumexp(-1).sum().backward()
        gradients.append(inputs.grad)
    assert (gradients[0] - gradients[1]).abs().max() < 1e-5 * gradients[0].abs().max() + 1e-7


def test_a_traced_graph_holds_no_cpu_only_kernels():
    """torch.jit.trace records plain operators (which run on any device), not oneDNN's fused CPU kernel."""
    torch.manual_seed(0)
    model = trained_statistics(CeiTForImageClassification(CONFIGS["official"]()))
    optimized = optimize_for_inference(model)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        traced = torch.jit.trace(optimized, (x,), strict=False, check_trace=False)
        assert (traced(x)["logits"] - model(x).logits).abs().max() < 1e-5
    assert "mkldnn" not in str(traced.inlined_graph) and "gelu_" not in str(traced.inlined_graph)


def test_refuses_unmerged_peft_adapters(model):
    peft = pytest.importorskip("peft")
    lora = peft.get_peft_model(copy.deepcopy(model), peft.LoraConfig(r=2, target_modules=["qkv"]))
    with pytest.raises(ValueError) as refusal:
        optimize_for_inference(lora.base_model.model)
    assert str(refusal.value) == (
        "The model holds unmerged PEFT adapters (ceit.encoder.layers.0.attention.qkv, ...): merge them first "
        "(`model = peft_model.merge_and_unload()`), then optimize."
    )
    ia3 = peft.get_peft_model(copy.deepcopy(model), peft.IA3Config(target_modules=["proj"], feedforward_modules=[]))
    with pytest.raises(ValueError, match=r"unmerged PEFT adapters \(ceit.encoder.layers.0.attention.proj, ...\)"):
        optimize_for_inference(ia3.base_model.model)  # any PEFT method, not LoRA only
    merged = lora.merge_and_unload()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (optimize_for_inference(merged)(x).logits - merged(x).logits).abs().max() < 1e-5


def test_class_token_only_last_block_keeps_the_logits_and_drops_patch_tokens(model):
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        full = optimize_for_inference(model, class_token_only=False)(x)
        short = optimize_for_inference(model)(x)
    assert full.logits.shape == short.logits.shape and (full.logits - short.logits).abs().max() < 1e-5
    base = optimize_for_inference(model.ceit)
    assert base(x).last_hidden_state.shape[1] == 1


def test_torch_compile_fullgraph():
    model = trained_statistics(CeiTForImageClassification(CONFIGS["official"]()))
    optimized = optimize_for_inference(model)
    compiled = torch.compile(optimized, fullgraph=True, backend="eager")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (compiled(x).logits - model(x).logits).abs().max() < 1e-5


def test_torch_export_with_dynamic_batch():
    model = trained_statistics(CeiTForImageClassification(CONFIGS["official"]()))
    optimized = optimize_for_inference(model)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(optimized, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},))
    x = torch.randn(5, 3, 32, 32)
    with torch.no_grad():
        assert (program.module()(x).logits - model(x).logits).abs().max() < 1e-5
    assert "mkldnn" not in str(program.graph)


def test_evaluate_uses_it_with_the_same_results(tmp_path):
    from ceit_hf import CeiTImageProcessor
    from ceit_hf.evaluation import main

    config = CONFIGS["official"]()
    config.id2label = {i: str(i) for i in range(10)}  # the bundled digits
    config.label2id = {str(i): i for i in range(10)}
    torch.manual_seed(0)
    trained_statistics(CeiTForImageClassification(config)).save_pretrained(tmp_path)
    CeiTImageProcessor(crop_size=32).save_pretrained(tmp_path)
    common = ["--model", str(tmp_path), "--max_eval_samples", "24", "--batch_size", "8"]
    optimized, plain = main(common), main([*common, "--no_optimize"])
    assert optimized["optimized_for_inference"] and not plain["optimized_for_inference"]
    assert optimized["eval_accuracy"] == plain["eval_accuracy"] and optimized["num_images"] == 24


def test_low_precision_folds_in_fp32_then_casts():
    """A bf16 model is folded from its weights in fp32, then cast: the folded stem equals torch's fold of the fp32
    copies cast to bf16, and the logits stay within bf16 tolerance of the fp32 model's."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.manual_seed(0)
    reference = trained_statistics(CeiTForImageClassification(CONFIGS["official"]()))
    half = copy.deepcopy(reference).to(torch.bfloat16)
    optimized = optimize_for_inference(half)
    stem = half.ceit.embeddings.image_to_tokens
    expected = fuse_conv_bn_eval(copy.deepcopy(stem.conv).float(), copy.deepcopy(stem.norm).float())
    folded = optimized.ceit.embeddings.image_to_tokens.conv
    assert folded.weight.dtype == torch.bfloat16
    assert torch.equal(folded.weight, expected.weight.to(torch.bfloat16))
    assert torch.equal(folded.bias, expected.bias.to(torch.bfloat16))
    x = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        out, ref = optimized(x.to(torch.bfloat16)).logits.float(), reference(x).logits
    assert (out - ref).abs().max() <= 0.05 * ref.abs().max()
    assert optimize_for_inference(reference, dtype=torch.bfloat16).ceit.encoder.layers[0].leff.expand.weight.dtype == (
        torch.bfloat16
    )


def test_evaluate_in_bfloat16_matches_float32(tmp_path):
    """`validate.py --dtype bfloat16`: the optimized model runs in bf16 and scores as the fp32 one on the digits."""
    from ceit_hf import CeiTImageProcessor
    from ceit_hf.evaluation import main

    config = CONFIGS["official"]()
    config.id2label = {i: str(i) for i in range(10)}
    config.label2id = {str(i): i for i in range(10)}
    torch.manual_seed(0)
    trained_statistics(CeiTForImageClassification(config)).save_pretrained(tmp_path)
    CeiTImageProcessor(crop_size=32).save_pretrained(tmp_path)
    common = ["--model", str(tmp_path), "--max_eval_samples", "24", "--batch_size", "8"]
    half, full = main([*common, "--dtype", "bfloat16"]), main(common)
    assert half["dtype"] == "bfloat16" and half["optimized_for_inference"] and half["num_images"] == 24
    assert abs(half["eval_accuracy"] - full["eval_accuracy"]) <= 2 / 24
