"""Damaged and mismatched checkpoints, and numerics across the presets (bad model inputs: test_modeling_ceit.py).

Loading follows transformers' contract: weights missing from a checkpoint are initialised and listed in the load
report, unknown ones are reported, mismatched shapes raise `RuntimeError` unless `ignore_mismatched_sizes=True`,
damaged files raise. Strict key checking is the official-checkpoint converter's job (tests/models/test_conversion.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from safetensors.torch import load_file, save_file
from transformers import AutoModelForImageClassification

from ceit_hf import PRESETS, CeiTConfig, CeiTForImageClassification, CeiTModel


# --- damaged and mismatched checkpoints ----------------------------------------------------------------------------


@pytest.fixture
def saved_model(tmp_path) -> tuple[Path, CeiTForImageClassification]:
    model = CeiTForImageClassification(tiny_config(num_encoder_blocks=1)).eval()
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    return folder, model


def rewrite_weights(folder: Path, change) -> None:
    weights = load_file(folder / "model.safetensors")
    save_file(change(weights), folder / "model.safetensors", metadata={"format": "pt"})


@pytest.mark.parametrize(
    "damage",
    {
        "truncated": lambda data: data[: len(data) // 2],
        "cut_in_the_header": lambda data: data[:20],
        "garbled_header_length": lambda data: b"\xff" * 8 + data[8:],
        "garbled_header_json": lambda data: data[:8] + b"{not json" + data[17:],
        "zero_bytes": lambda data: b"",
    }.items(),
    ids=lambda item: item[0],
)
def test_damaged_safetensors_fail_to_load(saved_model, damage):
    folder, _ = saved_model
    path = folder / "model.safetensors"
    path.write_bytes(damage[1](path.read_bytes()))
    # safetensors' own error (SafetensorError): the load stops, no model with random weights comes back
    for loader in (CeiTForImageClassification, AutoModelForImageClassification, CeiTModel):
        with pytest.raises(Exception, match="Error while deserializing header"):
            loader.from_pretrained(folder)


def test_damaged_config_fails_to_load(saved_model):
    folder, _ = saved_model
    config = folder / "config.json"
    config.write_text(config.read_text()[:100])
    with pytest.raises(OSError, match="not a valid JSON file"):
        CeiTForImageClassification.from_pretrained(folder)


KEY = "ceit.encoder.layers.0.attention.qkv.weight"


def test_missing_and_unexpected_weights_are_initialised_and_reported(saved_model):
    """transformers' contract: a weight missing from the checkpoint is initialised (as `_init_weights` does) and
    listed in the loading info, an unknown one ignored and listed."""
    folder, model = saved_model
    rewrite_weights(folder, lambda w: {k: v for k, v in w.items() if k != KEY} | {"ceit.extra": torch.zeros(1)})
    loaded, info = CeiTForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert info["missing_keys"] == {KEY} and info["unexpected_keys"] == {"ceit.extra"}
    weight = loaded.state_dict()[KEY]
    assert (
        not torch.equal(weight, model.state_dict()[KEY]) and 0.015 < weight.std().item() < 0.025
    )  # trunc-normal 0.02
    others = {k: v for k, v in loaded.state_dict().items() if k != KEY}
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in others.items())


def test_mismatched_shapes_raise_unless_ignored(saved_model):
    folder, model = saved_model
    rewrite_weights(folder, lambda w: w | {KEY: torch.zeros(4, 4)})
    for loader in (CeiTForImageClassification, AutoModelForImageClassification):
        with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
            loader.from_pretrained(folder)
    loaded, info = CeiTForImageClassification.from_pretrained(
        folder, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert {key for key, *_ in info["mismatched_keys"]} == {KEY}
    assert loaded.state_dict()[KEY].shape == (96, 32)


def test_classifier_of_another_size_needs_ignore_mismatched_sizes(saved_model):
    folder, model = saved_model
    with pytest.raises(RuntimeError, match="ignore_mismatched_sizes"):
        CeiTForImageClassification.from_pretrained(folder, num_labels=3)
    tuned, info = CeiTForImageClassification.from_pretrained(
        folder, num_labels=3, ignore_mismatched_sizes=True, output_loading_info=True
    )
    assert tuned.classifier.out_features == 3 and {key for key, *_ in info["mismatched_keys"]} == {
        "classifier.weight",
        "classifier.bias",
    }
    assert torch.equal(tuned.ceit.embeddings.position_embeddings, model.ceit.embeddings.position_embeddings)


def test_heads_may_be_dropped_or_added(saved_model, tmp_path):
    folder, model = saved_model
    x = torch.randn(2, 3, 32, 32)
    headless = CeiTForImageClassification.from_pretrained(folder, num_labels=0)  # classifier keys unused
    with torch.no_grad():
        assert torch.equal(headless(x).logits, model.ceit(x).pooler_output)
    base_folder = tmp_path / "base"
    model.ceit.save_pretrained(base_folder)
    with_head = CeiTForImageClassification.from_pretrained(base_folder)  # a new classifier on a backbone checkpoint
    assert torch.equal(with_head.ceit.embeddings.position_embeddings, model.ceit.embeddings.position_embeddings)


# --- numerics across the presets (one block each) ------------------------------------------------------------------


@pytest.mark.parametrize("preset", sorted(PRESETS))
def test_preset_numerics(preset):
    torch.manual_seed(0)
    config = CeiTConfig.from_preset(preset, num_encoder_blocks=1)
    model = CeiTForImageClassification(config).eval()
    side = config.image_hw[0]
    x = torch.randn(3, 3, side, side)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    extremes = {
        "zeros": torch.zeros(2, 3, side, side),
        "+1e4": torch.full((2, 3, side, side), 1e4),
        "-1e4": torch.full((2, 3, side, side), -1e4),
        "+-1e4": torch.randn(2, 3, side, side).sign() * 1e4,
        # normalised pixels lie within about +-3; fp32 LayerNorm variances overflow beyond about 1e19
        "1e12": torch.randn(2, 3, side, side) * 1e12,
    }
    with torch.no_grad():
        logits = model(x).logits
        assert torch.isfinite(logits).all()
        for name, extreme in extremes.items():
            assert torch.isfinite(model(extreme).logits).all(), name
        # eval: deterministic, and each image's logits independent of the rest of the batch
        assert torch.equal(model(x).logits, logits)
        single = torch.cat([model(x[i : i + 1]).logits for i in range(len(x))])
        assert (single - logits).abs().max() < 1e-4
        # eval leaves every BatchNorm statistic (stem and LeFF) as it was
        assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())
        assert any(isinstance(m, torch.nn.BatchNorm1d) for m in model.modules())

        bf16 = model.to(torch.bfloat16)
        low = bf16(x).logits
        assert low.dtype == torch.bfloat16 and torch.isfinite(low).all()
        assert torch.isfinite(bf16(extremes["+-1e4"]).logits).all()  # agreement with fp32: tests/models/test_export.py


# --- checkpoints saved by ceit_hf 0.1.0 (the version with BatchNorm folding in the forward) -----------------------

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "ceit_0_1_0"


@pytest.mark.parametrize("name", ["official", "seed_api"])
def test_checkpoints_saved_by_version_0_1_0_load_to_the_same_logits(name):
    """Folders written by ceit_hf 0.1.0 (tests/fixtures, with the logits that version computed) load without missing
    or unexpected keys and give the same logits: the plain modules kept every state_dict key and shape."""
    folder = FIXTURES / name
    expected = torch.load(folder / "expected.pt", weights_only=True)
    model, info = CeiTForImageClassification.from_pretrained(folder, output_loading_info=True)
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    with torch.no_grad():
        logits = model.eval()(expected["pixel_values"]).logits
    assert (logits - expected["logits"]).abs().max() < 1e-5
