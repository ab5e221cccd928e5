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
"""PyTorch CeiT: Incorporating Convolution Designs into Visual Transformers (Yuan et al., ICCV 2021).

An Image-to-Tokens stem (I2T, Sec. 3.2), encoder blocks with the Locally-enhanced Feed-Forward (LeFF, Sec. 3.3) and
Layer-wise Class-token Attention (LCA, Sec. 3.4). The faster deployment form is `ceit_hf.optimize_for_inference`.
"""

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial, wraps

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.backbone_utils import BackboneMixin, filter_output_hidden_states
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BackboneOutput, BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.processing_utils import Unpack
from transformers.utils import TransformersKwargs, auto_docstring, torch_int
from transformers.utils.generic import can_return_tuple
from transformers.utils.output_capturing import OutputRecorder, capture_outputs

from .configuration_ceit import CeiTConfig


@auto_docstring(custom_intro="Output of [`CeiTModel`]: the encoder's tokens and the LCA's class token.")
@dataclass
class CeiTModelOutput(BaseModelOutputWithPooling):
    r"""
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The class token produced by the LCA, after the final norm: what the classifier sees.
    lca_attentions (`tuple(torch.FloatTensor)`, *optional*):
        One tensor `(batch_size, lca_num_heads, 1, num_blocks)`: how the last block's class token attends to the
        class tokens of all blocks (eager attention only).
    """

    lca_attentions: tuple[torch.FloatTensor, ...] | None = None


@auto_docstring(custom_intro="Output of [`CeiTForImageClassification`]: with the LCA's attentions.")
@dataclass
class CeiTImageClassifierOutput(ImageClassifierOutput):
    r"""
    lca_attentions (`tuple(torch.FloatTensor)`, *optional*):
        As in [`CeiTModelOutput`]: how the last block's class token attends to the class tokens of all blocks.
    """

    lca_attentions: tuple[torch.FloatTensor, ...] | None = None


class CeiTDropPath(nn.Module):
    """Stochastic depth: drops the residual branch of whole samples with probability `drop_prob` in training."""

    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.drop_prob == 0.0 or not self.training:
            return x
        keep = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(1.0 - self.drop_prob)
        return x * keep / (1.0 - self.drop_prob)

    def extra_repr(self) -> str:
        return f"p={self.drop_prob}"


class CeiTLayerScale(nn.Module):
    """CaiT's LayerScale: a learnable per-channel factor on a residual branch."""

    def __init__(self, dim: int, init_value: float):
        super().__init__()
        self.init_value = init_value
        self.lambda1 = nn.Parameter(torch.full((dim,), float(init_value)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.lambda1


def _pointwise_convolution(in_features: int, out_features: int) -> nn.Linear:
    """A Linear layer standing for an official 1x1 (or patch) convolution, initialised as a convolution."""
    layer = nn.Linear(in_features, out_features)
    layer.official_convolution = True
    return layer


def _layer_scale(dim: int, init_value: float | None) -> nn.Module:
    return nn.Identity() if init_value is None else CeiTLayerScale(dim, init_value)


def _token_norm(norm: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """BatchNorm1d over the channels of `(batch, tokens, channels)` as `(batch * tokens, channels)` rows: the official
    BatchNorm2d's statistics, in the layout that trains fastest (2x the transposed view)."""
    return norm(tokens.reshape(-1, tokens.shape[-1])).view(tokens.shape)


def _checkpoint_updating_statistics_once(checkpoint_function: Callable, layer: nn.Module, function: Callable, *args):
    """`checkpoint_function(function, *args)` whose replay in the backward pass normalises with the batch statistics
    again but leaves the running statistics of `layer`'s BatchNorms as the forward pass updated them."""
    if torch.compiler.is_compiling():  # compiled, the replay is part of the traced graph and updates nothing
        return checkpoint_function(function, *args)
    calls = 0

    def run(*inputs):
        nonlocal calls
        calls += 1
        if calls == 1:
            return function(*inputs)
        # Momentum 0 keeps the statistics (writing them back would invalidate what autograd saved of them).
        norms = [
            m for m in layer.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
        ]
        saved = [(norm.momentum, norm.num_batches_tracked.clone()) for norm in norms]
        try:
            for norm in norms:
                norm.momentum = 0.0
            return function(*inputs)
        finally:
            for norm, (momentum, count) in zip(norms, saved):
                norm.momentum = momentum
                with torch.no_grad():
                    norm.num_batches_tracked.copy_(count)

    return checkpoint_function(run, *args)


class CeiTRecomputable(nn.Module):
    """A module whose activations a training step may recompute in the backward pass instead of storing them."""

    # Runtime switches, not configuration (`set_leff_recompute`, `set_stem_recompute`, activation checkpointing).
    recompute_activations: bool | None = None  # None ("auto"): on CPU tensors only, where it was measured worth it
    layer_checkpointed = False  # inside a layer that activation checkpointing replays already

    def recomputes(self, x: torch.Tensor) -> bool:
        """Whether this step recomputes: never outside training, nor compiled (the compiler chooses what to keep)."""
        if not (self.training and torch.is_grad_enabled()) or torch.compiler.is_compiling() or self.layer_checkpointed:
            return False
        return x.device.type == "cpu" if self.recompute_activations is None else self.recompute_activations

    def run(self, function: Callable, x: torch.Tensor, *args) -> torch.Tensor:
        """`function(x, *args)`, recomputed in the backward pass where `recomputes(x)`."""
        if not self.recomputes(x):
            return function(x, *args)
        return _checkpoint_updating_statistics_once(partial(checkpoint, use_reentrant=False), self, function, x, *args)


def eager_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling  # (CeiT has no attention mask)
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class CeiTAttention(nn.Module):
    """Multi-head attention with the official fused query/key/value projection (rows [q | k | v]), through the
    configured attention function. The encoder blocks' self-attention and the LCA's each read their own options."""

    is_class_attention = False

    def __init__(self, config: CeiTConfig):
        super().__init__()
        self.config = config
        if self.is_class_attention:
            self.num_heads, self.attention_dropout = config.lca_encoder_num_heads, config.lca_encoder_attention_dropout
            qkv_bias, proj_dropout = config.lca_encoder_qkv_bias, config.lca_encoder_projection_dropout
        else:
            self.num_heads, self.attention_dropout = config.encoder_num_heads, config.encoder_attention_dropout
            qkv_bias, proj_dropout = config.qkv_bias, config.encoder_projection_dropout
        self.head_dim = config.d_model // self.num_heads
        self.scaling = self.head_dim**-0.5
        self.is_causal = False  # transformers' sdpa path takes a module without it for causal
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=qkv_bias)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.proj_dropout = nn.Dropout(proj_dropout)

    def forward(self, hidden_states: torch.Tensor, **kwargs):
        batch, length, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        if self.is_class_attention:  # `qkv` ran on all class tokens (few) so that it is called as a module
            query = query[:, :, -1:]
        attention_interface: Callable = ALL_ATTENTION_FUNCTIONS.get_interface(
            self.config._attn_implementation, eager_attention_forward
        )
        dropout = self.attention_dropout if self.training else 0.0
        attn_output, attn_weights = attention_interface(
            self, query, key, value, None, dropout=dropout, scaling=self.scaling, **kwargs
        )
        attn_output = self.proj_dropout(self.proj(attn_output.reshape(batch, query.shape[2], -1)))
        return attn_output, attn_weights


class CeiTSelfAttention(CeiTAttention):
    """Multi-head self-attention of the encoder blocks."""


class CeiTClassAttention(CeiTAttention):
    """LCA attention: the last block's class token is the only query; keys and values are the class tokens of all
    blocks, itself included."""

    is_class_attention = True


class CeiTImage2Tokens(CeiTRecomputable):
    """I2T (Eq. 2): convolution, BatchNorm and max-pool extract low-level features, so that patches are cut from a
    4x-downsampled feature map rather than from raw pixels."""

    def __init__(self, config: CeiTConfig):
        super().__init__()
        self.conv = nn.Conv2d(
            config.in_channels,
            config.i2t_out_channels,
            kernel_size=config.i2t_conv_kernel_size,
            stride=config.i2t_conv_stride,
            padding=config.i2t_conv_padding,
            bias=config.i2t_conv_bias,
        )
        self.norm = nn.BatchNorm2d(config.i2t_out_channels)
        self.pool = nn.MaxPool2d(
            config.i2t_max_pool_kernel_size, stride=config.i2t_max_pool_stride, padding=config.i2t_max_pool_padding
        )

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        # Channels-last: the convolution and max-pool run several times faster on it (forward and backward).
        features = self.conv(pixel_values.contiguous(memory_format=torch.channels_last))
        # Recomputed, only the convolution's output is kept (BatchNorm's backward needs it anyway), not the normalised
        # map and the max-pool's indices (1.5x its size).
        return self.run(lambda x: self.pool(self.norm(x)), features)


class CeiTPatchEmbeddings(nn.Module):
    """Cuts the I2T feature map into `patch_size x patch_size` patches and projects each to `d_model`: a strided
    Conv2d ("conv", the official layer) or unfold + Linear ("linear", columns in `F.unfold` order)."""

    def __init__(self, config: CeiTConfig):
        super().__init__()
        p, channels = config.patch_size, config.i2t_out_channels
        self.patch_size = p
        # The branch follows the configuration, not the projection's type: PEFT or quantization may wrap it.
        self.unfold_patches = config.patchify_technique != "conv"
        if not self.unfold_patches:
            self.projection = nn.Conv2d(channels, config.d_model, kernel_size=p, stride=p)
        else:
            self.projection = _pointwise_convolution(channels * p * p, config.d_model)
        # CODEPATH: the seed API's default has a patch LayerNorm; the official CeiT-T/S/B checkpoints have none.
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.patch_norm else nn.Identity()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        if self.unfold_patches:
            tokens = self.projection(F.unfold(features, self.patch_size, stride=self.patch_size).transpose(1, 2))
        else:
            tokens = self.projection(features).flatten(2).transpose(1, 2)
        return self.norm(tokens)


class CeiTEmbeddings(nn.Module):
    """I2T stem -> patch tokens -> prepend the class token -> add the position embeddings -> dropout."""

    def __init__(self, config: CeiTConfig):
        super().__init__()
        self.config = config
        self.image_to_tokens = CeiTImage2Tokens(config)
        self.patch_embeddings = CeiTPatchEmbeddings(config)
        self.grid_size = config.token_grid_size(*config.image_hw)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.d_model))
        num_positions = self.grid_size[0] * self.grid_size[1] + 1
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_positions, config.d_model))
        self.dropout = nn.Dropout(config.dropout)

    def interpolate_pos_encoding(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """Position embeddings for a `grid_size` token grid (patch positions resized bicubically, the class's kept)."""
        if tuple(grid_size) == tuple(self.grid_size) and not torch.jit.is_tracing():
            return self.position_embeddings
        dim = self.position_embeddings.shape[-1]
        class_pos, patch_pos = self.position_embeddings[:, :1], self.position_embeddings[:, 1:]
        patch_pos = patch_pos.reshape(1, *self.grid_size, dim).permute(0, 3, 1, 2).float()
        size = (torch_int(grid_size[0]), torch_int(grid_size[1]))
        patch_pos = F.interpolate(patch_pos, size=size, mode="bicubic", align_corners=False).to(class_pos.dtype)
        return torch.cat((class_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)

    def forward(self, pixel_values: torch.Tensor | None, interpolate_pos_encoding: bool = False):
        """(the tokens, class token first; their grid size; the I2T feature map, a backbone's "stem" stage), or a
        `ValueError` naming what is wrong with `pixel_values`."""
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values.")
        expected = f"a float tensor of shape (batch_size, {self.config.in_channels}, height, width)"
        is_tensor = torch.is_tensor(pixel_values)
        if not is_tensor or pixel_values.ndim != 4 or not pixel_values.is_floating_point():
            got = f"{tuple(pixel_values.shape)} {pixel_values.dtype}" if is_tensor else pixel_values
            raise ValueError(
                f"pixel_values must be {expected} (normalised pixels, e.g. from CeiTImageProcessor); got {got}."
            )
        batch, channels, height, width = pixel_values.shape
        if channels != self.config.in_channels or batch == 0:
            raise ValueError(f"pixel_values must be {expected}, non-empty; got shape {tuple(pixel_values.shape)}.")
        if not interpolate_pos_encoding and (height, width) != self.config.image_hw:
            size = "x".join(map(str, self.config.image_hw))
            raise ValueError(
                f"Input image size ({height}x{width}) doesn't match the model ({size}). Resize the images, or pass "
                "interpolate_pos_encoding=True to resize the position embeddings."
            )
        grid_size = self.config.token_grid_size(height, width)
        stem = self.image_to_tokens(pixel_values.to(self.cls_token.dtype))
        tokens = self.patch_embeddings(stem)
        tokens = torch.cat((self.cls_token.expand(tokens.shape[0], -1, -1), tokens), dim=1)
        return self.dropout(tokens + self.interpolate_pos_encoding(grid_size)), grid_size, stem


class CeiTLeFF(CeiTRecomputable):
    """Locally-enhanced Feed-Forward (Eq. 5-7): patch tokens are expanded, mixed with their neighbours on their grid by
    a depthwise convolution, then projected back; the class token passes through unchanged."""

    def __init__(self, config: CeiTConfig):
        super().__init__()
        dim, hidden = config.d_model, config.leff_expand_ratio * config.d_model
        # CODEPATH: every official checkpoint and the seed API's default have LeFF's BatchNorms; off, a plain LeFF.
        batch_norm = nn.BatchNorm1d if config.leff_batch_norm else (lambda channels: nn.Identity())
        self.expand = _pointwise_convolution(dim, hidden)
        self.expand_norm = batch_norm(hidden)
        self.depthwise = nn.Conv2d(
            hidden,
            hidden,
            config.leff_depthwise_kernel,
            stride=config.leff_depthwise_stride,
            padding=config.leff_depthwise_padding,
            groups=hidden,
        )
        # CODEPATH: the seed API's default adds a pointwise layer (depthwise-separable); official CeiT-T/S/B do not.
        self.pointwise = _pointwise_convolution(hidden, hidden) if config.leff_depthwise_separable else nn.Identity()
        self.depthwise_norm = batch_norm(hidden)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(config.encoder_dropout)
        self.reduce = _pointwise_convolution(hidden, dim)
        self.reduce_norm = batch_norm(dim)
        # CODEPATH: the seed API's default has the paper's last GELU; the official checkpoints end on the BatchNorm.
        self.final_act = nn.GELU() if config.leff_final_activation else nn.Identity()

    def forward(self, hidden_states: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        class_token, tokens = hidden_states[:, :1], hidden_states[:, 1:]
        x = self.run(self.local_enhancement, self.expand(tokens), grid_size)
        x = self.final_act(_token_norm(self.reduce_norm, self.reduce(self.dropout(x))))
        return torch.cat((class_token, x), dim=1)

    def local_enhancement(self, x: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        """BatchNorm + GELU, the depthwise convolution over the token grid (+ pointwise), BatchNorm + GELU."""
        batch, num_tokens, _ = x.shape
        x = self.act(_token_norm(self.expand_norm, x))
        # Patch tokens back on their grid: (B, N, C) viewed as a channels-last (B, C, H, W) map, no copy.
        x = self.depthwise(x.view(batch, *grid_size, -1).permute(0, 3, 1, 2))
        x = x.permute(0, 2, 3, 1).reshape(batch, num_tokens, -1)
        return self.act(_token_norm(self.depthwise_norm, self.pointwise(x)))


class CeiTMLP(nn.Module):
    def __init__(self, dim: int, hidden: int, dropout: float):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.dropout = nn.Dropout(dropout)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.dropout(self.act(self.fc1(x))))


class CeiTLayer(GradientCheckpointingLayer):
    """Encoder block: self-attention and LeFF, each a residual branch with optional LayerScale and drop-path, in
    "pre" (`x + f(LN(x))`) or "post" (`LN(x + f(x))`) order."""

    def __init__(self, config: CeiTConfig, drop_path_rate: float = 0.0):
        super().__init__()
        dim = config.d_model
        self.pre_norm = config.ln_order == "pre"
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = CeiTSelfAttention(config)
        self.layer_scale1 = _layer_scale(dim, config.layer_scale)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.leff = CeiTLeFF(config)
        self.layer_scale2 = _layer_scale(dim, config.layer_scale)
        self.drop_path = CeiTDropPath(drop_path_rate)

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int], **kwargs) -> torch.Tensor:
        if self.pre_norm:
            x = x + self.drop_path(self.layer_scale1(self.attention(self.norm1(x), **kwargs)[0]))
            x = x + self.drop_path(self.layer_scale2(self.leff(self.norm2(x), grid_size)))
        else:
            x = self.norm1(x + self.drop_path(self.layer_scale1(self.attention(x, **kwargs)[0])))
            x = self.norm2(x + self.drop_path(self.layer_scale2(self.leff(x, grid_size))))
        return x


class CeiTLayerClassAttention(nn.Module):
    """LCA (Sec. 3.4): the class tokens of all encoder blocks, plus a learned layer-position embedding, form a short
    sequence; the last block's class token attends to all of them, then goes through an MLP."""

    def __init__(self, config: CeiTConfig):
        super().__init__()
        dim = config.d_model
        self.pre_norm = config.lca_encoder_ln_order == "pre"
        # CODEPATH: official CeiT-T/S/B and the seed API's default add the layer-position embedding; off, none.
        position = config.lca_layer_position_embedding
        self.layer_position_embeddings = (
            nn.Parameter(torch.zeros(1, config.num_encoder_blocks, dim)) if position else None
        )
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = CeiTClassAttention(config)
        self.layer_scale1 = _layer_scale(dim, config.lca_encoder_layer_scale)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = CeiTMLP(dim, config.lca_encoder_expansion_ratio * dim, config.lca_encoder_dropout)
        self.layer_scale2 = _layer_scale(dim, config.lca_encoder_layer_scale)
        self.drop_path = CeiTDropPath(config.lca_encoder_stodepth_prob)

    def forward(self, class_tokens: torch.Tensor, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        if self.layer_position_embeddings is not None:
            class_tokens = class_tokens + self.layer_position_embeddings
        x = class_tokens[:, -1:]
        if self.pre_norm:
            attn, weights = self.attention(self.norm1(class_tokens), **kwargs)
            x = x + self.drop_path(self.layer_scale1(attn))
            x = x + self.drop_path(self.layer_scale2(self.mlp(self.norm2(x))))
        else:
            attn, weights = self.attention(class_tokens, **kwargs)
            x = self.norm1(x + self.drop_path(self.layer_scale1(attn)))
            x = self.norm2(x + self.drop_path(self.layer_scale2(self.mlp(x))))
        return x[:, 0], weights


class CeiTEncoder(nn.Module):
    def __init__(self, config: CeiTConfig):
        super().__init__()
        self.layers = nn.ModuleList(CeiTLayer(config, rate) for rate in config.drop_path_rates())

    def forward(self, hidden_states: torch.Tensor, grid_size: tuple[int, int], all_hidden_states=False, **kwargs):
        """(the last block's tokens, or with `all_hidden_states` the embeddings and every block's tokens; every
        block's class token `(batch, num_blocks, d_model)`, for the LCA)."""
        states, class_tokens = (hidden_states,), []
        for layer in self.layers:
            hidden_states = layer(hidden_states, grid_size, **kwargs)
            class_tokens.append(hidden_states[:, 0])
            states = (*states, hidden_states) if all_hidden_states else (hidden_states,)
        return states, torch.stack(class_tokens, dim=1)


def _lca_attentions_with_attentions(forward: Callable) -> Callable:
    """Records the LCA's attentions with the encoder's (`capture_outputs` ties only transformers' own to them)."""

    @wraps(forward)
    def wrapper(self, *args, **kwargs):
        kwargs.setdefault("output_lca_attentions", kwargs.get("output_attentions", self.config.output_attentions))
        return forward(self, *args, **kwargs)

    return wrapper


@auto_docstring(custom_intro="Weights initialisation, loading and the runtime switches shared by every CeiT model.")
class CeiTPreTrainedModel(PreTrainedModel):
    config: CeiTConfig
    base_model_prefix = "ceit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CeiTEmbeddings", "CeiTLayer", "CeiTLayerClassAttention"]
    _supports_sdpa = True
    _supports_flash_attn = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _can_compile_fullgraph = True
    _can_record_outputs = {
        "hidden_states": CeiTLayer,
        "attentions": CeiTSelfAttention,
        "lca_attentions": OutputRecorder(CeiTClassAttention, index=1),
    }
    _input_embed_layer = "patch_embeddings"

    def _init_weights(self, module: nn.Module):
        """The official initialisation: truncated normal Linear layers, PyTorch's defaults for convolutions (and the
        Linear layers standing for them), zero layer-position embeddings."""
        super()._init_weights(module)
        if isinstance(module, nn.Conv2d) or getattr(module, "official_convolution", False):
            init.kaiming_uniform_(module.weight, a=5**0.5)
            if module.bias is not None:
                bound = 1 / module.weight[0].numel() ** 0.5
                init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=self.config.initializer_range)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, CeiTEmbeddings):
            init.trunc_normal_(module.cls_token, std=self.config.initializer_range)
            init.trunc_normal_(module.position_embeddings, std=self.config.initializer_range)
        elif isinstance(module, CeiTLayerClassAttention) and module.layer_position_embeddings is not None:
            init.zeros_(module.layer_position_embeddings)
        elif isinstance(module, CeiTLayerScale):
            init.constant_(module.lambda1, module.init_value)

    def _set_gradient_checkpointing(self, enable: bool = True, gradient_checkpointing_func=checkpoint, **kwargs):
        super()._set_gradient_checkpointing(enable, gradient_checkpointing_func, **kwargs)
        for layer in [m for m in self.modules() if isinstance(m, CeiTLayer)]:
            layer._gradient_checkpointing_func = partial(
                _checkpoint_updating_statistics_once, gradient_checkpointing_func, layer
            )
            layer.leff.layer_checkpointed = bool(layer.gradient_checkpointing)

    # trf-ignore: TRF033 (a runtime speed/memory switch, like gradient checkpointing: kept out of config.json)
    def set_leff_recompute(self, enabled: bool | str = "auto"):
        """Recompute LeFF's BatchNorm/GELU/depthwise activations in the backward pass of training (`True`), store them
        (`False`), or `"auto"`: recompute on CPU (CeiT-T's training memory 1.28x DeiT-T's instead of 2.17x, for about
        6% of the step: docs/performance.md), store on accelerators. Not saved with the model; changes no result."""
        self._set_recompute(CeiTLeFF, "set_leff_recompute", enabled)

    # trf-ignore: TRF033 (a runtime memory switch, like gradient checkpointing: kept out of config.json)
    def set_stem_recompute(self, enabled: bool | str = "auto"):
        """Recompute the I2T stem's BatchNorm output and max-pool indices in the backward pass of training (`True`),
        store them (`False`), or `"auto"`: recompute on CPU, store on accelerators. Not saved with the model."""
        self._set_recompute(CeiTImage2Tokens, "set_stem_recompute", enabled)

    def _set_recompute(self, module_class: type, method: str, enabled: bool | str):
        if enabled not in (True, False, "auto"):
            raise ValueError(f"{method} takes True, False or 'auto', got {enabled!r}.")
        for module in self.modules():
            if isinstance(module, module_class):
                module.recompute_activations = None if enabled == "auto" else enabled

    def save_pretrained(self, save_directory, *args, **kwargs):
        # `register_for_auto_class` maps only the saving class; a CeiT folder also loads as its base model.
        if self.is_remote_code():
            module = __name__.rsplit(".", 1)[-1]  # modeling_ceit, also when loaded as remote code
            self.config.auto_map = {
                **(getattr(self.config, "auto_map", None) or {}),
                "AutoModel": f"{module}.CeiTModel",
                "AutoModelForImageClassification": f"{module}.CeiTForImageClassification",
                "AutoBackbone": f"{module}.CeiTBackbone",
            }
        return super().save_pretrained(save_directory, *args, **kwargs)


# An intro given: auto_docstring's default one looks the model up in transformers' own module tree.
@auto_docstring(custom_intro="The bare CeiT: I2T stem, encoder blocks with LeFF, and the LCA's class token (pooled).")
class CeiTModel(CeiTPreTrainedModel):
    def __init__(self, config: CeiTConfig):
        super().__init__(config)
        self.embeddings = CeiTEmbeddings(config)
        self.encoder = CeiTEncoder(config)
        self.lca = CeiTLayerClassAttention(config)
        # A pre-norm LCA leaves its output un-normalised; a post-norm one already ends in a LayerNorm.
        pre_norm = config.lca_encoder_ln_order == "pre"
        self.layernorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if pre_norm else nn.Identity()
        self.post_init()

    # (no `merge_with_config_defaults`: it injects cache/VLM keywords from the config, none of which CeiT reads)
    @_lca_attentions_with_attentions
    @capture_outputs(tie_last_hidden_states=False)
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CeiTModelOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised pixels, e.g. from [`CeiTImageProcessor`].
        interpolate_pos_encoding (`bool`, *optional*):
            Resize the position embeddings to the token grid of inputs of another size than `config.image_size`.
        """
        if unknown := set(kwargs) - {*TransformersKwargs.__annotations__, "output_lca_attentions"}:
            # transformers passes unknown keywords on unread: a `head_mask` would be ignored without a word.
            raise TypeError(f"CeiT's forward got unexpected keyword arguments {sorted(unknown)}.")
        embeddings, grid_size, _ = self.embeddings(pixel_values, bool(interpolate_pos_encoding))
        hidden_states, class_tokens = self.encoder(embeddings, grid_size, **kwargs)
        pooled, _ = self.lca(class_tokens, **kwargs)
        return CeiTModelOutput(last_hidden_state=hidden_states[-1], pooler_output=self.layernorm(pooled))


class CeiTMLPHead(nn.Module):
    """The seed API's head: Linear -> Tanh -> Dropout -> Linear."""

    def __init__(self, config: CeiTConfig):
        super().__init__()
        self.dense = nn.Linear(config.d_model, config.classifier_mlp_d)
        self.act = nn.Tanh()
        self.dropout = nn.Dropout(config.dropout)
        self.out_proj = nn.Linear(config.classifier_mlp_d, config.num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out_proj(self.dropout(self.act(self.dense(x))))


@auto_docstring(custom_intro="CeiT with an image classification head on the LCA's class token.")
class CeiTForImageClassification(CeiTPreTrainedModel):
    def __init__(self, config: CeiTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ceit = CeiTModel(config)
        if config.num_labels == 0:
            self.classifier = nn.Identity()
        # CODEPATH: official CeiT-T/S/B have one Linear head (None); the seed API's default an MLP head (2048).
        elif config.classifier_mlp_d is None:
            self.classifier = nn.Linear(config.d_model, config.num_labels)
        else:
            self.classifier = CeiTMLPHead(config)
        self.post_init()

    @can_return_tuple
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> CeiTImageClassifierOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised pixels, e.g. from [`CeiTImageProcessor`].
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, config.num_labels)`; float targets `(batch_size, num_labels)` for multi-label, or
            floats for regression (`num_labels == 1`), as set by `config.problem_type`.
        interpolate_pos_encoding (`bool`, *optional*):
            Resize the position embeddings to the input's token grid (inputs of another size than `image_size`).
        """
        outputs = self.ceit(pixel_values, interpolate_pos_encoding=interpolate_pos_encoding, **kwargs)
        logits = self.classifier(outputs.pooler_output)
        loss = self.loss_function(labels, logits, self.config, **kwargs) if labels is not None else None
        return CeiTImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            lca_attentions=outputs.lca_attentions,
        )


@auto_docstring(
    custom_intro="""
    CeiT as a backbone for dense prediction (`AutoBackbone`, the `backbone_config` of UperNet, DPT, ...): the stages
    are the Image-to-Tokens map ("stem") and each block's patch tokens as a map ("stage1" ... "stageN", class token
    dropped, through a shared LayerNorm when `config.apply_layernorm`). Loads a classification checkpoint's backbone.
    """
)
class CeiTBackbone(BackboneMixin, CeiTPreTrainedModel):
    has_attentions = False
    _keys_to_ignore_on_load_unexpected = [r"^(ceit\.)?lca\.", r"^classifier\."]
    _keys_to_ignore_on_load_missing = [r"^layernorm\."]

    def __init__(self, config: CeiTConfig):
        super().__init__(config)
        self.num_features = [config.i2t_out_channels] + [config.d_model] * config.num_encoder_blocks
        self.embeddings = CeiTEmbeddings(config)
        self.encoder = CeiTEncoder(config)
        self.layernorm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps)
        self.post_init()

    @can_return_tuple
    @filter_output_hidden_states
    @auto_docstring
    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        **kwargs: Unpack[TransformersKwargs],
    ) -> BackboneOutput:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised pixels, e.g. from [`CeiTImageProcessor`].
        interpolate_pos_encoding (`bool`, *optional*, defaults to `True`):
            Accept any input size whose stem output tiles into patches; `False` holds it to `config.image_size`.
        """
        embeddings, grid_size, stem = self.embeddings(pixel_values, interpolate_pos_encoding is not False)
        hidden_states, _ = self.encoder(embeddings, grid_size, all_hidden_states=True, **kwargs)
        feature_maps = [stem] if "stem" in self.out_features else []
        for stage, hidden_state in zip(self.stage_names[1:], hidden_states[1:]):
            if stage not in self.out_features:
                continue
            tokens = hidden_state[:, 1:]
            # CODEPATH: no released checkpoint; dense-prediction heads take normalised maps by default (as DINOv2's).
            if self.config.apply_layernorm:
                tokens = self.layernorm(tokens)
            # CODEPATH: no released checkpoint; maps for convolutional heads by default, tokens for transformer heads.
            if self.config.reshape_hidden_states:
                tokens = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid_size)
            feature_maps.append(tokens)
        return BackboneOutput(feature_maps=tuple(feature_maps), hidden_states=hidden_states)


__all__ = ["CeiTBackbone", "CeiTForImageClassification", "CeiTModel", "CeiTPreTrainedModel"]
