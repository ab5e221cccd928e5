# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""PyTorch CeiT: Incorporating Convolution Designs into Visual Transformers (Yuan et al., ICCV 2021).

The pieces follow the paper's names: an Image-to-Tokens stem (I2T), encoder blocks whose feed-forward is the
Locally-enhanced Feed-Forward (LeFF), and Layer-wise Class-token Attention (LCA) over the class tokens of all
blocks. Tokens stay in (batch, tokens, channels) layout throughout: LeFF's pointwise convolutions are Linear
layers and its BatchNorms normalise the channel axis of that layout, which is the same function as the
official NCHW convolutions without the layout round trips.

This file is self-contained (torch, transformers and `.configuration_ceit`) so that it works as Hub remote code.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from transformers import PreTrainedModel
from transformers import initialization as init
from transformers.modeling_layers import GradientCheckpointingLayer
from transformers.modeling_outputs import BaseModelOutputWithPooling, ImageClassifierOutput
from transformers.modeling_utils import ALL_ATTENTION_FUNCTIONS
from transformers.utils import logging, torch_int

from .configuration_ceit import CeiTConfig


logger = logging.get_logger(__name__)


@dataclass
class CeiTModelOutput(BaseModelOutputWithPooling):
    r"""
    last_hidden_state (`torch.FloatTensor` of shape `(batch_size, 1 + num_patches, hidden_size)`):
        Tokens after the last encoder block (class token first).
    pooler_output (`torch.FloatTensor` of shape `(batch_size, hidden_size)`):
        The class token produced by the LCA, after the final norm: what the classifier sees.
    hidden_states (`tuple(torch.FloatTensor)`, *optional*):
        The embeddings and the output of each encoder block, each `(batch_size, 1 + num_patches, hidden_size)`.
    attentions (`tuple(torch.FloatTensor)`, *optional*):
        Attention probabilities of each encoder block, each `(batch_size, num_heads, 1 + num_patches, 1 + num_patches)`.
    lca_attentions (`torch.FloatTensor` of shape `(batch_size, lca_num_heads, 1, num_blocks)`, *optional*):
        How the last block's class token attends to the class tokens of all blocks in the LCA.
    """

    lca_attentions: torch.FloatTensor | None = None


@dataclass
class CeiTImageClassifierOutput(ImageClassifierOutput):
    r"""
    `ImageClassifierOutput` plus `lca_attentions`, the LCA attention probabilities
    `(batch_size, lca_num_heads, 1, num_blocks)`, returned with `output_attentions=True`.
    """

    lca_attentions: torch.FloatTensor | None = None


def drop_path(x: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero the residual branch of whole samples with probability `drop_prob`."""
    if drop_prob == 0.0 or not training:
        return x
    keep_prob = 1.0 - drop_prob
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep_prob)
    return x * mask.div_(keep_prob)


class CeiTDropPath(nn.Module):
    def __init__(self, drop_prob: float = 0.0):
        super().__init__()
        self.drop_prob = drop_prob

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.drop_prob, self.training)

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


def _layer_scale(dim: int, init_value: float | None) -> nn.Module:
    return nn.Identity() if init_value is None else CeiTLayerScale(dim, init_value)


class CeiTConvLinear(nn.Linear):
    """A convolution of the official model applied as a Linear layer on the token layout (LeFF's 1x1
    convolutions, the "linear" patch projection). Initialised like the convolution it stands for."""


def _in_checkpoint_recomputation() -> bool:
    # Activation checkpointing replays a layer's forward inside the backward pass; outside a backward pass the
    # autograd engine reports no current graph task.
    if torch.compiler.is_compiling():
        return False
    return torch._C._current_graph_task_id() != -1


def _token_batch_norm(module: nn.modules.batchnorm._BatchNorm, base_forward, x: torch.Tensor) -> torch.Tensor:
    flat = x.reshape(-1, x.shape[-1])
    if module.training and _in_checkpoint_recomputation():
        # momentum 0 leaves the running statistics as they are while saving the same tensors for backward as the
        # first pass (non-reentrant checkpointing compares them).
        out = F.batch_norm(flat, module.running_mean, module.running_var, module.weight, module.bias, True, 0.0, module.eps)
    else:
        out = base_forward(module, flat)
    return out.view(x.shape)


class CeiTTokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm over the channel (last) axis of `(..., channels)` tokens: the statistics are those of a
    BatchNorm2d over an NCHW map of the same tokens, so official LeFF weights load unchanged.

    When activation checkpointing recomputes a layer, the replay normalises with the batch statistics but leaves
    the running statistics alone: they were updated once already, on the real forward pass.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _token_batch_norm(self, nn.BatchNorm1d.forward, x)


class CeiTTokenSyncBatchNorm(nn.SyncBatchNorm):
    """`CeiTTokenBatchNorm` with statistics synchronised across processes (multi-GPU training)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _token_batch_norm(self, nn.SyncBatchNorm.forward, x)


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Replaces every BatchNorm of a CeiT by its SyncBatchNorm counterpart (same parameters, buffers and state_dict
    keys). Unlike `torch.nn.SyncBatchNorm.convert_sync_batchnorm`, LeFF's token-layout BatchNorms keep their layout."""
    for name, child in model.named_children():
        if isinstance(child, CeiTTokenBatchNorm):
            sync = CeiTTokenSyncBatchNorm(child.num_features, child.eps, child.momentum, child.affine, child.track_running_stats)
            sync.load_state_dict(child.state_dict())
            sync.train(child.training)
            setattr(model, name, sync.to(child.weight.device))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(model, name, nn.SyncBatchNorm.convert_sync_batchnorm(child))
        else:
            convert_sync_batchnorm(child)
    return model


def fold_batch_norm(layer: nn.Module, norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """The weight and bias of `layer` (Linear or Conv2d) with the eval-mode BatchNorm `norm` folded in, or None
    when `norm` is not a BatchNorm in eval mode (training uses batch statistics, which cannot be folded)."""
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm) or norm.training or norm.running_var is None:
        return None
    # A BatchNorm with fixed statistics is an affine map: y = scale * (Wx + b - mean) + beta. Computed in float32,
    # the state_dict stays unfused, so training, saving and loading are unaffected.
    scale = norm.weight.float() * torch.rsqrt(norm.running_var.float() + norm.eps)
    weight = layer.weight.float() * scale.view((-1,) + (1,) * (layer.weight.ndim - 1))
    bias = norm.bias.float() - norm.running_mean.float() * scale
    if layer.bias is not None:
        bias = bias + layer.bias.float() * scale
    # Recomputed on every call (a few kFLOPs): a cache would go stale, since fused optimizers and BatchNorm's own
    # statistics updates change these tensors without bumping their version counters.
    return weight.to(layer.weight.dtype), bias.to(layer.weight.dtype)


def layer_with_batch_norm(layer: nn.Module, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """`norm(layer(x))` for a Linear or Conv2d `layer` and a BatchNorm (or Identity) `norm`; in eval mode one
    kernel with the BatchNorm folded into the layer, the same function up to rounding."""
    folded = fold_batch_norm(layer, norm)
    if folded is not None:
        return F.linear(x, *folded) if isinstance(layer, nn.Linear) else layer._conv_forward(x, *folded)
    y = layer(x)
    if y.ndim == 4 and isinstance(norm, (CeiTTokenBatchNorm, CeiTTokenSyncBatchNorm)):
        # a convolution's (N, C, H, W) output into a channels-last BatchNorm
        return norm(y.movedim(1, -1)).movedim(-1, 1)
    return norm(y)


def _inference_fast_path(x: torch.Tensor) -> bool:
    """Whether `x` may take the inference-only kernels: no autograd graph, eager mode, CPU."""
    return (
        not x.requires_grad
        and x.device.type == "cpu"
        and not torch.compiler.is_compiling()
        and not torch.jit.is_tracing()
    )


def gelu(x: torch.Tensor) -> torch.Tensor:
    """Exact (erf) GELU; in place when nothing needs its input (inference), sparing a large allocation."""
    return torch.ops.aten.gelu_(x) if _inference_fast_path(x) else F.gelu(x)


def depthwise_with_batch_norm_gelu(conv: nn.Conv2d, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """GELU(norm(conv(x))) for LeFF's depthwise stage. At inference on CPU the folded convolution and the GELU
    run as one oneDNN kernel (about 3x faster than the two ops on a channels-last map)."""
    folded = fold_batch_norm(conv, norm)
    if folded is not None and _inference_fast_path(x) and _HAS_FUSED_CONV and x.dtype == torch.float32:
        return torch.ops.mkldnn._convolution_pointwise(
            x, folded[0], folded[1], list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
            "gelu", [], "none",
        )
    return gelu(layer_with_batch_norm(conv, norm, x))


_HAS_FUSED_CONV = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


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
    attn_weights = torch.matmul(query, key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        attn_weights = attn_weights + attention_mask
    attn_weights = F.softmax(attn_weights, dim=-1, dtype=torch.float32).to(query.dtype)
    attn_weights = F.dropout(attn_weights, p=dropout, training=module.training)
    attn_output = torch.matmul(attn_weights, value).transpose(1, 2).contiguous()
    return attn_output, attn_weights


class CeiTAttentionBase(nn.Module):
    """Multi-head attention with a fused query/key/value projection (the official layout: rows [q | k | v],
    heads contiguous inside each)."""

    def __init__(self, config: CeiTConfig, num_heads: int, qkv_bias: bool, attention_dropout: float, proj_dropout: float):
        super().__init__()
        self.config = config
        self.num_heads = num_heads
        self.head_dim = config.d_model // num_heads
        self.scaling = self.head_dim**-0.5
        self.attention_dropout = attention_dropout
        # transformers' sdpa path treats a module without `is_causal` as causal.
        self.is_causal = False
        self.qkv = nn.Linear(config.d_model, 3 * config.d_model, bias=qkv_bias)
        self.proj = nn.Linear(config.d_model, config.d_model)
        self.proj_dropout = nn.Dropout(proj_dropout)

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(x.shape[0], x.shape[1], self.num_heads, self.head_dim).transpose(1, 2)

    def _attend(self, query, key, value, output_attentions: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        # Attention weights only exist on the eager path, so asking for them takes it for this call.
        attention_interface = eager_attention_forward
        if not output_attentions and self.config._attn_implementation not in (None, "eager"):
            attention_interface = ALL_ATTENTION_FUNCTIONS.get_interface(
                self.config._attn_implementation, eager_attention_forward
            )
        out, weights = attention_interface(
            self,
            query,
            key,
            value,
            None,
            dropout=self.attention_dropout if self.training else 0.0,
            scaling=self.scaling,
            is_causal=False,
        )
        out = out.reshape(out.shape[0], out.shape[1], -1)
        return self.proj_dropout(self.proj(out)), weights


class CeiTSelfAttention(CeiTAttentionBase):
    def __init__(self, config: CeiTConfig):
        super().__init__(
            config,
            config.encoder_num_heads,
            config.qkv_bias,
            config.encoder_attention_dropout,
            config.encoder_projection_dropout,
        )

    def forward(self, hidden_states: torch.Tensor, output_attentions: bool = False):
        batch, length, _ = hidden_states.shape
        qkv = self.qkv(hidden_states).view(batch, length, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        query, key, value = qkv.unbind(0)
        return self._attend(query, key, value, output_attentions)


class CeiTClassAttention(CeiTAttentionBase):
    """LCA attention: one query (the last block's class token) over the class tokens of all blocks, itself
    included. The query uses the first `d_model` rows of `qkv`, keys and values the other rows."""

    def __init__(self, config: CeiTConfig):
        super().__init__(
            config,
            config.lca_encoder_num_heads,
            config.lca_encoder_qkv_bias,
            config.lca_encoder_attention_dropout,
            config.lca_encoder_projection_dropout,
        )

    def forward(self, query_token: torch.Tensor, class_tokens: torch.Tensor, output_attentions: bool = False):
        dim = self.config.d_model
        bias = self.qkv.bias
        query = F.linear(query_token, self.qkv.weight[:dim], None if bias is None else bias[:dim])
        key, value = F.linear(class_tokens, self.qkv.weight[dim:], None if bias is None else bias[dim:]).chunk(2, -1)
        return self._attend(self._heads(query), self._heads(key), self._heads(value), output_attentions)


class CeiTImage2Tokens(nn.Module):
    """I2T: a convolution, BatchNorm and max-pool extract low-level features (edges, corners) so that patches
    are cut from a 4x-downsampled feature map rather than from raw pixels."""

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
        # Channels-last memory: oneDNN/cuDNN convolutions and the max-pool run fastest on it, and the patch
        # projection's output then flattens into tokens without a copy.
        pixel_values = pixel_values.contiguous(memory_format=torch.channels_last)
        return self.pool(layer_with_batch_norm(self.conv, self.norm, pixel_values))


class CeiTPatchEmbeddings(nn.Module):
    """Cuts the I2T feature map into `patch_size x patch_size` patches and projects each to `d_model`.

    "conv" keeps the official Conv2d weight `(D, C, p, p)`; "linear" keeps an unfold + Linear weight
    `(D, C*p*p)`, whose columns are in `F.unfold` order (channel, row, column). Both run as one strided
    convolution, which is what unfold + Linear computes.
    """

    def __init__(self, config: CeiTConfig):
        super().__init__()
        p, channels = config.patch_size, config.i2t_out_channels
        self.patch_size = p
        self.technique = config.patchify_technique
        if self.technique == "conv":
            self.projection = nn.Conv2d(channels, config.d_model, kernel_size=p, stride=p)
        else:
            self.projection = CeiTConvLinear(channels * p * p, config.d_model)
        self.norm = nn.LayerNorm(config.d_model, eps=config.layer_norm_eps) if config.patch_norm else nn.Identity()

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        weight = self.projection.weight
        if self.technique == "linear":
            weight = weight.view(weight.shape[0], -1, self.patch_size, self.patch_size)
        tokens = F.conv2d(features, weight, self.projection.bias, stride=self.patch_size)
        return self.norm(tokens.flatten(2).transpose(1, 2))


class CeiTEmbeddings(nn.Module):
    """I2T stem -> patch tokens -> prepend the class token -> add the learned position embeddings -> dropout."""

    def __init__(self, config: CeiTConfig):
        super().__init__()
        self.config = config
        self.image_to_tokens = CeiTImage2Tokens(config)
        self.patch_embeddings = CeiTPatchEmbeddings(config)
        self.grid_size = config.token_grid_size(*config.image_hw)
        num_patches = self.grid_size[0] * self.grid_size[1]
        self.cls_token = nn.Parameter(torch.zeros(1, 1, config.d_model))
        self.position_embeddings = nn.Parameter(torch.zeros(1, num_patches + 1, config.d_model))
        self.dropout = nn.Dropout(config.dropout)

    def interpolate_pos_encoding(self, grid_size: tuple[int, int]) -> torch.Tensor:
        """Position embeddings for a `grid_size` token grid: the patch embeddings are resized bicubically on
        their 2-D grid, the class-token embedding is kept."""
        if tuple(grid_size) == tuple(self.grid_size) and not torch.jit.is_tracing():
            return self.position_embeddings
        dim = self.position_embeddings.shape[-1]
        class_pos, patch_pos = self.position_embeddings[:, :1], self.position_embeddings[:, 1:]
        patch_pos = patch_pos.reshape(1, self.grid_size[0], self.grid_size[1], dim).permute(0, 3, 1, 2)
        patch_pos = F.interpolate(
            patch_pos.float(),
            size=(torch_int(grid_size[0]), torch_int(grid_size[1])),
            mode="bicubic",
            align_corners=False,
        ).to(patch_pos.dtype)
        return torch.cat((class_pos, patch_pos.permute(0, 2, 3, 1).reshape(1, -1, dim)), dim=1)

    def forward(self, pixel_values: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        tokens = self.patch_embeddings(self.image_to_tokens(pixel_values))
        cls_tokens = self.cls_token.expand(tokens.shape[0], -1, -1)
        embeddings = torch.cat((cls_tokens, tokens), dim=1) + self.interpolate_pos_encoding(grid_size)
        return self.dropout(embeddings)


class CeiTLeFF(nn.Module):
    """Locally-enhanced Feed-Forward (paper Eq. 5-7): patch tokens are expanded, mixed with their grid
    neighbours by a depthwise convolution, and projected back; the class token passes through unchanged.

    Expansion and reduction are the official 1x1 convolutions written as Linear layers on the token layout.
    """

    def __init__(self, config: CeiTConfig):
        super().__init__()
        dim, hidden = config.d_model, config.leff_expand_ratio * config.d_model

        def batch_norm(channels):
            return CeiTTokenBatchNorm(channels) if config.leff_batch_norm else nn.Identity()

        self.expand = CeiTConvLinear(dim, hidden)
        self.expand_norm = batch_norm(hidden)
        self.depthwise = nn.Conv2d(
            hidden,
            hidden,
            kernel_size=config.leff_depthwise_kernel,
            stride=config.leff_depthwise_stride,
            padding=config.leff_depthwise_padding,
            groups=hidden,
        )
        self.pointwise = CeiTConvLinear(hidden, hidden) if config.leff_depthwise_separable else nn.Identity()
        self.depthwise_norm = batch_norm(hidden)
        self.dropout = nn.Dropout(config.encoder_dropout)
        self.reduce = CeiTConvLinear(hidden, dim)
        self.reduce_norm = batch_norm(dim)
        self.final_activation = config.leff_final_activation

    def forward(self, hidden_states: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        # A contiguous copy of the (narrow) patch tokens lets the expansion run as one matrix product.
        cls_token, tokens = hidden_states[:, :1], hidden_states[:, 1:].contiguous()
        batch, num_tokens, _ = tokens.shape
        x = gelu(layer_with_batch_norm(self.expand, self.expand_norm, tokens))
        # (B, N, C) -> (B, C, H, W) as a view: channels-last memory, which the depthwise kernel handles natively.
        x = x.view(batch, grid_size[0], grid_size[1], -1).permute(0, 3, 1, 2)
        if isinstance(self.pointwise, nn.Identity):
            x = depthwise_with_batch_norm_gelu(self.depthwise, self.depthwise_norm, x)
            x = x.permute(0, 2, 3, 1).reshape(batch, num_tokens, -1)
        else:
            x = self.depthwise(x).permute(0, 2, 3, 1).reshape(batch, num_tokens, -1)
            x = gelu(layer_with_batch_norm(self.pointwise, self.depthwise_norm, x))
        x = self.dropout(x)
        x = layer_with_batch_norm(self.reduce, self.reduce_norm, x)
        if self.final_activation:
            x = gelu(x)
        return torch.cat((cls_token, x), dim=1)


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
    """Encoder block: multi-head self-attention and LeFF, each a residual branch with optional LayerScale and
    drop-path, in "pre" (`x + f(LN(x))`) or "post" (`LN(x + f(x))`) order."""

    def __init__(self, config: CeiTConfig, drop_path_rate: float):
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

    def forward(self, hidden_states: torch.Tensor, grid_size: tuple[int, int], output_attentions: bool = False):
        x = hidden_states
        if self.pre_norm:
            attn, weights = self.attention(self.norm1(x), output_attentions)
            x = x + self.drop_path(self.layer_scale1(attn))
            x = x + self.drop_path(self.layer_scale2(self.leff(self.norm2(x), grid_size)))
        else:
            attn, weights = self.attention(x, output_attentions)
            x = self.norm1(x + self.drop_path(self.layer_scale1(attn)))
            x = self.norm2(x + self.drop_path(self.layer_scale2(self.leff(x, grid_size))))
        return x, weights


class CeiTLayerClassAttention(nn.Module):
    """LCA (paper Sec. 3.4): the class tokens of all encoder blocks, plus a learned layer-position embedding,
    form a short sequence; the last block's class token attends to all of them and goes through an MLP."""

    def __init__(self, config: CeiTConfig):
        super().__init__()
        dim = config.d_model
        self.pre_norm = config.lca_encoder_ln_order == "pre"
        self.layer_position_embeddings = (
            nn.Parameter(torch.zeros(1, config.num_encoder_blocks, dim)) if config.lca_layer_position_embedding else None
        )
        self.norm1 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.attention = CeiTClassAttention(config)
        self.layer_scale1 = _layer_scale(dim, config.lca_encoder_layer_scale)
        self.norm2 = nn.LayerNorm(dim, eps=config.layer_norm_eps)
        self.mlp = CeiTMLP(dim, config.lca_encoder_expansion_ratio * dim, config.lca_encoder_dropout)
        self.layer_scale2 = _layer_scale(dim, config.lca_encoder_layer_scale)
        self.drop_path = CeiTDropPath(config.lca_encoder_stodepth_prob)

    def forward(self, class_tokens: torch.Tensor, output_attentions: bool = False):
        if self.layer_position_embeddings is not None:
            class_tokens = class_tokens + self.layer_position_embeddings
        x = class_tokens[:, -1:]
        if self.pre_norm:
            normed = self.norm1(class_tokens)
            attn, weights = self.attention(normed[:, -1:], normed, output_attentions)
            x = x + self.drop_path(self.layer_scale1(attn))
            x = x + self.drop_path(self.layer_scale2(self.mlp(self.norm2(x))))
        else:
            attn, weights = self.attention(x, class_tokens, output_attentions)
            x = self.norm1(x + self.drop_path(self.layer_scale1(attn)))
            x = self.norm2(x + self.drop_path(self.layer_scale2(self.mlp(x))))
        return x[:, 0], weights


class CeiTEncoder(nn.Module):
    def __init__(self, config: CeiTConfig):
        super().__init__()
        self.layers = nn.ModuleList(CeiTLayer(config, rate) for rate in config.drop_path_rates())
        self.gradient_checkpointing = False

    def forward(self, hidden_states, grid_size, output_attentions=False, output_hidden_states=False):
        all_hidden_states = (hidden_states,) if output_hidden_states else None
        all_attentions = () if output_attentions else None
        class_tokens = []
        for layer in self.layers:
            hidden_states, weights = layer(hidden_states, grid_size=grid_size, output_attentions=output_attentions)
            class_tokens.append(hidden_states[:, 0])
            if output_hidden_states:
                all_hidden_states += (hidden_states,)
            if output_attentions:
                all_attentions += (weights,)
        return hidden_states, torch.stack(class_tokens, dim=1), all_hidden_states, all_attentions


class CeiTPreTrainedModel(PreTrainedModel):
    config_class = CeiTConfig
    config: CeiTConfig
    base_model_prefix = "ceit"
    main_input_name = "pixel_values"
    input_modalities = ("image",)
    supports_gradient_checkpointing = True
    _no_split_modules = ["CeiTEmbeddings", "CeiTLayer", "CeiTLayerClassAttention"]
    _supports_sdpa = True
    _can_compile_fullgraph = True
    # The loss ignores `num_items_in_batch`, so Trainer must scale gradient accumulation itself.
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module):
        """The official initialisation: truncated normal (std `initializer_range`) for the transformer's Linear
        layers, PyTorch's defaults for every convolution (LeFF's Linear layers are official 1x1 convolutions, the
        patch projection an official convolution), LayerNorm 1/0, zero layer-position embeddings."""
        std = self.config.initializer_range
        if isinstance(module, (nn.Conv2d, CeiTConvLinear)):
            _torch_default_init(module)
        elif isinstance(module, nn.Linear):
            init.trunc_normal_(module.weight, std=std)
            if module.bias is not None:
                init.zeros_(module.bias)
        elif isinstance(module, (nn.LayerNorm, nn.modules.batchnorm._BatchNorm)):
            init.ones_(module.weight)
            init.zeros_(module.bias)
            if getattr(module, "running_mean", None) is not None:
                init.zeros_(module.running_mean)
                init.ones_(module.running_var)
                init.zeros_(module.num_batches_tracked)
        elif isinstance(module, CeiTEmbeddings):
            init.trunc_normal_(module.cls_token, std=std)
            init.trunc_normal_(module.position_embeddings, std=std)
        elif isinstance(module, CeiTLayerClassAttention):
            if module.layer_position_embeddings is not None:
                init.zeros_(module.layer_position_embeddings)
        elif isinstance(module, CeiTLayerScale):
            init.constant_(module.lambda1, module.init_value)

    @classmethod
    def from_pretrained(cls, *args, strict: bool = True, **kwargs):
        """`PreTrainedModel.from_pretrained`, refusing a checkpoint that does not fit the model.

        transformers only warns about weights missing from the checkpoint (and initialises them randomly) or unknown
        to the model; here those, and weights of another shape, raise a `ValueError` naming them. The classifier may
        differ where the caller re-heads the model: `ignore_mismatched_sizes=True` (new classifier for another number
        of labels), a `CeiTModel` (or `num_labels=0`) loaded from a classification checkpoint, or a classifier put
        on a checkpoint saved by `CeiTModel`. Opt out with `strict=False`: transformers' own behaviour (a warning,
        random initialisation of what is missing). A damaged safetensors file raises an `OSError` naming it.
        """
        source = str(args[0] if args else kwargs.get("pretrained_model_name_or_path"))
        reheading = kwargs.get("ignore_mismatched_sizes", False)
        return_info = kwargs.pop("output_loading_info", False)
        if strict:  # size mismatches are reported below, by name
            kwargs["ignore_mismatched_sizes"] = True
        try:
            model, info = super().from_pretrained(*args, output_loading_info=True, **kwargs)
        except Exception as error:
            if type(error).__name__ != "SafetensorError":
                raise
            message = f"Cannot read the weights of {source!r}; the file is damaged or incomplete: {error}"
            raise OSError(message) from error
        if strict:
            has_head = any(name.startswith("classifier.") for name in model.state_dict())
            headless_checkpoint = "CeiTModel" in (model.config.architectures or [])
            problems = {
                "missing from the checkpoint": sorted(
                    k for k in info["missing_keys"] if not (k.startswith("classifier.") and headless_checkpoint)
                ),
                "not in the model": sorted(
                    k for k in info["unexpected_keys"] if not (k.startswith("classifier.") and not has_head)
                ),
                "of another shape": sorted(
                    f"{k} (checkpoint {tuple(old)}, model {tuple(new)})"
                    for k, old, new in info["mismatched_keys"]
                    if not (k.startswith("classifier.") and reheading)
                ),
                "not loaded": list(info["error_msgs"]),
            }
            found = describe_key_problems(problems)
            if found:
                new_head = any(key.startswith("classifier.") for key in problems["of another shape"])
                rehead = "ignore_mismatched_sizes=True gives it a new classifier; " if new_head else ""
                raise ValueError(
                    f"The checkpoint {source!r} does not fit {cls.__name__}: " + "; ".join(found) + f". {rehead}"
                    "strict=False loads it anyway (missing weights randomly initialised, unknown ones ignored)."
                )
        return (model, info) if return_info else model


def describe_key_problems(problems: dict[str, list[str]]) -> list[str]:
    """'N <kind>: [first keys] ...' for each non-empty list of state_dict keys, e.g. {"missing from the checkpoint":
    [...]}: how checkpoints that do not fit a model are reported (here and by the official-checkpoint converter)."""
    return [f"{len(keys)} {kind}: {keys[:8]}{' ...' * (len(keys) > 8)}" for kind, keys in problems.items() if keys]


def _torch_default_init(layer: nn.Module):
    """PyTorch's own `reset_parameters` of Linear/Conv layers, through transformers' init helpers (which skip
    weights loaded from a checkpoint)."""
    init.kaiming_uniform_(layer.weight, a=5**0.5)
    if layer.bias is not None:
        fan_in = layer.weight[0].numel()
        bound = 1 / fan_in**0.5
        init.uniform_(layer.bias, -bound, bound)


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

    def get_input_embeddings(self) -> nn.Module:
        return self.embeddings.patch_embeddings

    def _check_pixel_values(self, pixel_values, interpolate_pos_encoding: bool) -> tuple[int, int]:
        """Validates the input and returns its token grid."""
        if pixel_values is None:
            raise ValueError("You have to specify pixel_values.")
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.ndim != 4:
            shape = tuple(pixel_values.shape) if isinstance(pixel_values, torch.Tensor) else type(pixel_values).__name__
            raise ValueError(
                f"pixel_values must be a tensor of shape (batch_size, {self.config.in_channels}, height, width), "
                f"got {shape}."
            )
        if not pixel_values.is_floating_point():
            raise ValueError(
                f"pixel_values must be a floating-point tensor of normalised pixels, got dtype {pixel_values.dtype}. "
                "Integer images are not scaled silently: run them through the image processor (CeiTImageProcessor)."
            )
        batch, channels, height, width = pixel_values.shape
        if channels != self.config.in_channels:
            raise ValueError(
                f"pixel_values has {channels} channels but the model expects {self.config.in_channels} "
                f"(shape (batch_size, {self.config.in_channels}, height, width)); got shape {tuple(pixel_values.shape)}."
            )
        if batch == 0:
            raise ValueError("pixel_values is an empty batch (batch_size 0).")
        expected = self.config.image_hw
        if not interpolate_pos_encoding and (height, width) != expected:
            raise ValueError(
                f"Input image size ({height}x{width}) doesn't match the model ({expected[0]}x{expected[1]}). Resize "
                "the images, or pass interpolate_pos_encoding=True to resize the position embeddings."
            )
        return self.config.token_grid_size(height, width)

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CeiTModelOutput | tuple:
        r"""
        pixel_values (`torch.FloatTensor` of shape `(batch_size, num_channels, height, width)`):
            Normalised pixels, e.g. from [`CeiTImageProcessor`].
        interpolate_pos_encoding (`bool`, *optional*):
            Resize the position embeddings to the input's token grid, for inputs of another size than
            `config.image_size` (any size whose stem output tiles into whole patches).
        output_attentions (`bool`, *optional*):
            Return the attention probabilities of every encoder block and of the LCA (computed on the eager
            path for that call).
        output_hidden_states (`bool`, *optional*):
            Return the embeddings and the output of every encoder block.
        """
        output_attentions = self.config.output_attentions if output_attentions is None else output_attentions
        output_hidden_states = (
            self.config.output_hidden_states if output_hidden_states is None else output_hidden_states
        )
        return_dict = self.config.return_dict if return_dict is None else return_dict
        grid_size = self._check_pixel_values(pixel_values, bool(interpolate_pos_encoding))
        pixel_values = pixel_values.to(self.embeddings.cls_token.dtype)

        embeddings = self.embeddings(pixel_values, grid_size)
        last_hidden_state, class_tokens, hidden_states, attentions = self.encoder(
            embeddings, grid_size, output_attentions=output_attentions, output_hidden_states=output_hidden_states
        )
        pooled, lca_attentions = self.lca(class_tokens, output_attentions)
        output = CeiTModelOutput(
            last_hidden_state=last_hidden_state,
            pooler_output=self.layernorm(pooled),
            hidden_states=hidden_states,
            attentions=attentions,
            lca_attentions=lca_attentions,
        )
        return output if return_dict else output.to_tuple()


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


class CeiTForImageClassification(CeiTPreTrainedModel):
    def __init__(self, config: CeiTConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.ceit = CeiTModel(config)
        if config.num_labels == 0:
            self.classifier = nn.Identity()
        elif config.classifier_mlp_d is None:
            self.classifier = nn.Linear(config.d_model, config.num_labels)
        else:
            self.classifier = CeiTMLPHead(config)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        interpolate_pos_encoding: bool | None = None,
        output_attentions: bool | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> CeiTImageClassifierOutput | tuple:
        r"""
        labels (`torch.LongTensor` of shape `(batch_size,)`, *optional*):
            Class indices in `[0, config.num_labels)` for single-label classification, float targets
            `(batch_size, num_labels)` for multi-label, or floats for regression (`num_labels == 1`), as set by
            `config.problem_type`.
        """
        return_dict = self.config.return_dict if return_dict is None else return_dict
        outputs = self.ceit(
            pixel_values,
            interpolate_pos_encoding=interpolate_pos_encoding,
            output_attentions=output_attentions,
            output_hidden_states=output_hidden_states,
            return_dict=True,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels, logits, self.config)
        output = CeiTImageClassifierOutput(
            loss=loss,
            logits=logits,
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            lca_attentions=outputs.lca_attentions,
        )
        return output if return_dict else output.to_tuple()


__all__ = ["CeiTForImageClassification", "CeiTModel", "CeiTPreTrainedModel", "convert_sync_batchnorm"]
