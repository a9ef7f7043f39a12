"""Lowering rules for 2-d convolution and average pooling on secret data: both are a gather of
patches (local moves: zero padding, then one index by a public table) followed by a linear map —
a matmul with the owner's kernel for a convolution, a sum and a public 1/k^2 for a pooling.

Only the plain forms are taken (2-d, groups 1, no transposed convolution, no ceil_mode); anything
else is an error that names what is not supported.
"""
from __future__ import annotations

import math

import torch

from ..core.errors import UserError
from .lower_rules import Secret, on_add

aten = torch.ops.aten


def _pair(v) -> tuple[int, int]:
    v = list(v) if isinstance(v, (list, tuple)) else [v]
    return (v[0], v[0]) if len(v) == 1 else (v[0], v[1])


def _patches(lw, x: Secret, kernel, stride, padding, dilation) -> tuple[int, tuple[int, int]]:
    """x (N, C, H, W) -> node of shape (N, C, Ho * Wo, kh * kw): every window's entries, row-major
    within the window; and (Ho, Wo)."""
    n, c, h, w = lw.b.shape(lw.plain(x, "a convolution"))
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = (_pair(v) for v in (kernel, stride, padding, dilation))
    hp, wp = h + 2 * ph, w + 2 * pw
    ho, wo = (hp - dh * (kh - 1) - 1) // sh + 1, (wp - dw * (kw - 1) - 1) // sw + 1
    if ho <= 0 or wo <= 0:
        raise UserError(f"a {kh}x{kw} window does not fit a {h}x{w} input")
    x_id = x.id
    if ph or pw:
        x_id = lw.b.move("aten.constant_pad_nd.default", [x_id], ["$0", [pw, pw, ph, ph], 0.0])
    flat = lw.b.move("aten.view.default", [x_id], ["$0", [n, c, hp * wp]])
    rows = (torch.arange(ho) * sh)[:, None, None, None] + (torch.arange(kh) * dh)[None, None, :, None]
    cols = (torch.arange(wo) * sw)[None, :, None, None] + (torch.arange(kw) * dw)[None, None, None, :]
    index = (rows * wp + cols).reshape(ho * wo, kh * kw)
    return lw.b.move("aten.index.Tensor", [flat], ["$0", [None, None, "@" + lw.b.const(index, hint="idx")]]), (ho, wo)


def on_convolution(lw, node, x, weight, bias, stride, padding, dilation, transposed, output_padding, groups) -> Secret:
    """x (N, C, H, W) * kernel (O, C, kh, kw): patches (N, L, C kh kw) @ kernel (C kh kw, O), plus bias."""
    if not isinstance(x, Secret) or not isinstance(weight, Secret):
        raise UserError(f"aten.convolution needs a secret input and the owner's kernel (node {node.name})")
    if transposed or groups != 1 or len(lw.b.shape(x.id)) != 4:
        raise UserError(f"aten.convolution: only 2-d, groups=1, non-transposed convolutions are supported "
                        f"(node {node.name})")
    o, c, kh, kw = lw.b.shape(weight.id)
    patches, (ho, wo) = _patches(lw, x, (kh, kw), stride, padding, dilation)
    n = lw.b.shape(x.id)[0]
    rows = lw.b.move("aten.permute.default", [patches], ["$0", [0, 2, 1, 3]])  # (N, L, C, kh kw)
    rows = lw.b.move("aten.reshape.default", [rows], ["$0", [n, ho * wo, c * kh * kw]])
    kernel = lw.b.move("aten.view.default", [weight.id], ["$0", [o, c * kh * kw]])
    kernel = lw.b.move("aten.permute.default", [kernel], ["$0", [1, 0]])
    out = Secret(lw.b.matmul(rows, kernel))  # (N, L, O)
    if bias is not None:
        out = on_add(lw, node, out, bias)
    out_id = lw.b.move("aten.permute.default", [out.id], ["$0", [0, 2, 1]])
    return Secret(lw.b.move("aten.reshape.default", [out_id], ["$0", [n, o, ho, wo]]))


def on_avg_pool2d(lw, node, x, kernel, stride=(), padding=0, ceil_mode=False, count_include_pad=True,
                  divisor_override=None) -> Secret:
    """The mean of each window: a sum of its entries times a public 1 / divisor."""
    kh, kw = _pair(kernel)
    ph, pw = _pair(padding)
    if ceil_mode or (not count_include_pad and (ph or pw)):
        raise UserError(f"aten.avg_pool2d with ceil_mode or count_include_pad=False is not supported (node {node.name})")
    patches, (ho, wo) = _patches(lw, x, (kh, kw), stride or (kh, kw), (ph, pw), 1)
    n, c = lw.b.shape(x.id)[:2]
    total = lw.b.sum(patches, [3], False)
    mean = lw.b.mul_public(total, 1.0 / (divisor_override or math.prod((kh, kw))))
    return Secret(lw.b.move("aten.view.default", [mean], ["$0", [n, c, ho, wo]]))


CONV_RULES = {aten.convolution.default: on_convolution, aten.avg_pool2d.default: on_avg_pool2d}
