# Copyright 2026 The ceit_hf authors. Licensed under the Apache License, Version 2.0.
"""`optimize_for_inference(model)`: CeiT's deployment form, an explicit call that returns a new eval-only model.

The same function as the plain model, cheaper: every BatchNorm folded into the layer before it; the last block of a
classifier computing only its class token (about 6% of CeiT-T's MACs); on CPU, LeFF's depthwise convolution and GELU
as one oneDNN kernel and channels-last convolutions (plain ops under `torch.compile`/`torch.export`). Not for training
(it refuses `train()`), unmerged PEFT adapters or hooks on the folded layers. Its `last_hidden_state` holds only the
class token, and `hidden_states` lack the last block.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.nn import functional as F
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from .modeling_ceit import CeiTForImageClassification, CeiTLayer, CeiTLeFF, CeiTModel


def _fused_conv_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_convolution_pointwise")


def _eager_cpu_float32(x: torch.Tensor) -> bool:
    """Whether `x` may take the CPU-only kernels: eager mode (not compiling, exporting or tracing), CPU, fp32."""
    exporting = getattr(torch.compiler, "is_exporting", lambda: False)()  # torch >= 2.7
    eager = not (torch.compiler.is_compiling() or exporting or torch.jit.is_tracing())
    return eager and x.device.type == "cpu" and x.dtype == torch.float32 and not x.requires_grad


def _refuse_training(self: nn.Module, mode: bool = True) -> nn.Module:
    if mode:
        raise RuntimeError(
            "This model comes from ceit_hf.optimize_for_inference and is eval-only (its BatchNorms are folded into "
            "fixed weights). Train the original model instead."
        )
    return nn.Module.train(self, False)


def _refuse_saving(self, *args, **kwargs):
    raise RuntimeError(
        "This model comes from ceit_hf.optimize_for_inference: its BatchNorms are folded and its last block replaced, "
        "so its weights do not fit a CeiT checkpoint. Save the original model; optimize again after loading it."
    )


class _EvalOnly(nn.Module):
    train = _refuse_training


def _fold(layer: nn.Module, norm: nn.Module) -> nn.Module:
    """`layer` (Linear or Conv2d) with the eval-mode BatchNorm `norm` folded in (`layer` itself for no BatchNorm)."""
    if isinstance(norm, nn.Identity):
        return layer
    fold = fuse_linear_bn_eval if isinstance(layer, nn.Linear) else fuse_conv_bn_eval
    return fold(layer.eval(), norm.eval())


class CeiTInferenceLeFF(_EvalOnly):
    """LeFF with its BatchNorms folded: expand + GELU, depthwise (+ pointwise) + GELU, reduce (+ GELU)."""

    def __init__(self, leff: CeiTLeFF, fused_kernels: bool):
        super().__init__()
        self.expand = _fold(leff.expand, leff.expand_norm)
        if isinstance(leff.pointwise, nn.Identity):
            self.depthwise, self.pointwise = _fold(leff.depthwise, leff.depthwise_norm), None
        else:
            self.depthwise, self.pointwise = leff.depthwise, _fold(leff.pointwise, leff.depthwise_norm)
        self.reduce = _fold(leff.reduce, leff.reduce_norm)
        self.final_activation = not isinstance(leff.final_act, nn.Identity)
        self.fused_kernels = fused_kernels and _fused_conv_available()

    def forward(self, hidden_states: torch.Tensor, grid_size: tuple[int, int]) -> torch.Tensor:
        fast = _eager_cpu_float32(hidden_states)
        gelu = torch.ops.aten.gelu_ if fast else F.gelu  # in place: nothing else reads the pre-activation
        class_token, tokens = hidden_states[:, :1], hidden_states[:, 1:].contiguous()  # one GEMM, not a batched one
        batch, num_tokens, _ = tokens.shape
        x = gelu(self.expand(tokens))
        x = x.view(batch, *grid_size, -1).permute(0, 3, 1, 2)  # a channels-last NCHW view, no copy
        if self.pointwise is None and fast and self.fused_kernels:
            conv = self.depthwise
            geometry = list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups
            x = torch.ops.mkldnn._convolution_pointwise(x, conv.weight, conv.bias, *geometry, "gelu", [], "none")
            x = x.permute(0, 2, 3, 1).reshape(batch, num_tokens, -1)
        else:
            x = self.depthwise(x).permute(0, 2, 3, 1).reshape(batch, num_tokens, -1)
            x = gelu(x if self.pointwise is None else self.pointwise(x))
        x = gelu(self.reduce(x)) if self.final_activation else self.reduce(x)
        return torch.cat((class_token, x), dim=1)


class CeiTInferenceClassTokenLayer(_EvalOnly):
    """The last encoder block, computing only its class token's attention row (LeFF passes the class token through)."""

    def __init__(self, layer: CeiTLayer):
        super().__init__()
        attention = layer.attention
        self.pre_norm = layer.pre_norm
        self.norm1, self.norm2 = layer.norm1, layer.norm2
        self.layer_scale1, self.layer_scale2 = layer.layer_scale1, layer.layer_scale2
        self.num_heads, self.head_dim, self.scaling = attention.num_heads, attention.head_dim, attention.scaling
        self.qkv, self.proj = attention.qkv, attention.proj

    def attend(self, hidden_states: torch.Tensor) -> torch.Tensor:
        batch, length, dim = hidden_states.shape
        # The class token's query and every token's key and value: row blocks [q | k, v] of the fused projection.
        weight, bias = self.qkv.weight, self.qkv.bias
        query_bias, key_value_bias = (None, None) if bias is None else (bias[:dim], bias[dim:])
        query = F.linear(hidden_states[:, :1], weight[:dim], query_bias)
        query = query.view(batch, 1, self.num_heads, self.head_dim).transpose(1, 2)
        key_value = F.linear(hidden_states, weight[dim:], key_value_bias)
        key_value = key_value.view(batch, length, 2, self.num_heads, self.head_dim)
        key, value = key_value.permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(query, key, value, scale=self.scaling)
        return self.proj(out.transpose(1, 2).reshape(batch, 1, dim))

    def forward(self, x: torch.Tensor, grid_size: tuple[int, int], **kwargs) -> torch.Tensor:
        if self.pre_norm:
            cls = x[:, :1] + self.layer_scale1(self.attend(self.norm1(x)))
            return cls + self.layer_scale2(self.norm2(cls))
        cls = self.norm1(x[:, :1] + self.layer_scale1(self.attend(x)))
        return self.norm2(cls + self.layer_scale2(cls))


def optimize_for_inference(
    model: CeiTForImageClassification | CeiTModel,
    class_token_only: bool = True,
    fused_kernels: bool = True,
    channels_last: bool = True,
    dtype: torch.dtype | None = None,
):
    """An eval-only copy of `model` (left untouched) with the same logits and pooled output (within 1e-5 in fp32):
    BatchNorms folded (in fp32, then cast to `dtype`, default the model's), the last block computing only its class
    token (`class_token_only`), fused CPU kernels (`fused_kernels`), channels-last convolutions (`channels_last`). It
    works under `torch.compile(fullgraph=True)`, `torch.export` and ONNX export."""
    if not isinstance(model, (CeiTForImageClassification, CeiTModel)):
        raise TypeError(
            f"optimize_for_inference takes a CeiTForImageClassification or CeiTModel, got {type(model).__name__}."
        )
    adapters = [name for name, m in model.named_modules() if hasattr(m, "lora_A") or hasattr(m, "base_layer")]
    if adapters:
        raise ValueError(
            f"The model holds unmerged PEFT adapters ({adapters[0]}, ...): merge them first "
            "(`model = peft_model.merge_and_unload()`), then optimize."
        )
    if any(isinstance(m, _EvalOnly) for m in model.modules()):
        raise ValueError("The model is already optimized for inference.")
    dtype = dtype or model.dtype
    optimized = copy.deepcopy(model).eval().float()
    base = optimized.ceit if isinstance(optimized, CeiTForImageClassification) else optimized
    stem = base.embeddings.image_to_tokens
    stem.conv, stem.norm = _fold(stem.conv, stem.norm), nn.Identity()
    layers = base.encoder.layers
    for layer in layers:
        layer.leff = CeiTInferenceLeFF(layer.leff, fused_kernels)
    if class_token_only:
        layers[-1] = CeiTInferenceClassTokenLayer(layers[-1])
    if channels_last:  # fastest for oneDNN/cuDNN; the patch projection's output then flattens without a copy
        for conv in (stem.conv, base.embeddings.patch_embeddings.projection):
            if isinstance(conv, nn.Conv2d):
                conv.to(memory_format=torch.channels_last)
    optimized.to(dtype).requires_grad_(False)
    optimized.train = _refuse_training.__get__(optimized)  # the whole model refuses train(), not just its parts
    optimized.save_pretrained = optimized.push_to_hub = _refuse_saving.__get__(optimized)
    return optimized


def optimize_if_ceit(model: nn.Module, dtype: torch.dtype | None = None) -> nn.Module:
    """`optimize_for_inference(model)` for an installed CeiT in eval mode, any other model unchanged (evaluation and
    export scripts take any image classifier, e.g. a DeiT or a CeiT loaded as remote code)."""
    if isinstance(model, (CeiTForImageClassification, CeiTModel)) and not model.training:
        return optimize_for_inference(model, dtype=dtype)
    return model


__all__ = ["optimize_for_inference", "optimize_if_ceit"]
