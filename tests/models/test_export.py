"""torch.compile, torch.export, ONNX and half-precision inference of the plain model."""

import runpy
from pathlib import Path

import pytest
import torch
from conftest import assert_same_training_results, tiny_config

from ceit_hf import CeiTConfig, CeiTForImageClassification
from ceit_hf.export import export_onnx


ROOT = Path(__file__).resolve().parents[2]


def trained_statistics(model, size=32, batch=8):
    """Moves every BatchNorm's running statistics away from (0, 1), so that folding them is not trivial."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(torch.randn(batch, model.config.in_channels, size, size) * 2 + 0.5)
    return model.eval()


@pytest.mark.parametrize(
    "backend",
    # Dynamo's capture is what `fullgraph=True` checks (seconds); inductor's CPU code generation takes half a minute
    # here and is the compiler's to test (the GPU suite compiles a training step).
    ["eager", pytest.param("inductor", marks=pytest.mark.slow)],
)
def test_torch_compile_fullgraph_inference(backend):
    model = trained_statistics(CeiTForImageClassification(tiny_config()))
    x = torch.randn(2, 3, 32, 32)
    compiled = torch.compile(model, fullgraph=True, backend=backend)
    with torch.no_grad():
        assert (compiled(x).logits - model(x).logits).abs().max() < 1e-5


@pytest.mark.slow
def test_torch_compile_fullgraph_training_step():
    model = CeiTForImageClassification(tiny_config(stochastic_depth=True, stochastic_depth_mp=0.1)).train()
    compiled = torch.compile(model, fullgraph=True)
    loss = compiled(torch.randn(4, 3, 32, 32), labels=torch.tensor([0, 1, 2, 3])).loss
    loss.backward()
    assert torch.isfinite(loss) and model.classifier.weight.grad is not None


def test_torch_export_with_dynamic_batch():
    model = trained_statistics(CeiTForImageClassification(tiny_config()))
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 3, 32, 32),), dynamic_shapes={"pixel_values": {0: batch}})
    for size in (1, 5):
        x = torch.randn(size, 3, 32, 32)
        with torch.no_grad():
            assert (program.module()(x).logits - model(x).logits).abs().max() < 1e-5


def test_onnx_export_script_matches_pytorch(tmp_path, capsys):
    model = trained_statistics(CeiTForImageClassification(tiny_config()))
    model.save_pretrained(tmp_path / "model")
    result = export_onnx(str(tmp_path / "model"))  # by default where Optimum puts it in a Hub repo: onnx/model.onnx
    assert result["max_abs_difference"] < 1e-4
    assert result["output"] == str(tmp_path / "model" / "onnx" / "model.onnx")
    import onnx

    graph = onnx.load(result["output"]).graph
    batch_dim = graph.input[0].type.tensor_type.shape.dim[0]
    assert graph.input[0].name == "pixel_values" and batch_dim.dim_param  # symbolic: dynamic batch
    # the folder still loads as before, and its upload includes the export
    assert CeiTForImageClassification.from_pretrained(tmp_path / "model").config.num_labels == model.config.num_labels
    from ceit_hf.hub import check_model_folder

    assert "Including ONNX export onnx/model.onnx" in check_model_folder(tmp_path / "model").summary()[0]
    # the command line passes its flags on and reports (in-process, the export itself stubbed: it ran above)
    script = runpy.run_path(str(ROOT / "scripts" / "export_onnx.py"))
    calls = []
    script["main"].__globals__["export_onnx"] = lambda *args, **kwargs: calls.append((args, kwargs)) or result
    script["main"](["--model", str(tmp_path / "model"), "--output", str(tmp_path / "cli.onnx"), "--atol", "1e-3"])
    options = {"opset": None, "check": True, "atol": 1e-3, "trust_remote_code": False}
    assert calls == [((str(tmp_path / "model"), str(tmp_path / "cli.onnx")), options)]
    assert "max |logit difference|" in capsys.readouterr().out
    # a Hub id has no folder for the default place
    with pytest.raises(ValueError, match="no local model folder: give the .onnx file to write"):
        export_onnx("ceit-hf/ceit_tiny_patch16_224")


# Half precision: documented tolerance, relative to the largest fp32 logit. Measured on CeiT-T (12 blocks) with
# trained BatchNorm statistics: bf16 1.2%, fp16 0.13% (weights cast); autocast 0.5% / 0.07%.
HALF_TOLERANCE = {torch.bfloat16: 0.05, torch.float16: 0.01}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_half_precision_inference_matches_fp32(dtype):
    config = CeiTConfig.from_preset("ceit_tiny_patch16_224", num_encoder_blocks=4)
    model = trained_statistics(CeiTForImageClassification(config), size=224, batch=4)
    x = torch.randn(4, 3, 224, 224)
    with torch.no_grad():
        reference = model(x).logits
        with torch.autocast("cpu", dtype=dtype):
            autocast = model(x).logits.float()
        half = model.to(dtype)(x.to(dtype)).logits.float()
    scale = reference.abs().max()
    for out in (autocast, half):
        assert torch.isfinite(out).all()
        assert (out - reference).abs().max() <= HALF_TOLERANCE[dtype] * scale


def test_compiled_training_with_activation_checkpointing_updates_batch_norm_once():
    """Compiled (fullgraph), the recomputation is part of the traced graph: same loss, gradients and statistics."""
    config = tiny_config(leff_depthwise_separable=False)
    reference = CeiTForImageClassification(config).train()
    model = CeiTForImageClassification(config).train()
    model.load_state_dict(reference.state_dict())
    model.activation_checkpointing_enable()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")
    x, labels = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 2, 3])
    compiled(x, labels=labels).loss.backward()
    reference(x, labels=labels).loss.backward()
    assert model.ceit.encoder.layers[0].leff.expand_norm.num_batches_tracked.item() == 1
    assert_same_training_results(model, reference, atol=1e-5)
