import ast
import json
import re
from pathlib import Path

import pytest
import torch
from conftest import tiny_config
from huggingface_hub.errors import StrictDataclassClassValidationError
from transformers import AutoConfig, AutoModel
from transformers.testing_utils import set_config_for_less_flaky_test

from ceit_hf import PRESETS, CeiTConfig, CeiTForImageClassification, CeiTModel


# The seed API (cv.backbones.CeiT.model.CeiT): every keyword and its default.
SEED_DEFAULTS = {
    "image_size": 224,
    "d_model": 768,
    "patch_size": 4,
    "dropout": 0.0,
    "encoder_num_heads": 12,
    "num_encoder_blocks": 12,
    "encoder_dropout": 0.0,
    "encoder_attention_dropout": 0.0,
    "encoder_projection_dropout": 0.0,
    "classifier_mlp_d": 2048,
    "i2t_out_channels": 32,
    "i2t_conv_kernel_size": 7,
    "i2t_conv_stride": 2,
    "i2t_max_pool_kernel_size": 3,
    "i2t_max_pool_stride": 2,
    "leff_expand_ratio": 4,
    "leff_depthwise_kernel": 3,
    "leff_depthwise_stride": 1,
    "leff_depthwise_padding": 1,
    "leff_depthwise_separable": True,
    "lca_encoder_expansion_ratio": 4,
    "lca_encoder_num_heads": 12,
    "lca_encoder_dropout": 0.0,
    "lca_encoder_attention_dropout": 0.0,
    "lca_encoder_projection_dropout": 0.0,
    "lca_encoder_ln_order": "post",
    "lca_encoder_stodepth_prob": 0.0,
    "lca_encoder_layer_scale": None,
    "lca_encoder_qkv_bias": False,
    "patchify_technique": "linear",
    "stochastic_depth": False,
    "stochastic_depth_mp": None,
    "layer_scale": None,
    "ln_order": "post",
    "num_classes": 1000,
    "in_channels": 3,
}

# Valid values different from every default.
SEED_VALUES = {
    "image_size": 64,
    "d_model": 48,
    "patch_size": 2,
    "dropout": 0.1,
    "encoder_num_heads": 4,
    "num_encoder_blocks": 3,
    "encoder_dropout": 0.2,
    "encoder_attention_dropout": 0.3,
    "encoder_projection_dropout": 0.4,
    "classifier_mlp_d": 64,
    "i2t_out_channels": 16,
    "i2t_conv_kernel_size": 5,
    "i2t_conv_stride": 1,
    "i2t_max_pool_kernel_size": 2,
    "i2t_max_pool_stride": 4,
    "leff_expand_ratio": 2,
    "leff_depthwise_kernel": 5,
    "leff_depthwise_stride": 1,
    "leff_depthwise_padding": 2,
    "leff_depthwise_separable": False,
    "lca_encoder_expansion_ratio": 3,
    "lca_encoder_num_heads": 6,
    "lca_encoder_dropout": 0.15,
    "lca_encoder_attention_dropout": 0.25,
    "lca_encoder_projection_dropout": 0.35,
    "lca_encoder_ln_order": "pre",
    "lca_encoder_stodepth_prob": 0.05,
    "lca_encoder_layer_scale": 1e-4,
    "lca_encoder_qkv_bias": True,
    "patchify_technique": "conv",
    "stochastic_depth": True,
    "stochastic_depth_mp": 0.2,
    "layer_scale": 1e-5,
    "ln_order": "pre",
    "num_classes": 7,
    "in_channels": 1,
}

SEED_API_FILE = Path(__file__).resolve().parents[2].parent / "shared" / "reference" / "seed_cv_ceit_api.txt"


def test_seed_keyword_table_is_complete():
    assert len(SEED_DEFAULTS) == 36
    assert set(SEED_VALUES) == set(SEED_DEFAULTS)
    # The LeFF depthwise stride can only be 1 (the residual needs the same grid); every other value differs.
    assert [k for k, v in SEED_DEFAULTS.items() if SEED_VALUES[k] == v] == ["leff_depthwise_stride"]


@pytest.mark.skipif(not SEED_API_FILE.exists(), reason="shared/reference is not beside this checkout")
def test_seed_defaults_match_the_published_signature():
    text = SEED_API_FILE.read_text()
    signature = re.search(r"class cv\.backbones\.CeiT\.model\.CeiT\((.*?)\)\[source\]", text, re.DOTALL).group(1)
    call = ast.parse(f"f({signature})", mode="eval").body
    published = {kw.arg: ast.literal_eval(kw.value) for kw in call.keywords}
    assert published == SEED_DEFAULTS


def test_default_config_equals_seed_defaults():
    config = CeiTConfig()
    for key, value in SEED_DEFAULTS.items():
        assert getattr(config, key) == value, key


def test_every_seed_keyword_is_accepted_and_read_back():
    config = CeiTConfig(**SEED_VALUES, i2t_max_pool_padding=0)
    for key, value in SEED_VALUES.items():
        assert getattr(config, key) == value, key
    model = CeiTForImageClassification(config)
    logits = model(torch.randn(2, 1, 64, 64)).logits
    assert logits.shape == (2, 7)


@pytest.mark.parametrize(
    "alias, field, value",
    [
        ("hidden_size", "d_model", 96),
        ("num_hidden_layers", "num_encoder_blocks", 5),
        ("num_attention_heads", "encoder_num_heads", 4),
        ("num_channels", "in_channels", 1),
        ("num_labels", "num_classes", 9),
        ("num_classes", "num_labels", 9),
    ],
)
def test_transformers_names_are_aliases(alias, field, value):
    config = CeiTConfig(**{alias: value})
    assert getattr(config, field) == value
    assert getattr(config, alias) == value
    config = CeiTConfig()
    setattr(config, alias, value)
    assert getattr(config, field) == value


def test_num_classes_follows_id2label():
    config = CeiTConfig(id2label={0: "cat", 1: "dog"})
    assert config.num_classes == config.num_labels == 2
    assert config.label2id == {"cat": 0, "dog": 1}
    with pytest.raises(ValueError, match="num_classes"):
        CeiTConfig(num_classes=3, num_labels=4)


@pytest.mark.parametrize(
    "name, params",
    [
        ("ceit_tiny_patch16_224", 6_356_904),
        ("ceit_small_patch16_224", 24_204_840),
        ("ceit_base_patch16_224", 94_405_416),
        ("ceit_tiny_patch16_384", 6_429_864),
        ("ceit_small_patch16_384", 24_350_760),
    ],
)
def test_presets_have_the_official_parameter_counts(name, params):
    with torch.device("meta"):
        model = CeiTForImageClassification(CeiTConfig.from_preset(name))
    assert sum(p.numel() for p in model.parameters()) == params


def test_preset_overrides_accept_seed_and_transformers_names():
    config = CeiTConfig.from_preset("ceit_small_patch16_224", num_hidden_layers=6, num_classes=10, dropout=0.1)
    assert (config.d_model, config.num_encoder_blocks, config.num_labels, config.dropout) == (384, 6, 10, 0.1)
    config = CeiTConfig.from_preset(
        "ceit_tiny_patch16_224", hidden_size=96, num_attention_heads=2, lca_encoder_num_heads=2
    )
    assert config.d_model == 96 and config.encoder_num_heads == 2
    config = CeiTConfig.from_preset("ceit_tiny_patch16_224", id2label={0: "a", 1: "b"})
    assert config.num_labels == 2
    assert set(PRESETS) == {
        "ceit_tiny_patch16_224",
        "ceit_small_patch16_224",
        "ceit_base_patch16_224",
        "ceit_tiny_patch16_384",
        "ceit_small_patch16_384",
    }
    with pytest.raises(ValueError, match="Unknown CeiT preset 'ceit_huge'"):
        CeiTConfig.from_preset("ceit_huge")


def test_default_stem_matches_the_paper_geometry():
    config = CeiTConfig()
    assert (config.i2t_conv_padding, config.i2t_max_pool_padding) == (3, 1)
    assert config.stem_output_size(224, 224) == (56, 56)
    assert config.token_grid_size(224, 224) == (14, 14)
    assert config.token_grid_size(384, 384) == (24, 24)
    assert config.token_grid_size(224, 320) == (14, 20)


def test_drop_path_rates_rise_linearly():
    config = tiny_config(num_encoder_blocks=5, stochastic_depth=True, stochastic_depth_mp=0.2)
    assert config.drop_path_rates() == pytest.approx([0.0, 0.05, 0.1, 0.15, 0.2])
    assert tiny_config().drop_path_rates() == [0.0, 0.0]
    assert tiny_config(num_encoder_blocks=1, stochastic_depth=True, stochastic_depth_mp=0.3).drop_path_rates() == [0.0]


def test_round_trip_through_save_and_auto_config(tmp_path):
    config = CeiTConfig(**SEED_VALUES, i2t_max_pool_padding=0, qkv_bias=True, patch_norm=False)
    config.save_pretrained(tmp_path)
    loaded = AutoConfig.from_pretrained(tmp_path)
    assert isinstance(loaded, CeiTConfig)
    assert comparable(loaded) == comparable(config)
    assert comparable(AutoConfig.for_model("ceit")) == comparable(CeiTConfig())


def comparable(config):
    """The options of a config, without the bookkeeping that saving adds."""
    ignored = {"_name_or_path", "transformers_version", "model_type"}
    return {k: v for k, v in config.to_dict().items() if k not in ignored}


INVALID = [
    ({"d_model": 100}, "encoder_num_heads", "divisible"),
    ({"lca_encoder_num_heads": 5}, "lca_encoder_num_heads", "divisible"),
    ({"ln_order": "middle"}, "ln_order", "one of"),
    ({"lca_encoder_ln_order": "sandwich"}, "lca_encoder_ln_order", "one of"),
    ({"patchify_technique": "pixels"}, "patchify_technique", "one of"),
    ({"dropout": 1.0}, "dropout", r"\[0, 1\)"),
    ({"encoder_dropout": -0.1}, "encoder_dropout", r"\[0, 1\)"),
    ({"encoder_attention_dropout": 2}, "encoder_attention_dropout", r"\[0, 1\)"),
    ({"encoder_projection_dropout": float("nan")}, "encoder_projection_dropout", r"\[0, 1\)"),
    ({"lca_encoder_dropout": 1.5}, "lca_encoder_dropout", r"\[0, 1\)"),
    ({"lca_encoder_attention_dropout": -1}, "lca_encoder_attention_dropout", r"\[0, 1\)"),
    ({"lca_encoder_projection_dropout": "0.1"}, "lca_encoder_projection_dropout", r"\[0, 1\)"),
    ({"lca_encoder_stodepth_prob": 1.0}, "lca_encoder_stodepth_prob", r"\[0, 1\)"),
    ({"d_model": 0}, "d_model", "positive"),
    ({"patch_size": -4}, "patch_size", "positive"),
    ({"num_encoder_blocks": 0}, "num_encoder_blocks", "positive"),
    ({"i2t_out_channels": 0}, "i2t_out_channels", "positive"),
    ({"in_channels": 0}, "in_channels", "positive"),
    ({"leff_expand_ratio": 0}, "leff_expand_ratio", "positive"),
    ({"lca_encoder_expansion_ratio": 1.5}, "lca_encoder_expansion_ratio", "positive int"),
    ({"classifier_mlp_d": 0}, "classifier_mlp_d", "positive"),
    ({"num_classes": -1}, "num_classes", ">= 0"),
    ({"image_size": 0}, "image_size", "positive"),
    ({"image_size": [224]}, "image_size", "pair"),
    ({"image_size": 220}, "image_size", "tile"),
    ({"image_size": 8}, "image_size", "tile"),
    ({"leff_depthwise_stride": 2}, "leff_depthwise_stride", "token grid"),
    ({"leff_depthwise_padding": 0}, "leff_depthwise_padding", "token grid"),
    ({"leff_depthwise_kernel": 4, "leff_depthwise_padding": 2}, "leff_depthwise_padding", "odd kernel"),
    ({"stochastic_depth": True}, "stochastic_depth_mp", "stochastic_depth=True"),
    ({"stochastic_depth": True, "stochastic_depth_mp": 1.0}, "stochastic_depth_mp", r"\[0, 1\)"),
    ({"stochastic_depth": True, "stochastic_depth_mp": -0.1}, "stochastic_depth_mp", r"\[0, 1\)"),
    ({"layer_scale": -1e-5}, "layer_scale", ">= 0"),
    ({"lca_encoder_layer_scale": -1.0}, "lca_encoder_layer_scale", ">= 0"),
    ({"stochastic_depth": "yes"}, "stochastic_depth", "True or False"),
    ({"qkv_bias": 1}, "qkv_bias", "True or False"),
    ({"layer_norm_eps": 0.0}, "layer_norm_eps", "positive"),
    ({"i2t_max_pool_padding": 2}, "i2t_max_pool_padding", "half"),
    ({"i2t_conv_padding": -1}, "i2t_conv_padding", ">= 0"),
]


@pytest.mark.parametrize("kwargs, field, rule", INVALID, ids=[f"{i}-{case[1]}" for i, case in enumerate(INVALID)])
def test_invalid_values_raise_value_error_naming_field_and_rule(kwargs, field, rule):
    with pytest.raises(ValueError, match=rf"{field}") as error:
        CeiTConfig(**kwargs)
    assert re.search(rule, str(error.value)), str(error.value)


def test_validation_also_runs_on_save(tmp_path):
    config = CeiTConfig()
    config.ln_order = "middle"
    # transformers' `@strict` configs wrap a rule's ValueError in StrictDataclassClassValidationError on save
    with pytest.raises(StrictDataclassClassValidationError, match="ln_order='middle' is invalid"):
        config.save_pretrained(tmp_path)


@pytest.mark.parametrize(
    "build, typo, suggestion",
    [
        (lambda: CeiTConfig(num_encoder_block=3), "num_encoder_block", "num_encoder_blocks"),
        (lambda: CeiTConfig(num_clases=5), "num_clases", "num_classes"),
        (lambda: CeiTConfig(hiden_size=64), "hiden_size", "hidden_size"),
        (lambda: CeiTConfig(leff_depthwise_kernal=5), "leff_depthwise_kernal", "leff_depthwise_kernel"),
        (lambda: CeiTConfig(output_hiden_states=True), "output_hiden_states", "output_hidden_states"),
        (lambda: CeiTConfig.from_preset("ceit_tiny_patch16_224", num_clases=5), "num_clases", "num_classes"),
    ],
)
def test_a_typo_of_an_option_is_refused_with_a_suggestion(build, typo, suggestion):
    with pytest.raises(ValueError, match=rf"unknown option '{typo}'; did you mean '{suggestion}'\?"):
        build()


def test_unknown_preset_suggests_the_closest():
    with pytest.raises(ValueError, match="Did you mean 'ceit_tiny_patch16_224'"):
        CeiTConfig.from_preset("ceit_tiny_patch16_244")


def test_keys_transformers_writes_still_load(tmp_path):
    """A config.json as transformers writes it (architectures, dtype, transformers_version, auto_map, ...) and keys
    far from any option (user metadata) load as before."""
    config = CeiTConfig(d_model=64, encoder_num_heads=2, id2label={0: "a", 1: "b"})
    config.architectures = ["CeiTForImageClassification"]
    config.save_pretrained(tmp_path)
    data = json.loads((tmp_path / "config.json").read_text())
    data.update(torch_dtype="float32", my_dataset_note="digits", _name_or_path="x", use_cache=False)
    (tmp_path / "config.json").write_text(json.dumps(data))
    loaded = CeiTConfig.from_pretrained(tmp_path)
    assert loaded.d_model == 64 and loaded.my_dataset_note == "digits" and loaded.num_labels == 2


def test_a_saved_config_with_attributes_close_to_options_loads(tmp_path):
    """What `save_pretrained` wrote always loads, attributes that other tools set included: transformers' own
    `set_config_for_less_flaky_test` sets `layer_norm_epsilon`, `norm_epsilon`, ... on every config before saving."""
    config = CeiTConfig(d_model=64, encoder_num_heads=2)
    set_config_for_less_flaky_test(config)
    config.layer_norm_eps = 1e-5
    config.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    extras = {"rms_norm_eps", "post_norm_eps", "norm_eps", "norm_epsilon", "layer_norm_epsilon", "batch_norm_eps"}
    assert extras <= saved.keys()
    for load in (CeiTConfig.from_pretrained, AutoConfig.from_pretrained):
        loaded = load(tmp_path)
        assert comparable(loaded) == comparable(config)
        assert loaded.layer_norm_epsilon == 1.0 and loaded.layer_norm_eps == 1e-5
    model = CeiTModel(config)
    model.save_pretrained(tmp_path / "model")
    assert AutoModel.from_pretrained(tmp_path / "model").config.norm_epsilon == 1.0
    assert CeiTConfig.from_dict(config.to_dict()).batch_norm_eps == 1.0


@pytest.mark.parametrize(
    "load",
    [
        lambda path: CeiTConfig.from_pretrained(path, layer_norm_epsilon=1e-5),
        lambda path: AutoConfig.from_pretrained(path, num_encoder_block=3),
        lambda path: AutoModel.from_pretrained(path, num_encoder_block=3),
    ],
)
def test_typed_keywords_of_a_load_are_still_checked(tmp_path, load):
    CeiTModel(CeiTConfig(d_model=64, encoder_num_heads=2, num_encoder_blocks=2)).save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="unknown option '(layer_norm_epsilon|num_encoder_block)'; did you mean"):
        load(tmp_path)


def test_lca_heads_follow_the_encoder_heads_unless_given():
    assert CeiTConfig(hidden_size=64, num_attention_heads=2).lca_encoder_num_heads == 2
    assert CeiTConfig(d_model=64, encoder_num_heads=2, lca_encoder_num_heads=4).lca_encoder_num_heads == 4
    assert CeiTConfig.from_preset("ceit_small_patch16_224").lca_encoder_num_heads == 6
    assert CeiTConfig.from_preset("ceit_small_patch16_224", encoder_num_heads=8).lca_encoder_num_heads == 8


def test_a_saved_config_holds_only_its_fields_and_transformers_standard_keys(tmp_path):
    """config.json (of a config, and of a model folder) has the dataclass's fields and transformers' standard keys,
    and nothing else: no class attribute (transformers 5.25 lists its class variables among the dataclass fields that
    `__dataclass_fields__` walks), whatever the installed transformers."""
    import dataclasses
    import json

    from ceit_hf import CeiTForImageClassification

    standard = {"model_type", "transformers_version", "architectures", "auto_map", "dtype"}
    backbone = {"out_features", "out_indices", "stage_names"}  # BackboneConfigMixin's, as DINOv2's config saves them
    fields = {field.name for field in dataclasses.fields(CeiTConfig)}
    config = CeiTConfig.from_preset("ceit_tiny_patch16_224", num_encoder_blocks=1, num_classes=3)
    config.save_pretrained(tmp_path / "config")
    CeiTForImageClassification(config).save_pretrained(tmp_path / "model")
    for folder in ("config", "model"):
        saved = set(json.loads((tmp_path / folder / "config.json").read_text()))
        assert saved - fields - standard - backbone == set(), folder
        assert {"d_model", "num_encoder_blocks", "model_type"} <= saved
