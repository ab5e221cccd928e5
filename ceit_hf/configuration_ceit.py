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

import difflib
import functools
import math
from numbers import Integral, Real
from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import PreTrainedConfig
from transformers.backbone_utils import BackboneConfigMixin
from transformers.utils import auto_docstring


# fmt: off
_OFFICIAL = {  # what every official variant shares (coeusguo/ceit `ceit_model.py`)
    "patch_size": 4, "num_encoder_blocks": 12, "classifier_mlp_d": None, "i2t_out_channels": 64,
    "i2t_conv_kernel_size": 7, "i2t_conv_stride": 2, "i2t_conv_padding": 3, "i2t_conv_bias": False,
    "i2t_max_pool_kernel_size": 3, "i2t_max_pool_stride": 2, "i2t_max_pool_padding": 1, "patch_norm": False,
    "patchify_technique": "conv", "leff_expand_ratio": 4, "leff_depthwise_kernel": 3, "leff_depthwise_stride": 1,
    "leff_depthwise_padding": 1, "leff_depthwise_separable": False, "leff_batch_norm": True,
    "leff_final_activation": False, "lca_encoder_expansion_ratio": 4, "lca_encoder_ln_order": "pre",
    "lca_encoder_qkv_bias": True, "lca_layer_position_embedding": True, "ln_order": "pre", "qkv_bias": True,
    "layer_norm_eps": 1e-6, "num_labels": 1000,
}
ALIASES = {  # transformers' names -> the seed API's (`num_labels` is transformers' own field, derived from `id2label`)
    "hidden_size": "d_model", "num_hidden_layers": "num_encoder_blocks", "num_attention_heads": "encoder_num_heads",
    "num_channels": "in_channels", "num_classes": "num_labels",
}
# Each option's rule beyond its type (which `@strict` checks) and what it expects, said by both kinds of error.
RULES = {
    "image_size": (lambda v: v > 0 if isinstance(v, int) else len(v) == 2 and min(v) > 0,
                   "expected a positive int or a [height, width] pair of positive ints"),
    **dict.fromkeys((
        "d_model", "patch_size", "encoder_num_heads", "num_encoder_blocks", "i2t_out_channels", "i2t_conv_kernel_size",
        "i2t_conv_stride", "i2t_max_pool_kernel_size", "i2t_max_pool_stride", "leff_expand_ratio",
        "leff_depthwise_kernel", "lca_encoder_expansion_ratio", "lca_encoder_num_heads", "in_channels"),
        (lambda v: v > 0, "expected a positive int")),
    "leff_depthwise_stride": (lambda v: v == 1, "expected 1: LeFF's depthwise convolution must keep the token grid"),
    "classifier_mlp_d": (lambda v: v is None or v > 0, "expected a positive int, or None for one Linear"),
    **dict.fromkeys(("leff_depthwise_padding", "i2t_conv_padding", "i2t_max_pool_padding"),
                    (lambda v: v >= 0, "expected an int >= 0")),
    **dict.fromkeys((
        "dropout", "encoder_dropout", "encoder_attention_dropout", "encoder_projection_dropout", "lca_encoder_dropout",
        "lca_encoder_attention_dropout", "lca_encoder_projection_dropout", "lca_encoder_stodepth_prob"),
        (lambda v: 0 <= v < 1, "expected a probability in [0, 1)")),
    "stochastic_depth_mp": (lambda v: v is None or 0 <= v < 1, "expected None or a probability in [0, 1)"),
    **dict.fromkeys(("layer_scale", "lca_encoder_layer_scale"), (
        lambda v: v is None or 0 <= v < math.inf, "expected None (off) or a number >= 0 (the initial scale)")),
    **dict.fromkeys(("layer_norm_eps", "initializer_range"),
                    (lambda v: 0 < v < math.inf, "expected a positive number")),
    **dict.fromkeys(("ln_order", "lca_encoder_ln_order"),
                    (lambda v: v in ("pre", "post"), "expected one of ['pre', 'post']")),
    "patchify_technique": (lambda v: v in ("linear", "conv"), "expected one of ['linear', 'conv']"),
}
# fmt: on
PRESETS: dict[str, dict[str, Any]] = {
    f"ceit_{name}_patch16_{size}": {**_OFFICIAL, "d_model": width, "encoder_num_heads": heads, "image_size": size}
    for name, width, heads in (("tiny", 192, 3), ("small", 384, 6), ("base", 768, 12))
    for size in (224, 384)
    if (name, size) != ("base", 384)
}


def _invalid(name: str, value, expected) -> ValueError:
    return ValueError(f"CeiTConfig.{name}={value!r} is invalid: {expected}.")


def _plain(value):
    """numpy (or other `numbers`) scalars, alone or in a list or tuple, as Python numbers (config.json holds those)."""
    if isinstance(value, (list, tuple)):
        return [_plain(item) for item in value]
    if isinstance(value, Real) and type(value) not in (bool, int, float):
        return int(value) if isinstance(value, Integral) else float(value)
    return value


def _refuse_typos(keywords) -> None:
    """A keyword close to an option (and no name the config classes define) raises: transformers would keep it."""
    options = {*CeiTConfig.__dataclass_fields__, *ALIASES}
    for key in keywords:
        close = difflib.get_close_matches(key, options, n=1, cutoff=0.85)
        if close and key not in options and not hasattr(CeiTConfig, key):
            raise ValueError(f"CeiTConfig got an unknown option {key!r}; did you mean {close[0]!r}?")


def _python_numbers_and_value_errors(cls):
    """`cls.__init__` taking numpy scalars as Python numbers and raising `@strict`'s type errors as ValueErrors."""
    init = cls.__init__

    @functools.wraps(init)
    def __init__(self, **kwargs):
        kwargs = {key: _plain(value) for key, value in kwargs.items()}
        for key, value in kwargs.items():
            name = ALIASES.get(key, key)
            try:
                for validator in cls.__validators__.get(name, ()):  # `@strict`'s own type checks
                    validator(value)
            except TypeError as error:
                boolean = cls.__dataclass_fields__[name].type is bool
                raise _invalid(name, value, "expected True or False" if boolean else RULES.get(name, (0, error))[1])
        init(self, **kwargs)

    cls.__init__ = __init__
    return cls


# auto_docstring writes the Args section (options it knows are documented by it); the intro names the model.
@auto_docstring(
    custom_intro="""
    Configuration of a CeiT model (Convolution-enhanced image Transformer, arXiv:2103.11816) with every keyword and
    default of the `cv.backbones.CeiT.model.CeiT` API; the official CeiT-T/S/B are presets (`from_preset`). Aliases:
    `hidden_size`, `num_hidden_layers`, `num_attention_heads`, `num_channels`, `num_labels`. An invalid value, or a
    keyword close to an option but none ("did you mean"), raises `ValueError`.
    """
)
@_python_numbers_and_value_errors
@strict
class CeiTConfig(BackboneConfigMixin, PreTrainedConfig):
    r"""
    image_size (`int` or `list[int]`, *optional*, defaults to 224):
        Input size (or `[height, width]`) the position embeddings are made for.
    patch_size (`int`, *optional*, defaults to 4):
        Patch side on the Image-to-Tokens map (4 = 16 pixels).
    dropout (`float`, *optional*, defaults to 0.0):
        Dropout on the embeddings and in the MLP head.
    num_encoder_blocks (`int`, *optional*, defaults to 12):
        Number of encoder blocks (alias `num_hidden_layers`).
    encoder_dropout (`float`, *optional*, defaults to 0.0):
        Dropout on LeFF's hidden activations.
    encoder_attention_dropout (`float`, *optional*, defaults to 0.0):
        Dropout on the encoder attention probabilities.
    encoder_projection_dropout (`float`, *optional*, defaults to 0.0):
        Dropout after the encoder attention's output projection.
    classifier_mlp_d (`int`, *optional*, defaults to 2048):
        Hidden width of the MLP head; `None`: one Linear (official).
    i2t_out_channels (`int`, *optional*, defaults to 32):
        Channels of the Image-to-Tokens stem (official: 64).
    i2t_conv_kernel_size (`int`, *optional*, defaults to 7):
        Kernel of the stem convolution.
    i2t_conv_stride (`int`, *optional*, defaults to 2):
        Stride of the stem convolution.
    i2t_max_pool_kernel_size (`int`, *optional*, defaults to 3):
        Kernel of the stem max-pool.
    i2t_max_pool_stride (`int`, *optional*, defaults to 2):
        Stride of the stem max-pool.
    leff_expand_ratio (`int`, *optional*, defaults to 4):
        LeFF hidden width over `d_model`.
    leff_depthwise_kernel (`int`, *optional*, defaults to 3):
        Kernel of LeFF's depthwise convolution.
    leff_depthwise_stride (`int`, *optional*, defaults to 1):
        Stride of LeFF's depthwise convolution (only 1 keeps the token grid).
    leff_depthwise_padding (`int`, *optional*, defaults to 1):
        Padding of LeFF's depthwise convolution (`(kernel - 1) / 2`).
    leff_depthwise_separable (`bool`, *optional*, defaults to `True`):
        A pointwise layer after the depthwise convolution.
    lca_encoder_expansion_ratio (`int`, *optional*, defaults to 4):
        MLP ratio of the LCA block.
    lca_encoder_num_heads (`int`, *optional*):
        Attention heads of the LCA block; defaults to `encoder_num_heads`.
    lca_encoder_dropout (`float`, *optional*, defaults to 0.0):
        Dropout on the LCA MLP's hidden activations.
    lca_encoder_attention_dropout (`float`, *optional*, defaults to 0.0):
        Dropout on the LCA attention probabilities.
    lca_encoder_projection_dropout (`float`, *optional*, defaults to 0.0):
        Dropout after the LCA attention's output projection.
    lca_encoder_ln_order (`str`, *optional*, defaults to `"post"`):
        "pre" (`x + f(LN(x))`, then a final LayerNorm) or "post" (`LN(x + f(x))`) in the LCA block.
    lca_encoder_stodepth_prob (`float`, *optional*, defaults to 0.0):
        Drop-path rate of the LCA residual branches.
    lca_encoder_layer_scale (`float`, *optional*):
        Initial LayerScale of the LCA branches; `None`: off.
    lca_encoder_qkv_bias (`bool`, *optional*, defaults to `False`):
        Bias of the LCA query/key/value projection.
    patchify_technique (`str`, *optional*, defaults to `"linear"`):
        "linear" (unfold + Linear) or "conv" (strided convolution, official).
    stochastic_depth (`bool`, *optional*, defaults to `False`):
        Drop-path on the encoder branches, rising linearly from 0 to `stochastic_depth_mp`.
    stochastic_depth_mp (`float`, *optional*):
        The largest drop-path rate, required with `stochastic_depth=True`.
    layer_scale (`float`, *optional*):
        Initial LayerScale of the encoder branches; `None`: off.
    ln_order (`str`, *optional*, defaults to `"post"`):
        "pre" or "post" LayerNorm in the encoder blocks.
    i2t_conv_padding (`int`, *optional*):
        Stem convolution padding; defaults to `kernel // 2`.
    i2t_conv_bias (`bool`, *optional*, defaults to `False`):
        Bias of the stem convolution.
    i2t_max_pool_padding (`int`, *optional*):
        Stem max-pool padding; defaults to `kernel // 2`.
    patch_norm (`bool`, *optional*, defaults to `True`):
        LayerNorm after the patch projection (official: `False`).
    leff_batch_norm (`bool`, *optional*, defaults to `True`):
        BatchNorm after each LeFF layer.
    leff_final_activation (`bool`, *optional*, defaults to `True`):
        GELU after LeFF's last BatchNorm (official: `False`).
    lca_layer_position_embedding (`bool`, *optional*, defaults to `True`):
        Learned embedding added to the class tokens before the LCA.
    apply_layernorm (`bool`, *optional*, defaults to `True`):
        [`CeiTBackbone`] puts its stage maps through a LayerNorm.
    reshape_hidden_states (`bool`, *optional*, defaults to `True`):
        [`CeiTBackbone`] returns `(batch, d_model, h, w)` maps for its stages ("stem", "stage1"...), else tokens.
    """

    model_type = "ceit"
    attribute_map = ALIASES

    image_size: int | list[int] = 224
    # trf-ignore: TRF023 (the seed API's option names are this config's contract; `hidden_size` is an alias of it)
    d_model: int = 768
    patch_size: int = 4
    dropout: float | int = 0.0
    encoder_num_heads: int = 12
    num_encoder_blocks: int = 12
    encoder_dropout: float | int = 0.0
    encoder_attention_dropout: float | int = 0.0
    encoder_projection_dropout: float | int = 0.0
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
    lca_encoder_dropout: float | int = 0.0
    lca_encoder_attention_dropout: float | int = 0.0
    lca_encoder_projection_dropout: float | int = 0.0
    lca_encoder_ln_order: str = "post"
    lca_encoder_stodepth_prob: float | int = 0.0
    lca_encoder_layer_scale: float | int | None = None
    lca_encoder_qkv_bias: bool = False
    patchify_technique: str = "linear"
    stochastic_depth: bool = False
    stochastic_depth_mp: float | int | None = None
    layer_scale: float | int | None = None
    ln_order: str = "post"
    in_channels: int = 3
    qkv_bias: bool = False
    layer_norm_eps: float | int = 1e-6
    i2t_conv_padding: int | None = None
    i2t_conv_bias: bool = False
    i2t_max_pool_padding: int | None = None
    patch_norm: bool = True
    leff_batch_norm: bool = True
    leff_final_activation: bool = True
    lca_layer_position_embedding: bool = True
    initializer_range: float | int = 0.02
    _out_features: list[str] | None = None
    _out_indices: list[int] | None = None
    apply_layernorm: bool = True
    reshape_hidden_states: bool = True

    def __post_init__(self, **kwargs):
        kwargs.pop("leff_recompute_activations", None)  # older files hold this runtime switch (`set_leff_recompute`)
        if not kwargs.pop("_from_saved", False):  # what a saved file holds is kept, as transformers keeps it
            _refuse_typos(kwargs)
        for alias, field in ALIASES.items():
            if alias in kwargs and field != "num_labels":
                setattr(self, field, kwargs.pop(alias))
        self._take_labels(kwargs)
        if self.lca_encoder_num_heads is None:
            self.lca_encoder_num_heads = self.encoder_num_heads
        if self.i2t_conv_padding is None:
            self.i2t_conv_padding = self.i2t_conv_kernel_size // 2
        if self.i2t_max_pool_padding is None:
            self.i2t_max_pool_padding = self.i2t_max_pool_kernel_size // 2
        self.validate_options()  # here too, so that construction raises the ValueError itself
        self.stage_names = ["stem"] + [f"stage{index}" for index in range(1, self.num_encoder_blocks + 1)]
        kwargs.pop("stage_names", None)  # always derived from the depth
        out_features = _plain(kwargs.pop("out_features", None))
        self.set_output_features_output_indices(out_indices=kwargs.pop("out_indices", None), out_features=out_features)
        super().__post_init__(**kwargs)

    def _take_labels(self, kwargs: dict[str, Any]) -> None:
        """`num_classes` as `num_labels` (1000 by default, as in the seed API), or the classes of `id2label`."""
        if "num_classes" in kwargs:
            num_classes = kwargs.pop("num_classes")
            if kwargs.setdefault("num_labels", num_classes) != num_classes:
                raise ValueError(f"num_classes={num_classes!r} and num_labels={kwargs['num_labels']!r} disagree.")
        if self.id2label is None:
            num_labels = kwargs["num_labels"] = _plain(kwargs.get("num_labels", 1000))
            if type(num_labels) is not int or num_labels < 0:
                raise ValueError(f"num_classes (num_labels) must be an int >= 0, got {num_labels!r}.")
            return
        keys = list(self.id2label) if isinstance(self.id2label, dict) else [None]
        indices = all(type(k) is int or isinstance(k, str) and k.isascii() and k.isdigit() for k in keys)
        if not indices or sorted(map(int, keys)) != list(range(len(keys))):
            expected = f"expected {{class index: name}} with class indices 0..{len(keys) - 1}"
            raise ValueError(f"CeiTConfig.id2label={str(self.id2label)[:80]} is invalid: {expected}.")
        self.label2id = self.label2id or {str(label): int(index) for index, label in self.id2label.items()}

    @classmethod
    def from_dict(cls, config_dict: dict[str, Any], **kwargs) -> "CeiTConfig":
        _refuse_typos(kwargs)  # keywords typed into `from_pretrained(...)`; the saved dict is kept as it is
        return super().from_dict({**config_dict, "_from_saved": True}, **kwargs)

    @classmethod
    def from_json_file(cls, json_file) -> "CeiTConfig":
        return cls.from_dict(cls._dict_from_json_file(json_file))

    @classmethod
    def from_preset(cls, name: str, **overrides) -> "CeiTConfig":
        """An official CeiT variant's configuration, with `overrides` (seed or transformers names) on top."""
        if name not in PRESETS:
            hint = "".join(f" Did you mean {close!r}?" for close in difflib.get_close_matches(name, PRESETS, n=1))
            raise ValueError(f"Unknown CeiT preset {name!r}; expected one of {sorted(PRESETS)}.{hint}")
        labels = "id2label" in overrides or "num_classes" in overrides  # then the preset's 1000 classes do not apply
        return cls(**{**{k: v for k, v in PRESETS[name].items() if not (labels and k == "num_labels")}, **overrides})

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
        return (self.image_size,) * 2 if isinstance(self.image_size, int) else tuple(self.image_size)

    def stem_output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the Image-to-Tokens feature map for a `height x width` input."""
        sizes = []
        for size in (height, width):
            size = (size + 2 * self.i2t_conv_padding - self.i2t_conv_kernel_size) // self.i2t_conv_stride + 1
            pool = (
                size + 2 * self.i2t_max_pool_padding - self.i2t_max_pool_kernel_size
            ) // self.i2t_max_pool_stride + 1
            sizes.append(pool if size > 0 else size)
        return tuple(sizes)

    def token_grid_size(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of the patch-token grid; `ValueError` when the stem map does not tile into patches."""
        stem_h, stem_w = self.stem_output_size(height, width)
        p = self.patch_size
        if stem_h < p or stem_w < p or stem_h % p or stem_w % p:
            raise ValueError(
                f"An input of {height}x{width} pixels gives a {stem_h}x{stem_w} Image-to-Tokens map, which does not "
                f"tile into {p}x{p} patches (patch_size={p}): use a size whose stem map is a positive multiple of {p} "
                f"a side (with the default stem, a multiple of {4 * p} pixels, e.g. 224 or 384)."
            )
        return stem_h // p, stem_w // p

    def drop_path_rates(self) -> list[float]:
        """Drop-path rate of each encoder block: linear from 0 to `stochastic_depth_mp` (0 when off)."""
        n = self.num_encoder_blocks
        return [self.stochastic_depth_mp * i / (n - 1) if self.stochastic_depth and n > 1 else 0.0 for i in range(n)]

    def to_diff_dict(self) -> dict[str, Any]:
        # transformers leaves out labels equal to its 2-class default, which would load back with CeiT's 1000
        labels = {key: value for key, value in self.to_dict().items() if key in ("id2label", "label2id")}
        return {**{key: value for key, value in labels.items() if value is not None}, **super().to_diff_dict()}

    def validate_options(self):
        """Each option's range and the rules between options (`@strict` checks the types): at init and on save."""
        for name, (valid, expected) in RULES.items():
            if not valid(getattr(self, name)):
                raise _invalid(name, getattr(self, name), expected)
        if self.stochastic_depth and self.stochastic_depth_mp is None:
            raise _invalid(
                "stochastic_depth_mp", None, "stochastic_depth=True needs the largest drop-path rate in [0, 1)"
            )
        for name in ("encoder_num_heads", "lca_encoder_num_heads"):
            if self.d_model % getattr(self, name):
                raise _invalid(name, getattr(self, name), f"d_model={self.d_model} must be divisible by the heads")
        if 2 * self.leff_depthwise_padding != self.leff_depthwise_kernel - 1:
            kernel = self.leff_depthwise_kernel
            expected = f"(kernel - 1) / 2 with an odd kernel (leff_depthwise_kernel={kernel}), to keep the token grid"
            raise _invalid("leff_depthwise_padding", self.leff_depthwise_padding, expected)
        if 2 * self.i2t_max_pool_padding > self.i2t_max_pool_kernel_size:
            expected = f"at most half the max-pool kernel ({self.i2t_max_pool_kernel_size})"
            raise _invalid("i2t_max_pool_padding", self.i2t_max_pool_padding, expected)
        try:
            self.token_grid_size(*self.image_hw)
        except ValueError as error:
            raise _invalid("image_size", self.image_size, str(error)[0].lower() + str(error)[1:-1]) from None


__all__ = ["CeiTConfig", "PRESETS"]
