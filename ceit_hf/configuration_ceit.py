# Copyright 2026 The ceit_hf authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""CeiT model configuration. Hub remote code: imports only transformers (and its huggingface_hub)."""

from __future__ import annotations

import contextvars
import dataclasses
import difflib
import math
from numbers import Integral, Real
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin
from transformers.utils import auto_docstring


# What every official variant shares (coeusguo/ceit `ceit_model.py`): a padded 7x7/2 convolution without bias,
# BatchNorm and a padded 3x3/2 max-pool with 64 channels; a 4x4/4 patch convolution without LayerNorm; pre-norm
# blocks with qkv bias; LeFF with BatchNorm and no GELU after its last BatchNorm; the LCA with a layer-position
# embedding; a LayerNorm -> Linear head.
# fmt: off
_OFFICIAL = {
    "patch_size": 4, "num_encoder_blocks": 12, "classifier_mlp_d": None, "i2t_out_channels": 64,
    "i2t_conv_kernel_size": 7, "i2t_conv_stride": 2, "i2t_conv_padding": 3, "i2t_conv_bias": False,
    "i2t_max_pool_kernel_size": 3, "i2t_max_pool_stride": 2, "i2t_max_pool_padding": 1, "patch_norm": False,
    "patchify_technique": "conv", "leff_expand_ratio": 4, "leff_depthwise_kernel": 3, "leff_depthwise_stride": 1,
    "leff_depthwise_padding": 1, "leff_depthwise_separable": False, "leff_batch_norm": True,
    "leff_final_activation": False, "lca_encoder_expansion_ratio": 4, "lca_encoder_ln_order": "pre",
    "lca_encoder_qkv_bias": True, "lca_layer_position_embedding": True, "ln_order": "pre", "qkv_bias": True,
    "layer_norm_eps": 1e-6, "num_labels": 1000,
}
# fmt: on
PRESETS: dict[str, dict[str, Any]] = {
    f"ceit_{name}_patch16_{size}": {**_OFFICIAL, "d_model": width, "encoder_num_heads": heads, "image_size": size}
    for name, width, heads, sizes in (
        ("tiny", 192, 3, (224, 384)),
        ("small", 384, 6, (224, 384)),
        ("base", 768, 12, (224,)),
    )
    for size in sizes
}

# transformers' standard names -> the seed API's names (`num_classes` is the alias there: transformers derives
# `num_labels` from `id2label`).
ALIASES = {
    "hidden_size": "d_model",
    "num_hidden_layers": "num_encoder_blocks",
    "num_attention_heads": "encoder_num_heads",
    "num_channels": "in_channels",
    "num_classes": "num_labels",
}
LN_ORDERS = ("pre", "post")
PATCHIFY_TECHNIQUES = ("linear", "conv")


def _int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value) -> bool:
    return _int(value) or (isinstance(value, float) and math.isfinite(value))


def _plain(value):
    """A numpy (or other `numbers`) scalar as the Python number it holds (config.json holds only those)."""
    if isinstance(value, (bool, int, float)) or not isinstance(value, Real):
        return value
    return int(value) if isinstance(value, Integral) else float(value)


# Set while a saved config (`from_dict`, `from_json_file`) is built: what a file holds is kept, as transformers keeps any
# attribute; only keywords a person types are checked for typos.
_FROM_SAVED = contextvars.ContextVar("ceit_config_from_saved", default=False)


def _close_option(key: str) -> str | None:
    """The CeiT option (or transformers alias) that `key` looks like a typo of, if any."""
    options = {*CeiTConfig.__dataclass_fields__, *ALIASES}
    if key in options or hasattr(CeiTConfig, key):
        return None
    close = difflib.get_close_matches(key, options, n=1, cutoff=0.85)
    return close[0] if close else None


def refuse_typos(keywords) -> None:
    """`ValueError` for a keyword close to a CeiT option but none: transformers keeps unknown keywords as attributes
    (configs may carry metadata), so a typo of an option would otherwise build the default model in silence. A keyword
    that the config classes (PreTrainedConfig, BackboneConfigMixin) define is never a typo."""
    for key in keywords:
        if (option := _close_option(key)) is not None:
            raise ValueError(f"CeiTConfig got an unknown option {key!r}; did you mean {option!r}?")


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


# auto_docstring writes transformers' Args section (and checks every option is in it); the intro is given because
# its default one names the model from transformers' own module tree, which a Hub remote-code file is not part of.
@auto_docstring(
    custom_intro="""
    Configuration of a CeiT model (Convolution-enhanced image Transformer, Yuan et al., ICCV 2021, arXiv:2103.11816).
    Every keyword of the `cv.backbones.CeiT.model.CeiT` API is accepted with its name, meaning and default, so
    `CeiTConfig()` is that API's default model (post-norm blocks, an MLP head); the official CeiT-T/S/B are presets:
    `CeiTConfig.from_preset("ceit_tiny_patch16_224", num_classes=10)`. transformers' names are aliases (`hidden_size`,
    `num_hidden_layers`, `num_attention_heads`, `num_channels`, `num_labels`). A keyword close to an option but none
    raises `ValueError` ("did you mean"). A pre-norm LCA is followed by a final LayerNorm; a post-norm one ends in one.
    """
)
# `@strict` runs the `validate_*` rules at init and on save. Its per-assignment type checks read the field annotations,
# which `from __future__ import annotations` leaves as strings it does not check: `_check_options` checks every field
# instead, so numpy scalars and ints for floats are taken, and each error names the option and the rule.
@strict
class CeiTConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    image_size (`int` or `list[int]`, *optional*, defaults to 224):
        Input size (or `[height, width]`) the position embeddings are made for.
    d_model (`int`, *optional*, defaults to 768):
        Token width D (alias `hidden_size`).
    patch_size (`int`, *optional*, defaults to 4):
        Patch side on the Image-to-Tokens map (4 there = 16 pixels: the official "patch16").
    dropout (`float`, *optional*, defaults to 0.0):
        Dropout on the embeddings and inside the MLP head.
    encoder_num_heads (`int`, *optional*, defaults to 12):
        Attention heads of the encoder blocks (alias `num_attention_heads`).
    num_encoder_blocks (`int`, *optional*, defaults to 12):
        Number of encoder blocks (alias `num_hidden_layers`).
    encoder_dropout (`float`, *optional*, defaults to 0.0):
        Dropout on LeFF's hidden activations, before its last projection.
    encoder_attention_dropout (`float`, *optional*, defaults to 0.0):
        Dropout on the encoder attention probabilities.
    encoder_projection_dropout (`float`, *optional*, defaults to 0.0):
        Dropout after the encoder attention's output projection.
    classifier_mlp_d (`int`, *optional*, defaults to 2048):
        Hidden width of the MLP head (Linear-Tanh-Dropout-Linear); `None`: one Linear (official).
    i2t_out_channels (`int`, *optional*, defaults to 32):
        Channels of the Image-to-Tokens stem (64 in the official models).
    i2t_conv_kernel_size (`int`, *optional*, defaults to 7):
        Kernel of the stem convolution.
    i2t_conv_stride (`int`, *optional*, defaults to 2):
        Stride of the stem convolution.
    i2t_max_pool_kernel_size (`int`, *optional*, defaults to 3):
        Kernel of the stem max-pool.
    i2t_max_pool_stride (`int`, *optional*, defaults to 2):
        Stride of the stem max-pool.
    leff_expand_ratio (`int`, *optional*, defaults to 4):
        LeFF hidden width = `leff_expand_ratio * d_model`.
    leff_depthwise_kernel (`int`, *optional*, defaults to 3):
        Kernel of LeFF's depthwise convolution.
    leff_depthwise_stride (`int`, *optional*, defaults to 1):
        Stride of LeFF's depthwise convolution (1: it keeps the token grid).
    leff_depthwise_padding (`int`, *optional*, defaults to 1):
        Padding of LeFF's depthwise convolution (`2 * padding == kernel - 1`).
    leff_depthwise_separable (`bool`, *optional*, defaults to `True`):
        A pointwise layer after the depthwise convolution (depthwise-separable).
    lca_encoder_expansion_ratio (`int`, *optional*, defaults to 4):
        MLP ratio of the LCA block.
    lca_encoder_num_heads (`int`, *optional*):
        Attention heads of the LCA block; follows `encoder_num_heads` when not given.
    lca_encoder_dropout (`float`, *optional*, defaults to 0.0):
        Dropout on the LCA MLP's hidden activations.
    lca_encoder_attention_dropout (`float`, *optional*, defaults to 0.0):
        Dropout on the LCA attention probabilities.
    lca_encoder_projection_dropout (`float`, *optional*, defaults to 0.0):
        Dropout after the LCA attention's output projection.
    lca_encoder_ln_order (`str`, *optional*, defaults to `"post"`):
        "pre" (`x + f(LN(x))`) or "post" (`LN(x + f(x))`) in the LCA block.
    lca_encoder_stodepth_prob (`float`, *optional*, defaults to 0.0):
        Drop-path rate of the LCA residual branches.
    lca_encoder_layer_scale (`float`, *optional*):
        Initial LayerScale of the LCA branches (CaiT); `None`: off.
    lca_encoder_qkv_bias (`bool`, *optional*, defaults to `False`):
        Bias of the LCA query/key/value projection.
    patchify_technique (`str`, *optional*, defaults to `"linear"`):
        "linear" (unfold + Linear) or "conv" (strided convolution, the official layer).
    stochastic_depth (`bool`, *optional*, defaults to `False`):
        Drop-path on the encoder branches, rising linearly from 0 to `stochastic_depth_mp`.
    stochastic_depth_mp (`float`, *optional*):
        The largest drop-path rate, required in [0, 1) with `stochastic_depth=True`.
    layer_scale (`float`, *optional*):
        Initial LayerScale of the encoder branches; `None`: off.
    ln_order (`str`, *optional*, defaults to `"post"`):
        "pre" or "post" LayerNorm order of the encoder blocks.
    in_channels (`int`, *optional*, defaults to 3):
        Image channels (alias `num_channels`).
    qkv_bias (`bool`, *optional*, defaults to `False`):
        Bias of the encoder query/key/value projection (official: `True`).
    layer_norm_eps (`float`, *optional*, defaults to 1e-6):
        Epsilon of every LayerNorm.
    i2t_conv_padding (`int`, *optional*):
        Stem convolution padding; `None`: `kernel // 2` (224 -> 112).
    i2t_conv_bias (`bool`, *optional*, defaults to `False`):
        Bias of the stem convolution (a BatchNorm follows it).
    i2t_max_pool_padding (`int`, *optional*):
        Stem max-pool padding; `None`: `kernel // 2` (112 -> 56: a 14x14 grid at 224).
    patch_norm (`bool`, *optional*, defaults to `True`):
        LayerNorm after the patch projection (in the seed API, not in the official model).
    leff_batch_norm (`bool`, *optional*, defaults to `True`):
        BatchNorm after each LeFF layer.
    leff_final_activation (`bool`, *optional*, defaults to `True`):
        GELU after LeFF's last BatchNorm, as in the paper's equations (official code: none).
    lca_layer_position_embedding (`bool`, *optional*, defaults to `True`):
        Learned embedding added to the class tokens before the LCA (`pos_layer_embed`).
    initializer_range (`float`, *optional*, defaults to 0.02):
        Std of the truncated-normal initialisation.
    apply_layernorm (`bool`, *optional*, defaults to `True`):
        [`CeiTBackbone`] puts its stage maps through a LayerNorm (as DINOv2's backbone).
    reshape_hidden_states (`bool`, *optional*, defaults to `True`):
        [`CeiTBackbone`] returns stages as `(batch, d_model, h, w)` maps, else as tokens. Its stages are "stem"
        (the I2T map) and "stage1" ... "stageN" (each block's patch tokens), chosen by `out_features`/`out_indices`.
    """

    model_type = "ceit"
    attribute_map = ALIASES

    image_size: int | list[int] = 224
    # trf-ignore: TRF023 (the seed API's option names are this config's contract; `hidden_size` is an alias of it)
    d_model: int = 768
    patch_size: int = 4
    dropout: float = 0.0
    encoder_num_heads: int = 12
    num_encoder_blocks: int = 12
    encoder_dropout: float = 0.0
    encoder_attention_dropout: float = 0.0
    encoder_projection_dropout: float = 0.0
    classifier_mlp_d: int | None = 2048
    i2t_out_channels: int = 32
    i2t_conv_kernel_size: int = 7
    i2t_conv_stride: int = 2
    i2t_max_pool_kernel_size: int = 3
    i2t_max_pool_stride: int = 2
    leff_expand_ratio: int = 4
    leff_depthwise_kernel: int = 3
    leff_depthwise_stride: int = 1
    leff_depthwise_padding: int = 1
    leff_depthwise_separable: bool = True
    lca_encoder_expansion_ratio: int = 4
    lca_encoder_num_heads: int | None = None
    lca_encoder_dropout: float = 0.0
    lca_encoder_attention_dropout: float = 0.0
    lca_encoder_projection_dropout: float = 0.0
    lca_encoder_ln_order: str = "post"
    lca_encoder_stodepth_prob: float = 0.0
    lca_encoder_layer_scale: float | None = None
    lca_encoder_qkv_bias: bool = False
    patchify_technique: str = "linear"
    stochastic_depth: bool = False
    stochastic_depth_mp: float | None = None
    layer_scale: float | None = None
    ln_order: str = "post"
    in_channels: int = 3
    qkv_bias: bool = False
    layer_norm_eps: float = 1e-6
    i2t_conv_padding: int | None = None
    i2t_conv_bias: bool = False
    i2t_max_pool_padding: int | None = None
    patch_norm: bool = True
    leff_batch_norm: bool = True
    leff_final_activation: bool = True
    lca_layer_position_embedding: bool = True
    initializer_range: float = 0.02
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True

    def __post_init__(self, **kwargs):
        # ceit_hf <= 0.2 saved this runtime switch in config.json; it is now `CeiTPreTrainedModel.set_leff_recompute`.
        kwargs.pop("leff_recompute_activations", None)
        if not _FROM_SAVED.get():
            refuse_typos(kwargs)
        self._take_aliases_and_labels(kwargs)
        if isinstance(self.image_size, (tuple, list)):
            self.image_size = [_plain(size) for size in self.image_size]
        for field in dataclasses.fields(self):  # (`__dataclass_fields__` also lists class variables)
            setattr(self, field.name, _plain(getattr(self, field.name)))
        if self.lca_encoder_num_heads is None:
            self.lca_encoder_num_heads = self.encoder_num_heads
        if self.i2t_conv_padding is None and _int(self.i2t_conv_kernel_size):
            self.i2t_conv_padding = self.i2t_conv_kernel_size // 2
        if self.i2t_max_pool_padding is None and _int(self.i2t_max_pool_kernel_size):
            self.i2t_max_pool_padding = self.i2t_max_pool_kernel_size // 2
        self._check_options()
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, self.num_encoder_blocks + 1)]
        kwargs.pop("stage_names", None)  # always derived from the depth
        self.set_output_features_output_indices(
            out_indices=kwargs.pop("out_indices", None), out_features=kwargs.pop("out_features", None)
        )
        super().__post_init__(**kwargs)

    def _take_aliases_and_labels(self, kwargs: dict[str, Any]) -> None:
        """Aliases (extra keywords) onto their fields; `num_classes`/`num_labels`/`id2label` checked."""
        for alias, field in ALIASES.items():  # aliases arrive as extra keywords
            if alias in kwargs and field != "num_labels":
                setattr(self, field, kwargs.pop(alias))
        if "num_classes" in kwargs:
            num_classes = kwargs.pop("num_classes")
            if kwargs.setdefault("num_labels", num_classes) != num_classes:
                raise ValueError(
                    f"num_classes={num_classes!r} and num_labels={kwargs['num_labels']!r} disagree: give one."
                )
        if self.id2label is None:  # the seed API's default is 1000 classes, not transformers' 2
            kwargs["num_labels"] = _plain(kwargs.get("num_labels", 1000))
            if not _int(kwargs["num_labels"]) or kwargs["num_labels"] < 0:
                raise ValueError(f"num_classes (num_labels) must be an int >= 0, got {kwargs['num_labels']!r}.")
        else:
            self._check_id2label()
            self.label2id = self.label2id or {str(label): int(index) for index, label in self.id2label.items()}

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> CeiTConfig:
        refuse_typos(kwargs)  # keywords typed into `from_pretrained(...)`; the saved dict is kept as it is
        token = _FROM_SAVED.set(True)
        try:
            return super().from_dict(config_dict, **kwargs)
        finally:
            _FROM_SAVED.reset(token)

    @classmethod
    def from_json_file(cls, json_file) -> CeiTConfig:
        token = _FROM_SAVED.set(True)
        try:
            return super().from_json_file(json_file)
        finally:
            _FROM_SAVED.reset(token)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> CeiTConfig:
        """An official CeiT variant's configuration, with `overrides` (seed or transformers names) on top."""
        if name not in PRESETS:
            close = difflib.get_close_matches(name, PRESETS, n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise ValueError(f"Unknown CeiT preset {name!r}; expected one of {sorted(PRESETS)}.{hint}")
        kwargs = dict(PRESETS[name])
        if "id2label" in overrides or "num_classes" in overrides:
            kwargs.pop("num_labels")
        return cls(**{**kwargs, **overrides})

    @property
    def preset_name(self) -> str | None:
        """The official variant whose architecture this is (labels aside), if any."""
        matches = (
            n for n, p in PRESETS.items() if all(getattr(self, k) == v for k, v in p.items() if k != "num_labels")
        )
        return next(matches, None)

    @property
    def image_hw(self) -> tuple[int, int]:
        """`image_size` as (height, width)."""
        size = self.image_size
        return (size, size) if _int(size) else (size[0], size[1])

    def stem_output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the Image-to-Tokens feature map for a `height x width` input."""

        def stem(size):
            size = _conv_out(size, self.i2t_conv_kernel_size, self.i2t_conv_stride, self.i2t_conv_padding)
            pool = (self.i2t_max_pool_kernel_size, self.i2t_max_pool_stride, self.i2t_max_pool_padding)
            return _conv_out(size, *pool) if size > 0 else size

        return stem(height), stem(width)

    def token_grid_size(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of the patch-token grid; `ValueError` when the stem map does not tile into patches."""
        stem_h, stem_w = self.stem_output_size(height, width)
        p = self.patch_size
        if stem_h < p or stem_w < p or stem_h % p or stem_w % p:
            raise ValueError(
                f"An input of {height}x{width} pixels gives a {stem_h}x{stem_w} Image-to-Tokens feature map, which "
                f"does not tile into whole {p}x{p} patches (patch_size={p}). Use an image size whose stem output "
                f"is a positive multiple of {p} on each side (with the default stem: a multiple of {4 * p} pixels, "
                "e.g. 224 or 384)."
            )
        return stem_h // p, stem_w // p

    def drop_path_rates(self) -> list[float]:
        """Drop-path rate of each encoder block: linear from 0 to `stochastic_depth_mp` (0 when off)."""
        n = self.num_encoder_blocks
        if not self.stochastic_depth or n == 1:
            return [0.0] * n
        return [self.stochastic_depth_mp * i / (n - 1) for i in range(n)]

    def to_diff_dict(self) -> dict[str, Any]:
        # transformers leaves out labels equal to its 2-class default; CeiT's default is 1000 classes, so a 2-class
        # config saved without them would load back with 1000.
        output = super().to_diff_dict()
        for key in ("id2label", "label2id"):
            if getattr(self, key) is not None:
                output.setdefault(key, self.to_dict()[key])
        return output

    def validate_options(self):
        """Part of `@strict`'s validation (at init and on save): the same rules as at construction."""
        self._check_options()

    def _check_id2label(self):
        keys = list(self.id2label) if isinstance(self.id2label, dict) else None
        if keys is None or not all(_int(k) or (isinstance(k, str) and k.isascii() and k.isdigit()) for k in keys):
            raise ValueError(
                f"CeiTConfig.id2label={str(self.id2label)[:80]} is invalid: expected {{class index: name}}."
            )
        if sorted(int(k) for k in keys) != list(range(len(keys))):
            raise ValueError(f"CeiTConfig.id2label is invalid: its class indices must be 0..{len(keys) - 1}.")

    def _check_options(self):
        """Every rule on the options, in one place; each failure names the field and what was expected."""
        positive_int = (lambda v: _int(v) and v > 0, "expected a positive int")
        probability = (lambda v: _number(v) and 0 <= v < 1, "expected a probability in [0, 1)")
        scale = (
            lambda v: v is None or (_number(v) and v >= 0),
            "expected None (off) or a number >= 0 (the initial scale)",
        )
        positive = (lambda v: _number(v) and v > 0, "expected a positive number")
        ln_order = (lambda v: isinstance(v, str) and v in LN_ORDERS, f"expected one of {list(LN_ORDERS)}")
        # fmt: off
        rules = {
            "image_size": (
                lambda v: (_int(v) and v > 0) or (isinstance(v, list) and len(v) == 2 and all(_int(s) and s > 0 for s in v)),
                "expected a positive int or a [height, width] pair of positive ints",
            ),
            **dict.fromkeys((
                "d_model", "patch_size", "encoder_num_heads", "num_encoder_blocks", "i2t_out_channels",
                "i2t_conv_kernel_size", "i2t_conv_stride", "i2t_max_pool_kernel_size", "i2t_max_pool_stride",
                "leff_expand_ratio", "leff_depthwise_kernel", "lca_encoder_expansion_ratio", "lca_encoder_num_heads",
                "in_channels"), positive_int),
            **dict.fromkeys(("leff_depthwise_padding", "i2t_conv_padding", "i2t_max_pool_padding"),
                            (lambda v: _int(v) and v >= 0, "expected an int >= 0")),
            **dict.fromkeys((
                "dropout", "encoder_dropout", "encoder_attention_dropout", "encoder_projection_dropout",
                "lca_encoder_dropout", "lca_encoder_attention_dropout", "lca_encoder_projection_dropout",
                "lca_encoder_stodepth_prob"), probability),
            **dict.fromkeys((
                "leff_depthwise_separable", "lca_encoder_qkv_bias", "stochastic_depth", "qkv_bias", "i2t_conv_bias",
                "patch_norm", "leff_batch_norm", "leff_final_activation", "lca_layer_position_embedding",
                "apply_layernorm", "reshape_hidden_states"), (lambda v: isinstance(v, bool), "expected True or False")),
            "classifier_mlp_d": (lambda v: v is None or (_int(v) and v > 0), "expected a positive int, or None for one Linear"),
            "layer_scale": scale, "lca_encoder_layer_scale": scale,
            "layer_norm_eps": positive, "initializer_range": positive,
            "stochastic_depth_mp": (lambda v: v is None or probability[0](v), "expected None or a probability in [0, 1)"),
            "ln_order": ln_order, "lca_encoder_ln_order": ln_order,
            "patchify_technique": (
                lambda v: isinstance(v, str) and v in PATCHIFY_TECHNIQUES, f"expected one of {list(PATCHIFY_TECHNIQUES)}"
            ),
        }
        # fmt: on
        for field, (valid, expected) in rules.items():
            if not valid(getattr(self, field)):
                self._fail(field, expected)
        if self.stochastic_depth and self.stochastic_depth_mp is None:
            self._fail("stochastic_depth_mp", "stochastic_depth=True needs the largest drop-path rate, in [0, 1)")
        for field in ("encoder_num_heads", "lca_encoder_num_heads"):
            if self.d_model % getattr(self, field):
                self._fail(field, f"d_model={self.d_model} must be divisible by the number of heads")
        if self.leff_depthwise_stride != 1:
            self._fail("leff_depthwise_stride", "LeFF's depthwise convolution must keep the token grid, so stride 1")
        if 2 * self.leff_depthwise_padding != self.leff_depthwise_kernel - 1:
            self._fail(
                "leff_depthwise_padding",
                "LeFF's depthwise convolution must keep the token grid, so padding (kernel - 1) / 2 with an odd kernel "
                f"(leff_depthwise_kernel={self.leff_depthwise_kernel})",
            )
        if 2 * self.i2t_max_pool_padding > self.i2t_max_pool_kernel_size:
            self._fail("i2t_max_pool_padding", f"at most half the max-pool kernel ({self.i2t_max_pool_kernel_size})")
        try:
            self.token_grid_size(*self.image_hw)
        except ValueError as error:
            self._fail("image_size", str(error)[0].lower() + str(error)[1:].rstrip("."))

    def _fail(self, field: str, expected: str):
        raise ValueError(f"CeiTConfig.{field}={getattr(self, field)!r} is invalid: {expected}.")


__all__ = ["CeiTConfig", "PRESETS"]
