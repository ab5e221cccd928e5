"""ceit_hf.visualization and scripts/visualize_attention.py: the maps are distributions of the grid's shape, the
rollout is Abnar & Zuidema's, the grid maps back onto the processor's crop, the figure is written, the attention
implementation is put back, and the main job's model looks at the digits' ink (docs/attention.md)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_config
from PIL import Image

from ceit_hf import CeiTForImageClassification, CeiTImageProcessor
from ceit_hf.visualization import (
    attention_figure,
    attention_maps,
    attention_rollout,
    class_token_maps,
    lca_weights,
    to_image_pixels,
    token_grid_box,
)


ROOT = Path(__file__).resolve().parents[2]
DIGITS_MODEL = ROOT / "tests" / "fixtures" / "digits_model"


def _script():
    spec = importlib.util.spec_from_file_location("visualize_attention", ROOT / "scripts" / "visualize_attention.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def digits():
    """The main job's model (tests/fixtures/digits_model), its processor and 360 held-out digits (8x8, 0-255)."""
    from ceit_hf.data import digits_dataset

    validation = digits_dataset()["validation"]
    model = CeiTForImageClassification.from_pretrained(DIGITS_MODEL)
    processor = CeiTImageProcessor.from_pretrained(DIGITS_MODEL)
    return model, processor, list(validation["image"]), list(validation["label"])


@pytest.mark.parametrize("height, width", [(32, 32), (32, 48)])
@pytest.mark.parametrize("head", [None, 1])
def test_maps_are_distributions_over_the_token_grid(height, width, head):
    model = CeiTForImageClassification(tiny_config())
    pixel_values = torch.randn(2, 3, height, width)
    maps = attention_maps(model, pixel_values, head=head)
    rows, cols = model.config.token_grid_size(height, width)
    assert maps.grid_size == (rows, cols) and maps.logits.shape == (2, 5)
    assert maps.blocks.shape == (2, 2, rows, cols) and maps.rollout.shape == (2, rows, cols)
    assert maps.lca.shape == (2, 2)
    for distribution in (maps.blocks.flatten(-2), maps.rollout.flatten(-2), maps.lca):
        assert (distribution >= 0).all()
        torch.testing.assert_close(distribution.sum(-1), torch.ones(distribution.shape[:-1]))
    # the class token's row over the patches, renormalised: its own share (> 0) is left out
    model.set_attn_implementation("eager")
    with torch.no_grad():  # (attention_maps has put the model back in training mode: eval for the same BatchNorm)
        model.eval()
        attentions = model(pixel_values, interpolate_pos_encoding=True, output_attentions=True).attentions
    row = attentions[1].mean(1) if head is None else attentions[1][:, head]
    assert (row[:, 0, 0] > 0).all()
    torch.testing.assert_close(maps.blocks[:, 1].flatten(-2) * row[:, 0, 1:].sum(-1, keepdim=True), row[:, 0, 1:])


def test_head_out_of_range_names_the_valid_range():
    with pytest.raises(ValueError, match=r"head 2 is out of range: this attention has 2 heads, 0\.\.1"):
        lca_weights(torch.rand(1, 2, 1, 4).softmax(-1), head=2)


def test_uniform_attention_rolls_out_to_a_uniform_map():
    model = CeiTForImageClassification(tiny_config(qkv_bias=True))
    with torch.no_grad():
        for layer in model.ceit.encoder.layers:  # zero queries and keys: every score equal, attention uniform
            layer.attention.qkv.weight.zero_()
            layer.attention.qkv.bias.zero_()
    maps = attention_maps(model, torch.randn(1, 3, 32, 48))
    uniform = torch.full((1, 4, 6), 1 / 24)
    torch.testing.assert_close(maps.rollout, uniform)
    torch.testing.assert_close(maps.blocks, uniform[:, None].expand(1, 2, 4, 6))


def test_rollout_of_a_hand_made_two_block_example():
    # 1 class token + 2 patches, 2 heads; block 1's heads average to class row [0.2, 0.8, 0], block 2's is
    # [0.2, 0, 0.8]; patches attend to themselves.
    eye = torch.eye(3)
    block1 = torch.stack([eye.clone(), eye.clone()])
    block1[0, 0], block1[1, 0] = torch.tensor([0.4, 0.6, 0.0]), torch.tensor([0.0, 1.0, 0.0])
    block2 = eye.repeat(2, 1, 1)
    block2[:, 0] = torch.tensor([0.2, 0.0, 0.8])
    # A'_1 row 0 = [0.6, 0.4, 0], A'_2 row 0 = [0.6, 0, 0.4]; (A'_2 A'_1) row 0 = 0.6 [0.6, 0.4, 0] + 0.4 [0, 0, 1]
    # = [0.36, 0.24, 0.40], over the patches [0.24, 0.40] / 0.64 (the other order would give [0.625, 0.375])
    torch.testing.assert_close(attention_rollout([block1, block2], (1, 2)), torch.tensor([[0.375, 0.625]]))
    torch.testing.assert_close(class_token_maps([block1, block2], (1, 2)), torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]]))


def test_token_grid_maps_back_onto_the_processors_crop():
    config = tiny_config()
    # 60x90 -> shorter side 32: 32x48 -> center crop 32x32 from column 8: columns 15..75 of the original
    processor = CeiTImageProcessor(size={"shortest_edge": 32})
    box = token_grid_box(config, processor, (60, 90))
    assert box == pytest.approx((15.0, 0.0, 75.0, 60.0))
    one_hot = torch.zeros(4, 4)
    one_hot[1, 3] = 1.0  # row 1, last column: rows 15..30, columns 60..75 of the original
    pixels = to_image_pixels(one_hot, box, (60, 90))
    assert pixels.shape == (60, 90) and pixels.sum() == pytest.approx(1.0)
    assert torch.nonzero(pixels).amin(0).tolist() == [15, 60] and torch.nonzero(pixels).amax(0).tolist() == [29, 74]
    # the digits' processor: 8x8 -> 36x36 -> crop 32x32 from (2, 2): the grid covers 4/9 .. 68/9 of each side
    digits_processor = CeiTImageProcessor.from_pretrained(DIGITS_MODEL)
    assert token_grid_box(config, digits_processor, (8, 8)) == pytest.approx((4 / 9, 4 / 9, 68 / 9, 68 / 9))


def test_figure_keeps_the_aspect_ratio_and_attention_implementation_is_restored():
    model = CeiTForImageClassification(tiny_config())
    model.set_attn_implementation("sdpa")
    model.train()
    image = Image.fromarray(np.arange(60 * 90, dtype=np.uint8).reshape(60, 90)).convert("RGB")
    figure, maps = attention_figure(model, CeiTImageProcessor(size={"shortest_edge": 32}), image, head=0)
    assert model.config._attn_implementation == "sdpa" and model.training
    assert maps.blocks.shape == (1, 2, 4, 4)
    figure.draw_without_rendering()  # runs the layout, which sets the axes to the aspect of their image
    extent = figure.axes[0].get_window_extent()
    assert extent.width / extent.height == pytest.approx(90 / 60, rel=0.02)
    with pytest.raises(ValueError):  # a failing forward (1-channel input) also puts both back
        attention_maps(model, torch.randn(1, 1, 32, 32))
    assert model.config._attn_implementation == "sdpa" and model.training


def test_script_writes_one_png(tmp_path, digits):
    _, _, images, _ = digits
    images[0].save(tmp_path / "digit.png")
    output = tmp_path / "attention.png"
    _script().main(["--model", str(DIGITS_MODEL), "--image", str(tmp_path / "digit.png"), "--output", str(output)])
    assert output.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(output) as png:
        assert png.width / png.height == pytest.approx(12 / 8, rel=0.02)  # 12 x 8 inches for a square image


def test_script_errors_are_one_line(tmp_path):
    script = _script()
    (tmp_path / "bad.png").write_text("not an image")
    Image.new("L", (8, 8)).save(tmp_path / "digit.png")
    cases = {
        str(tmp_path / "missing.png"): (None, "does not exist"),
        str(tmp_path / "bad.png"): (None, "is not a readable image"),
        str(tmp_path / "digit.png"): ("2", r"--head 2 is out of range: use 0\.\.1 \(the blocks have 2"),
    }
    for image, (head, message) in cases.items():
        argv = ["--model", str(DIGITS_MODEL), "--image", image] + (["--head", head] if head else [])
        with pytest.raises(SystemExit, match=f"^error: .*{message}") as error:
            script.main(argv)
        assert "\n" not in str(error.value)


def test_main_job_model_looks_at_the_ink(digits):
    """On the 360 held-out digits, the class token's last-block attention, mapped back to the 8x8 pixels, puts more
    mass on the ink (pixels >= 128) than the ink's share of the image; block 3's follows each digit's own strokes
    (more mass on its own ink than on other digits'). Measured: docs/attention.md."""
    model, processor, images, labels = digits
    maps = attention_maps(model, processor(images=images, return_tensors="pt")["pixel_values"])
    assert (maps.logits.argmax(-1) == torch.tensor(labels)).float().mean() > 0.95
    ink = torch.tensor(np.stack([np.asarray(image) for image in images]) >= 128).float()
    share = ink.mean((-2, -1))
    pixels = to_image_pixels(maps.blocks, token_grid_box(model.config, processor, (8, 8)), (8, 8))
    on_ink = torch.einsum("bkhw,bhw->bk", pixels, ink)  # (digits, blocks)
    assert on_ink[:, -1].mean() > 1.3 * share.mean()  # measured 0.49 vs 0.32
    assert (on_ink[:, -1] > share).float().mean() > 0.75  # measured 83% of the digits
    cross = torch.einsum("ihw,jhw->ij", pixels[:, 2], ink)  # block 3's map of digit i on the ink of digit j
    own, others = cross.diag(), (cross.sum(1) - cross.diag()) / (len(images) - 1)
    assert own.mean() > others.mean() + 0.05  # measured 0.63 vs 0.53
