"""CeiT as an AutoBackbone for dense prediction: stages, shapes, loading a classification checkpoint, UperNet."""

import pytest
import torch
from conftest import tiny_config
from transformers import AutoBackbone, AutoConfig, UperNetForSemanticSegmentation

from ceit_hf import CeiTBackbone, CeiTConfig, CeiTForImageClassification
from examples.segmentation import NUM_LABELS, digit_canvases, mean_iou, small_upernet, train_segmentation


def test_auto_backbone_from_config_gives_the_requested_stages():
    config = tiny_config(out_features=["stem", "stage1", "stage2"])
    backbone = AutoBackbone.from_config(config)
    assert type(backbone) is CeiTBackbone
    assert backbone.stage_names == ["stem", "stage1", "stage2"] and backbone.channels == [8, 32, 32]
    maps = backbone(torch.randn(2, 3, 32, 32)).feature_maps
    assert [tuple(m.shape) for m in maps] == [(2, 8, 8, 8), (2, 32, 4, 4), (2, 32, 4, 4)]
    assert tiny_config().out_features == ["stage2"]  # the last stage by default
    assert CeiTConfig(out_indices=[0, -1]).out_features == ["stem", "stage12"]
    with pytest.raises(ValueError, match="out_features must be a subset of stage_names"):
        tiny_config(out_features=["stage3"])


def test_any_tiling_input_size_and_token_outputs():
    backbone = CeiTBackbone(tiny_config(out_features=["stem", "stage2"])).eval()
    out = backbone(torch.randn(1, 3, 48, 64), output_hidden_states=True)
    assert [tuple(m.shape) for m in out.feature_maps] == [(1, 8, 12, 16), (1, 32, 6, 8)]
    assert len(out.hidden_states) == 3 and out.hidden_states[0].shape == (1, 1 + 6 * 8, 32)
    with pytest.raises(ValueError, match="interpolate_pos_encoding"):
        backbone(torch.randn(1, 3, 48, 64), interpolate_pos_encoding=False)
    tokens = CeiTBackbone(tiny_config(reshape_hidden_states=False, apply_layernorm=False)).eval()
    assert tokens(torch.randn(1, 3, 32, 32)).feature_maps[0].shape == (1, 16, 32)


def test_stages_are_the_blocks_patch_tokens_of_a_classification_checkpoint(tmp_path):
    torch.manual_seed(0)
    classifier = CeiTForImageClassification(
        CeiTConfig.from_preset("ceit_tiny_patch16_224", num_encoder_blocks=2, image_size=64, num_classes=3)
    ).eval()
    classifier.save_pretrained(tmp_path)
    backbone, info = CeiTBackbone.from_pretrained(
        tmp_path, out_features=["stem", "stage1", "stage2"], output_loading_info=True
    )
    assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys"))  # no warnings
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        hidden = classifier.ceit(x, output_hidden_states=True).hidden_states
        stem, stage1, stage2 = backbone.eval()(x).feature_maps
        expected = backbone.layernorm(hidden[1][:, 1:]).transpose(1, 2).reshape(2, 192, 4, 4)
    assert torch.allclose(stage1, expected, atol=1e-6)
    assert torch.equal(backbone.layernorm.weight, classifier.ceit.layernorm.weight)  # the official final norm
    assert stem.shape == (2, 64, 16, 16)
    assert AutoConfig.from_pretrained(tmp_path).model_type == "ceit"


@pytest.mark.xfail(
    strict=True,
    raises=Exception,
    reason="transformers 5.24: AutoBackbone.from_pretrained asks the "
    "Hub whether a local folder is a repo before loading it (fails offline and for absolute paths)",
)
def test_auto_backbone_from_pretrained_local_folder(tmp_path):
    CeiTForImageClassification(tiny_config()).save_pretrained(tmp_path)
    assert type(AutoBackbone.from_pretrained(tmp_path)) is CeiTBackbone


def test_upernet_forward_loss_backward():
    model = small_upernet()
    images, masks = digit_canvases(2)
    out = model(images, labels=masks)
    assert out.logits.shape == (2, NUM_LABELS, 64, 64) and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.backbone.embeddings.image_to_tokens.conv.weight.grad.abs().sum() > 0
    assert isinstance(model, UperNetForSemanticSegmentation) and type(model.backbone) is CeiTBackbone


def test_digit_canvases_are_labelled_where_the_digits_are():
    images, masks = digit_canvases(4, seed=3)
    assert images.shape == (4, 3, 64, 64) and masks.shape == (4, 64, 64)
    assert ((masks > 0) <= (images[:, 0] > 0.2)).all()  # labelled pixels are (near) stroke pixels
    assert set(masks.unique().tolist()) <= set(range(NUM_LABELS)) and (masks > 0).any()
    perfect = torch.nn.functional.one_hot(masks, NUM_LABELS).permute(0, 3, 1, 2).float()
    assert mean_iou(perfect, masks) == 1.0


def test_a_short_training_lowers_the_loss_and_raises_the_mean_iou():
    _, history = train_segmentation(steps=40, batch_size=8, log=None)
    assert history["after"]["loss"] < 0.5 * history["before"]["loss"]
    # (this early the gain is mostly the background class; the slow test below learns the digits)
    assert history["after"]["mean_iou"] > history["before"]["mean_iou"] + 0.05


@pytest.mark.slow
def test_the_documented_example_learns_the_digits():
    """`examples/segmentation_example.py`'s default run (800 steps, about 2 minutes on 2 cores)."""
    _, history = train_segmentation(log=None)
    assert history["after"]["mean_iou"] > 0.5 and history["after"]["loss"] < 0.1 * history["before"]["loss"]
