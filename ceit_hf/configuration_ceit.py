# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""CeiT model configuration.

This file is self-contained (it imports only transformers) so that it also works as Hub remote code.
"""

from __future__ import annotations

import math
import os
import shutil
from numbers import Integral, Real
from pathlib import Path
from typing import Any

from transformers import PreTrainedConfig


LN_ORDERS = ("pre", "post")
PATCHIFY_TECHNIQUES = ("linear", "conv")

# Settings shared by every official variant (coeusguo/ceit, `ceit_model.py`): a padded 7x7/2 convolution
# without bias + BatchNorm + padded 3x3/2 max-pool with 64 channels, a 4x4/4 patch convolution with no
# LayerNorm after it, pre-norm blocks with qkv bias, LeFF with BatchNorm and no GELU after its last
# BatchNorm, the LCA with a layer-position embedding, and a LayerNorm -> Linear head.
_OFFICIAL = {
    "patch_size": 4,
    "num_encoder_blocks": 12,
    "classifier_mlp_d": None,
    "i2t_out_channels": 64,
    "i2t_conv_kernel_size": 7,
    "i2t_conv_stride": 2,
    "i2t_conv_padding": 3,
    "i2t_conv_bias": False,
    "i2t_max_pool_kernel_size": 3,
    "i2t_max_pool_stride": 2,
    "i2t_max_pool_padding": 1,
    "patch_norm": False,
    "patchify_technique": "conv",
    "leff_expand_ratio": 4,
    "leff_depthwise_kernel": 3,
    "leff_depthwise_stride": 1,
    "leff_depthwise_padding": 1,
    "leff_depthwise_separable": False,
    "leff_batch_norm": True,
    "leff_final_activation": False,
    "lca_encoder_expansion_ratio": 4,
    "lca_encoder_ln_order": "pre",
    "lca_encoder_qkv_bias": True,
    "lca_layer_position_embedding": True,
    "ln_order": "pre",
    "qkv_bias": True,
    "layer_norm_eps": 1e-6,
    "num_labels": 1000,
}


def _official(d_model: int, num_heads: int, image_size: int) -> dict[str, Any]:
    return {
        **_OFFICIAL,
        "d_model": d_model,
        "encoder_num_heads": num_heads,
        "lca_encoder_num_heads": num_heads,
        "image_size": image_size,
    }


PRESETS: dict[str, dict[str, Any]] = {
    "ceit_tiny_patch16_224": _official(192, 3, 224),
    "ceit_small_patch16_224": _official(384, 6, 224),
    "ceit_base_patch16_224": _official(768, 12, 224),
    "ceit_tiny_patch16_384": _official(192, 3, 384),
    "ceit_small_patch16_384": _official(384, 6, 384),
}

# Hub remote code: every folder a CeiT config is saved to carries these files (those present beside this one)
# and this `auto_map`, so that `trust_remote_code=True` loads it where ceit_hf is not installed.
REMOTE_CODE_FILES = ("configuration_ceit.py", "modeling_ceit.py", "image_processing_ceit.py")
IMAGE_PROCESSOR_AUTO_MAP = {
    "torchvision": "image_processing_ceit.CeiTImageProcessor",
    "pil": "image_processing_ceit.CeiTImageProcessorPil",
}
AUTO_MAP = {
    "AutoConfig": "configuration_ceit.CeiTConfig",
    "AutoModel": "modeling_ceit.CeiTModel",
    "AutoModelForImageClassification": "modeling_ceit.CeiTForImageClassification",
    "AutoImageProcessor": IMAGE_PROCESSOR_AUTO_MAP,
}


def save_remote_code(save_directory: str | os.PathLike) -> None:
    """Copies the CeiT code files into `save_directory`, for `trust_remote_code=True` loading."""
    here = Path(__file__).resolve().parent
    for name in REMOTE_CODE_FILES:
        source, target = here / name, Path(save_directory) / name
        if source.is_file() and source.resolve() != target.resolve():
            shutil.copyfile(source, target)


def remote_code_auto_map(save_directory: str | os.PathLike) -> dict[str, Any]:
    """The entries of `AUTO_MAP` whose code file is in `save_directory`.

    A config loaded as remote code sits in a module cache folder that holds only the files its loader needed (no
    image_processing_ceit.py when only the model was loaded), so a folder it is saved to may lack some code files:
    an `auto_map` entry pointing at a missing file would break loading from that folder.
    """
    folder = Path(save_directory)

    def present(reference: str) -> bool:
        return (folder / f"{reference.rsplit('.', 1)[0]}.py").is_file()

    auto_map = {}
    for auto_class, reference in AUTO_MAP.items():
        if isinstance(reference, dict):
            reference = {backend: name for backend, name in reference.items() if present(name)}
            if reference:
                auto_map[auto_class] = reference
        elif present(reference):
            auto_map[auto_class] = reference
    return auto_map


# transformers' standard names -> the seed API's names. `num_classes` goes the other way round: transformers
# derives `num_labels` from `id2label`, so the seed's name is the alias there.
ALIASES = {
    "hidden_size": "d_model",
    "num_hidden_layers": "num_encoder_blocks",
    "num_attention_heads": "encoder_num_heads",
    "num_channels": "in_channels",
    "num_classes": "num_labels",
}

_POSITIVE_INTS = (
    "d_model", "patch_size", "encoder_num_heads", "num_encoder_blocks", "i2t_out_channels",
    "i2t_conv_kernel_size", "i2t_conv_stride", "i2t_max_pool_kernel_size", "i2t_max_pool_stride",
    "leff_expand_ratio", "leff_depthwise_kernel", "leff_depthwise_stride", "lca_encoder_expansion_ratio",
    "lca_encoder_num_heads", "in_channels",
)
_NON_NEGATIVE_INTS = ("leff_depthwise_padding", "i2t_conv_padding", "i2t_max_pool_padding")
_PROBABILITIES = (
    "dropout", "encoder_dropout", "encoder_attention_dropout", "encoder_projection_dropout",
    "lca_encoder_dropout", "lca_encoder_attention_dropout", "lca_encoder_projection_dropout",
    "lca_encoder_stodepth_prob",
)
_NUMBERS = (  # the other numeric options (numbers or None)
    "classifier_mlp_d", "layer_scale", "lca_encoder_layer_scale", "layer_norm_eps", "initializer_range",
    "stochastic_depth_mp",
)
_BOOLS = (
    "leff_depthwise_separable", "lca_encoder_qkv_bias", "stochastic_depth", "qkv_bias", "i2t_conv_bias",
    "patch_norm", "leff_batch_norm", "leff_final_activation", "lca_layer_position_embedding",
)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    # Python numbers only (what config.json can hold); numpy scalars are converted at construction (_plain_number).
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return isinstance(value, int) or math.isfinite(value)


def _plain_number(value: Any) -> Any:
    """A numpy (or other `numbers`) scalar as the Python int or float it holds; anything else unchanged."""
    if isinstance(value, (bool, int, float)) or not isinstance(value, Real):
        return value
    try:
        return int(value) if isinstance(value, Integral) else float(value)
    except (OverflowError, ValueError):
        return value


def _is_label_index(key: Any) -> bool:
    return _is_int(key) or (isinstance(key, str) and key.isascii() and key.isdigit())


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class CeiTConfig(PreTrainedConfig):
    r"""
    Configuration of a CeiT model (Convolution-enhanced image Transformer, Yuan et al., ICCV 2021,
    arXiv:2103.11816).

    Every keyword of the `cv.backbones.CeiT.model.CeiT` API is accepted with the same name, meaning and
    default, so `CeiTConfig()` is that API's default model (a wide CeiT with post-norm blocks and an MLP
    head). The official CeiT-T/S/B variants are named presets: `CeiTConfig.from_preset("ceit_tiny_patch16_224")`.
    transformers' standard names are aliases, for construction and reading: `hidden_size` = `d_model`,
    `num_hidden_layers` = `num_encoder_blocks`, `num_attention_heads` = `encoder_num_heads`,
    `num_channels` = `in_channels`, `num_labels` = `num_classes` (with `id2label`/`label2id` as usual).

    Seed API options:
        image_size (`int` or `[height, width]`, defaults to 224): input size the position embeddings are made for.
        d_model (`int`, defaults to 768): token width D.
        patch_size (`int`, defaults to 4): patch side on the I2T feature map (4 on the 4x-downsampled map =
            16 pixels, hence the official "patch16" names).
        dropout (`float`, defaults to 0.0): dropout on the embeddings (after the position embeddings are added)
            and inside the MLP head.
        encoder_num_heads (`int`, defaults to 12): attention heads of the encoder blocks.
        num_encoder_blocks (`int`, defaults to 12): number of encoder blocks.
        encoder_dropout (`float`, defaults to 0.0): dropout on the LeFF hidden activations, before its last
            projection (the place an MLP puts its hidden dropout).
        encoder_attention_dropout (`float`, defaults to 0.0): dropout on the encoder attention probabilities.
        encoder_projection_dropout (`float`, defaults to 0.0): dropout after the encoder attention output projection.
        classifier_mlp_d (`int` or `None`, defaults to 2048): hidden width of the seed's MLP head
            (Linear -> Tanh -> Dropout(`dropout`) -> Linear). `None` gives the official head: the final
            LayerNorm followed by one Linear.
        i2t_out_channels (`int`, defaults to 32): channels of the Image-to-Tokens stem (64 in the official models).
        i2t_conv_kernel_size (`int`, defaults to 7), i2t_conv_stride (`int`, defaults to 2): stem convolution.
        i2t_max_pool_kernel_size (`int`, defaults to 3), i2t_max_pool_stride (`int`, defaults to 2): stem max-pool.
        leff_expand_ratio (`int`, defaults to 4): LeFF hidden width = `leff_expand_ratio * d_model`.
        leff_depthwise_kernel (`int`, defaults to 3), leff_depthwise_stride (`int`, defaults to 1),
        leff_depthwise_padding (`int`, defaults to 1): the LeFF depthwise convolution. It must keep the token grid
            (stride 1, `2 * padding == kernel - 1`) because its output is added back to its input.
        leff_depthwise_separable (`bool`, defaults to True): add a pointwise (1x1) convolution after the
            depthwise one, making it a depthwise-separable convolution.
        lca_encoder_expansion_ratio (`int`, defaults to 4): MLP ratio of the LCA block.
        lca_encoder_num_heads (`int`, defaults to 12): attention heads of the LCA block.
        lca_encoder_dropout (`float`, defaults to 0.0): dropout on the LCA MLP hidden activations.
        lca_encoder_attention_dropout (`float`, defaults to 0.0): dropout on the LCA attention probabilities.
        lca_encoder_projection_dropout (`float`, defaults to 0.0): dropout after the LCA attention projection.
        lca_encoder_ln_order (`str`, defaults to "post"): "pre" (`x = x + f(LN(x))`) or "post" (`x = LN(x + f(x))`)
            in the LCA block.
        lca_encoder_stodepth_prob (`float`, defaults to 0.0): drop-path rate of the LCA block's residual branches.
        lca_encoder_layer_scale (`float` or `None`, defaults to None): initial value of a learnable per-channel
            scale on each LCA residual branch (CaiT's LayerScale); `None` turns it off.
        lca_encoder_qkv_bias (`bool`, defaults to False): bias of the LCA query/key/value projection.
        patchify_technique (`str`, defaults to "linear"): how stem features become tokens: "linear" unfolds
            `patch_size x patch_size` patches and applies a Linear layer, "conv" applies a trained
            `patch_size x patch_size` convolution with stride `patch_size` (the official layer). Both compute the
            same family of functions; they differ in parameter layout.
        stochastic_depth (`bool`, defaults to False): drop-path on the encoder residual branches, with rates rising
            linearly from 0 at the first block to `stochastic_depth_mp` at the last.
        stochastic_depth_mp (`float` or `None`, defaults to None): the largest drop-path rate; required, in [0, 1),
            when `stochastic_depth=True`.
        layer_scale (`float` or `None`, defaults to None): LayerScale initial value for the encoder blocks.
        ln_order (`str`, defaults to "post"): "pre" or "post" LayerNorm order of the encoder blocks.
        num_classes (`int`, defaults to 1000): number of labels (alias of `num_labels`); 0 gives no classifier.
        in_channels (`int`, defaults to 3): image channels.

    Options beyond the seed API (the official model needs them):
        qkv_bias (`bool`, defaults to False): bias of the encoder query/key/value projection (official: True).
        layer_norm_eps (`float`, defaults to 1e-6): epsilon of every LayerNorm.
        i2t_conv_padding (`int` or `None`, defaults to None): stem convolution padding; `None` means
            `i2t_conv_kernel_size // 2` ("same"-style, so 224 -> 112).
        i2t_conv_bias (`bool`, defaults to False): bias of the stem convolution (a BatchNorm follows it).
        i2t_max_pool_padding (`int` or `None`, defaults to None): stem max-pool padding; `None` means
            `i2t_max_pool_kernel_size // 2` (so 112 -> 56 and, with patch 4, a 14x14 grid at 224).
        patch_norm (`bool`, defaults to True): LayerNorm after the patch projection (the seed API has one, the
            official model does not).
        leff_batch_norm (`bool`, defaults to True): BatchNorm (over channels) after each LeFF convolution.
        leff_final_activation (`bool`, defaults to True): GELU after LeFF's last BatchNorm, as in the paper's
            equations and the seed API. The official code has none there (False in the presets).
        lca_layer_position_embedding (`bool`, defaults to True): learned embedding added to the per-block class
            tokens before the LCA (official `pos_layer_embed`).
        initializer_range (`float`, defaults to 0.02): std of the truncated-normal initialisation.

    With `lca_encoder_ln_order="pre"` the LCA output goes through a final LayerNorm (pre-norm stacks need one);
    with "post" the LCA block already ends in a LayerNorm and no other is added.

    Example:

    ```python
    >>> from ceit_hf import CeiTConfig, CeiTForImageClassification
    >>> config = CeiTConfig.from_preset("ceit_tiny_patch16_224", num_classes=10)
    >>> model = CeiTForImageClassification(config)
    ```
    """

    model_type = "ceit"
    attribute_map = ALIASES

    # The seed API (num_classes lives in `id2label`, see `ALIASES`).
    image_size: int | list[int] = 224
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
    lca_encoder_num_heads: int = 12
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

    # Beyond the seed API.
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

    def __post_init__(self, **kwargs):
        # Aliases arrive as extra keywords; give them to the fields they name before anything reads them.
        for alias, field in ALIASES.items():
            if alias not in kwargs:
                continue
            value = kwargs.pop(alias)
            if field == "num_labels":
                if "num_labels" in kwargs and kwargs["num_labels"] != value:
                    raise ValueError(
                        f"num_classes={value!r} and num_labels={kwargs['num_labels']!r} disagree: they are the same "
                        "option, give one of them."
                    )
                kwargs["num_labels"] = value
            else:
                setattr(self, field, value)
        if self.id2label is None:
            # The seed API's default is 1000 classes, not transformers' 2.
            num_labels = kwargs["num_labels"] = _plain_number(kwargs.get("num_labels", 1000))
            if not _is_int(num_labels) or num_labels < 0:
                raise ValueError(f"num_classes (num_labels) must be an int >= 0, got {num_labels!r}.")
        else:
            self._check_id2label()
            if self.label2id is None:
                self.label2id = {str(label): int(index) for index, label in self.id2label.items()}
        if isinstance(self.image_size, tuple):
            self.image_size = list(self.image_size)
        if isinstance(self.image_size, list):
            self.image_size = [_plain_number(size) for size in self.image_size]
        for field in ("image_size", *_POSITIVE_INTS, *_NON_NEGATIVE_INTS, *_PROBABILITIES, *_NUMBERS):
            setattr(self, field, _plain_number(getattr(self, field)))
        if self.i2t_conv_padding is None and _is_int(self.i2t_conv_kernel_size):
            self.i2t_conv_padding = self.i2t_conv_kernel_size // 2
        if self.i2t_max_pool_padding is None and _is_int(self.i2t_max_pool_kernel_size):
            self.i2t_max_pool_padding = self.i2t_max_pool_kernel_size // 2
        self._check_options()
        super().__post_init__(**kwargs)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> CeiTConfig:
        """The configuration of an official CeiT variant, with `overrides` (seed or transformers names) on top."""
        if name not in PRESETS:
            raise ValueError(f"Unknown CeiT preset {name!r}; expected one of {sorted(PRESETS)}.")
        kwargs = dict(PRESETS[name])
        for key, value in overrides.items():
            key = ALIASES.get(key, key)
            if key == "id2label":
                kwargs.pop("num_labels", None)
            kwargs[key] = value
        return cls(**kwargs)

    @property
    def image_hw(self) -> tuple[int, int]:
        """`image_size` as (height, width)."""
        size = self.image_size
        return (size, size) if _is_int(size) else (size[0], size[1])

    def stem_output_size(self, height: int, width: int) -> tuple[int, int]:
        """Spatial size of the Image-to-Tokens feature map for an input of `height x width` pixels."""
        sizes = []
        for size in (height, width):
            size = _conv_out(size, self.i2t_conv_kernel_size, self.i2t_conv_stride, self.i2t_conv_padding)
            if size > 0:
                size = _conv_out(
                    size, self.i2t_max_pool_kernel_size, self.i2t_max_pool_stride, self.i2t_max_pool_padding
                )
            sizes.append(size)
        return sizes[0], sizes[1]

    def token_grid_size(self, height: int, width: int) -> tuple[int, int]:
        """(rows, columns) of the patch-token grid for `height x width` inputs.

        Raises `ValueError` when the stem's feature map does not tile into whole `patch_size` patches.
        """
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

    def save_pretrained(self, save_directory: str | os.PathLike, push_to_hub: bool = False, **kwargs):
        """Saves `config.json` with the remote-code `auto_map`, next to the CeiT code files."""
        os.makedirs(save_directory, exist_ok=True)
        save_remote_code(save_directory)
        self.auto_map = remote_code_auto_map(save_directory)
        super().save_pretrained(save_directory, push_to_hub=push_to_hub, **kwargs)

    def to_diff_dict(self) -> dict[str, Any]:
        # transformers leaves out labels equal to its own default (2 classes, "LABEL_0"/"LABEL_1"); CeiT's default is
        # 1000 classes, so a 2-class config saved without them would load back with 1000.
        output = super().to_diff_dict()
        full = self.to_dict()
        for key in ("id2label", "label2id"):
            if full.get(key) is not None:
                output.setdefault(key, full[key])
        return output

    def validate(self):
        super().validate()
        self._check_options()

    def _check_id2label(self):
        id2label = self.id2label
        if not isinstance(id2label, dict) or not all(_is_label_index(key) for key in id2label):
            shown = repr(id2label) if len(repr(id2label)) <= 80 else repr(id2label)[:77] + "..."
            raise ValueError(f"CeiTConfig.id2label={shown} is invalid: expected a dict {{class index: name}}.")
        indices = sorted(int(key) for key in id2label)
        if indices != list(range(len(indices))):
            raise ValueError(
                f"CeiTConfig.id2label is invalid: its class indices must be 0..{len(indices) - 1} (one per logit), "
                f"got {indices[:10]}{'...' if len(indices) > 10 else ''}."
            )

    def _check_options(self):
        def fail(field: str, rule: str):
            raise ValueError(f"CeiTConfig.{field}={getattr(self, field)!r} is invalid: {rule}.")

        if self.id2label is not None:
            self._check_id2label()

        for field in _POSITIVE_INTS:
            if not _is_int(getattr(self, field)) or getattr(self, field) <= 0:
                fail(field, "expected a positive int")
        for field in _NON_NEGATIVE_INTS:
            if not _is_int(getattr(self, field)) or getattr(self, field) < 0:
                fail(field, "expected an int >= 0")
        for field in _PROBABILITIES:
            value = getattr(self, field)
            if not _is_number(value) or not 0.0 <= value < 1.0:
                fail(field, "expected a probability in [0, 1)")
        for field in _BOOLS:
            if not isinstance(getattr(self, field), bool):
                fail(field, "expected True or False")
        for field, choices in (
            ("ln_order", LN_ORDERS),
            ("lca_encoder_ln_order", LN_ORDERS),
            ("patchify_technique", PATCHIFY_TECHNIQUES),
        ):
            if not (isinstance(getattr(self, field), str) and getattr(self, field) in choices):
                fail(field, f"expected one of {list(choices)}")
        size = self.image_size
        if not (_is_int(size) or (isinstance(size, list) and len(size) == 2 and all(_is_int(s) for s in size))):
            fail("image_size", "expected an int or a [height, width] pair of ints")
        if min(self.image_hw) <= 0:
            fail("image_size", "expected positive sizes")
        if self.classifier_mlp_d is not None and (not _is_int(self.classifier_mlp_d) or self.classifier_mlp_d <= 0):
            fail("classifier_mlp_d", "expected a positive int, or None for the official LayerNorm -> Linear head")
        for field in ("layer_scale", "lca_encoder_layer_scale"):
            value = getattr(self, field)
            if value is not None and (not _is_number(value) or value < 0):
                fail(field, "expected None (off) or a number >= 0 (the initial scale)")
        for field in ("layer_norm_eps", "initializer_range"):
            if not _is_number(getattr(self, field)) or getattr(self, field) <= 0:
                fail(field, "expected a positive number")
        mp = self.stochastic_depth_mp
        if mp is not None and (not _is_number(mp) or not 0.0 <= mp < 1.0):
            fail("stochastic_depth_mp", "expected None or a probability in [0, 1)")
        if self.stochastic_depth and mp is None:
            fail("stochastic_depth_mp", "stochastic_depth=True needs the largest drop-path rate, in [0, 1)")
        for field in ("encoder_num_heads", "lca_encoder_num_heads"):
            if self.d_model % getattr(self, field):
                fail(field, f"d_model={self.d_model} must be divisible by the number of heads")
        if self.leff_depthwise_stride != 1:
            fail("leff_depthwise_stride", "LeFF's depthwise convolution must keep the token grid for its residual, so its stride must be 1")
        if 2 * self.leff_depthwise_padding != self.leff_depthwise_kernel - 1:
            fail(
                "leff_depthwise_padding",
                f"LeFF's depthwise convolution must keep the token grid for its residual, so padding must be "
                f"(kernel - 1) / 2 with an odd kernel (leff_depthwise_kernel={self.leff_depthwise_kernel})",
            )
        if 2 * self.i2t_max_pool_padding > self.i2t_max_pool_kernel_size:
            fail("i2t_max_pool_padding", f"at most half the max-pool kernel ({self.i2t_max_pool_kernel_size})")
        try:
            self.token_grid_size(*self.image_hw)
        except ValueError as error:
            raise ValueError(f"CeiTConfig.image_size={self.image_size!r} is invalid: {error}") from None


__all__ = ["AUTO_MAP", "CeiTConfig", "PRESETS", "remote_code_auto_map", "save_remote_code"]
