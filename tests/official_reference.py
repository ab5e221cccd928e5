"""An independent, functional CeiT forward that reads an official-layout state_dict directly.

It follows the official structure as described in shared/reference/ceit_architecture.md (NCHW
convolutions, BatchNorm2d, 1x1 convolutions in LeFF, the LCA query from the first D rows of qkv), written
plainly and separately from `ceit_hf`, so that the package's token-layout implementation and its key mapping
can be checked against it.
"""

import torch
import torch.nn.functional as F


def random_official_state_dict(width=192, heads=3, depth=12, image_size=224, num_classes=1000, seed=0):
    """A state_dict with the official keys and shapes, random values (BN statistics included)."""
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=0.05, offset=0.0):
        return torch.randn(*shape, generator=g) * scale + offset

    def bn(prefix, channels):
        return {
            f"{prefix}.weight": rnd(channels, offset=1.0),
            f"{prefix}.bias": rnd(channels),
            f"{prefix}.running_mean": rnd(channels),
            f"{prefix}.running_var": torch.rand(channels, generator=g) + 0.5,
            f"{prefix}.num_batches_tracked": torch.tensor(100),
        }

    def ln(prefix, channels):
        return {f"{prefix}.weight": rnd(channels, offset=1.0), f"{prefix}.bias": rnd(channels)}

    def linear(prefix, out_f, in_f):
        return {f"{prefix}.weight": rnd(out_f, in_f), f"{prefix}.bias": rnd(out_f)}

    d, h = width, 4 * width
    tokens = (image_size // 16) ** 2
    sd = {
        "cls_token": rnd(1, 1, d, scale=0.02),
        "pos_embed": rnd(1, tokens + 1, d, scale=0.02),
        "pos_layer_embed": rnd(1, depth, d, scale=0.02),
        "i2t.backbone.conv.weight": rnd(64, 3, 7, 7),
        **bn("i2t.backbone.bn", 64),
        "i2t.proj.weight": rnd(d, 64, 4, 4),
        "i2t.proj.bias": rnd(d),
    }
    for i in range(depth):
        p = f"blocks.{i}"
        sd.update(ln(f"{p}.norm1", d))
        sd.update(ln(f"{p}.norm2", d))
        sd.update(linear(f"{p}.attn.qkv", 3 * d, d))
        sd.update(linear(f"{p}.attn.proj", d, d))
        sd.update({f"{p}.leff.conv1.weight": rnd(h, d, 1, 1), f"{p}.leff.conv1.bias": rnd(h)})
        sd.update({f"{p}.leff.conv2.weight": rnd(h, 1, 3, 3, scale=0.2), f"{p}.leff.conv2.bias": rnd(h)})
        sd.update({f"{p}.leff.conv3.weight": rnd(d, h, 1, 1), f"{p}.leff.conv3.bias": rnd(d)})
        for j, channels in ((1, h), (2, h), (3, d)):
            sd.update(bn(f"{p}.leff.bn{j}", channels))
    sd.update(ln("lca.norm1", d))
    sd.update(ln("lca.norm2", d))
    sd.update(linear("lca.attn.qkv", 3 * d, d))
    sd.update(linear("lca.attn.proj", d, d))
    sd.update(linear("lca.feedforward.fc1", h, d))
    sd.update(linear("lca.feedforward.fc2", d, h))
    sd.update(ln("norm", d))
    sd.update(linear("head", num_classes, d))
    return sd


def _bn(x, sd, prefix):
    return F.batch_norm(
        x,
        sd[f"{prefix}.running_mean"],
        sd[f"{prefix}.running_var"],
        sd[f"{prefix}.weight"],
        sd[f"{prefix}.bias"],
        False,
        0.0,
        1e-5,
    )


def _ln(x, sd, prefix):
    return F.layer_norm(x, x.shape[-1:], sd[f"{prefix}.weight"], sd[f"{prefix}.bias"], 1e-6)


def _mha(q_in, kv_in, sd, prefix, heads):
    d = q_in.shape[-1]
    w, b = sd[f"{prefix}.qkv.weight"], sd[f"{prefix}.qkv.bias"]
    q = F.linear(q_in, w[:d], b[:d])
    k = F.linear(kv_in, w[d : 2 * d], b[d : 2 * d])
    v = F.linear(kv_in, w[2 * d :], b[2 * d :])

    def split(t):
        return t.reshape(t.shape[0], t.shape[1], heads, d // heads).transpose(1, 2)

    q, k, v = split(q), split(k), split(v)
    attn = (q @ k.transpose(-1, -2) * (d // heads) ** -0.5).softmax(-1)
    out = (attn @ v).transpose(1, 2).reshape(q_in.shape[0], q_in.shape[1], d)
    return F.linear(out, sd[f"{prefix}.proj.weight"], sd[f"{prefix}.proj.bias"])


def official_forward(sd, pixel_values, heads):
    """Eval-mode logits of the official CeiT for an official-layout state_dict."""
    x = F.conv2d(pixel_values, sd["i2t.backbone.conv.weight"], None, stride=2, padding=3)
    x = F.max_pool2d(_bn(x, sd, "i2t.backbone.bn"), 3, 2, 1)
    x = F.conv2d(x, sd["i2t.proj.weight"], sd["i2t.proj.bias"], stride=4)
    b, d, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)
    x = torch.cat([sd["cls_token"].expand(b, -1, -1), x], dim=1) + sd["pos_embed"]
    depth = sd["pos_layer_embed"].shape[1]
    cls_tokens = []
    for i in range(depth):
        p = f"blocks.{i}"
        y = _ln(x, sd, f"{p}.norm1")
        x = x + _mha(y, y, sd, f"{p}.attn", heads)
        y = _ln(x, sd, f"{p}.norm2")
        cls, grid = y[:, :1], y[:, 1:].transpose(1, 2).reshape(b, d, gh, gw)
        grid = F.gelu(
            _bn(F.conv2d(grid, sd[f"{p}.leff.conv1.weight"], sd[f"{p}.leff.conv1.bias"]), sd, f"{p}.leff.bn1")
        )
        grid = F.conv2d(
            grid, sd[f"{p}.leff.conv2.weight"], sd[f"{p}.leff.conv2.bias"], padding=1, groups=grid.shape[1]
        )
        grid = F.gelu(_bn(grid, sd, f"{p}.leff.bn2"))
        grid = _bn(F.conv2d(grid, sd[f"{p}.leff.conv3.weight"], sd[f"{p}.leff.conv3.bias"]), sd, f"{p}.leff.bn3")
        x = x + torch.cat([cls, grid.flatten(2).transpose(1, 2)], dim=1)
        cls_tokens.append(x[:, 0])
    t = torch.stack(cls_tokens, dim=1) + sd["pos_layer_embed"]
    y = _ln(t, sd, "lca.norm1")
    z = t[:, -1:] + _mha(y[:, -1:], y, sd, "lca.attn", heads)
    hidden = F.gelu(
        F.linear(_ln(z, sd, "lca.norm2"), sd["lca.feedforward.fc1.weight"], sd["lca.feedforward.fc1.bias"])
    )
    z = z + F.linear(hidden, sd["lca.feedforward.fc2.weight"], sd["lca.feedforward.fc2.bias"])
    z = _ln(z[:, 0], sd, "norm")
    return F.linear(z, sd["head.weight"], sd["head.bias"])
