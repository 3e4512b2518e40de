"""Fast, exact equivalents of the operations in the dense shortcuts (docs/architecture.md).

The architecture (``dsnet.models.networks``) says *what* is computed; this module says *how*, so that the
paper's equations stay readable there. Every kernel here is tested against the plain PyTorch
expression it replaces, values and gradients (tests/test_models.py), and its speed is measured
side by side in benchmarks/cpu_details.py.

* ``FoldedNorm`` / ``apply_norm``: N(y) kept as ``y * scale + shift`` while autograd records.
* ``GroupNormAffine``: GroupNorm without affine as that scale and shift, one autograd node.
* ``FoldedShortcutSum`` / ``add_shortcuts``: ``out += sum_i W_i * N(Y_i)`` in place.
* ``MeanPool``: DS2's strided 2x2 average pool as a depthwise convolution.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass(frozen=True)
class FoldedNorm:
    """N(y) kept as ``y * scale + shift`` (scale, shift: N x C x 1 x 1, at least float32), never materialised.

    GroupNorm without affine is a per-(sample, channel) affine map of y, so a weighted shortcut
    W * N(y) is ``(W * scale) * y + W * shift``: one multiply-add over y, and the shifts of all
    terms of a block sum to a single bias (§4.5 taken one step further: N is shared *and* folded).
    """

    y: Tensor
    scale: Tensor
    shift: Tensor


def apply_norm(norm: nn.Module, y: Tensor) -> FoldedNorm | Tensor:
    """N(y), computed once and shared by every later block.

    While autograd records (training) the GroupNorm family is kept in folded form: nothing the size
    of y is stored for backward, so a training step needs no more memory than ResNet's. Without
    autograd, PyTorch's fused GroupNorm materialises N(y) once: one kernel instead of several.
    """
    if not isinstance(norm, nn.GroupNorm):
        return norm(y)
    if not (torch.is_grad_enabled() and y.requires_grad):
        if torch.is_autocast_enabled(y.device.type):
            # In y's dtype: autocast's float32 policy for group_norm would copy y up and every
            # shortcut would then mix dtypes; the fused kernels accumulate in float32 anyway.
            with torch.autocast(y.device.type, enabled=False):
                return norm(y)
        return norm(y)
    return FoldedNorm(y, *GroupNormAffine.apply(y, norm.num_groups, norm.eps))


def per_channel(per_group: Tensor, channels: int) -> Tensor:
    """N x G group values repeated to N x C x 1 x 1, to broadcast over an N x C x H x W tensor."""
    n, groups = per_group.shape
    return per_group.repeat_interleave(channels // groups, dim=1).view(n, channels, 1, 1)


class GroupNormAffine(torch.autograd.Function):
    """GroupNorm without affine as ``N(y) = y * scale + shift``: per-channel scale = 1/std and
    shift = -mean/std of y's group (N x C x 1 x 1, at least float32, also under fp16 autocast).

    One autograd node instead of a dozen small ops (and their backwards: every small op is a kernel
    launch on a GPU). Hand-written backward: the gradient reaching y is ``a + b * y`` per group, two
    passes over y where autograd's sum + vector_norm backward adds divisions and masking (2.2-2.6x
    faster on the CPU, benchmarks/cpu_details.py).
    """

    @staticmethod
    def forward(ctx, y: Tensor, groups: int, eps: float) -> tuple[Tensor, Tensor]:
        n, channels = y.shape[:2]
        dtype = torch.promote_types(y.dtype, torch.float32)
        count = y[0].numel() // groups
        # Per-channel sum and sum of squares (plain reductions: several times faster than var_mean on
        # the CPU, any memory format, no temporaries), then per group.
        total = y.sum((2, 3), dtype=dtype).view(n, groups, -1).sum(2)
        squares = torch.linalg.vector_norm(y, dim=(2, 3), dtype=dtype).square().view(n, groups, -1).sum(2)
        mean = total / count
        rstd = ((squares / count - mean.square()).clamp_min(0) + eps).rsqrt()
        ctx.save_for_backward(y, mean, rstd)
        ctx.count = count
        return per_channel(rstd, channels), per_channel(-mean * rstd, channels)

    @staticmethod
    def backward(ctx, grad_scale: Tensor, grad_shift: Tensor) -> tuple[Tensor, None, None]:
        y, mean, rstd = ctx.saved_tensors
        n, groups = mean.shape
        grad_scale, grad_shift = (g.reshape(n, groups, -1).sum(2) for g in (grad_scale, grad_shift))
        grad_rstd = grad_scale - mean * grad_shift  # scale = rstd, shift = -mean * rstd
        grad_var = grad_rstd * -0.5 * rstd.pow(3)
        grad_mean = -rstd * grad_shift
        shift = (grad_mean - 2 * mean * grad_var) / ctx.count  # d loss / d y = shift + slope * y
        slope = 2 * grad_var / ctx.count
        c, dtype = y.shape[1], y.dtype
        return (y * per_channel(slope, c).to(dtype)).add_(per_channel(shift, c).to(dtype)), None, None


class FoldedShortcutSum(torch.autograd.Function):
    """``out += bias + sum_i scales[i] * ys[i]`` in place (scales: terms x N x C x 1 x 1, bias:
    N x C x 1 x 1).

    The sum runs in out's dtype; the small factors' gradients are summed in float32 and stay there,
    so under fp16 autocast the shortcut weights' gradients are never rounded to fp16. Hand-written
    backward: one product per input gradient, where autograd's addcmul backward makes extra
    broadcast copies (1.3x faster per term on the CPU, benchmarks/cpu_details.py).
    """

    @staticmethod
    def forward(ctx, out: Tensor, bias: Tensor, scales: Tensor, *ys: Tensor) -> Tensor:
        scales = scales.to(out.dtype)
        for scale, y in zip(scales, ys):
            out.addcmul_(scale, y)
        out.add_(bias.to(out.dtype))
        ctx.mark_dirty(out)
        ctx.save_for_backward(scales, *ys)
        return out  # the dirty input itself, as torch.compile requires

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, ...]:
        def spatial_sum(t: Tensor) -> Tensor:  # autograd casts it to the input's dtype if that differs
            return t.sum((2, 3), keepdim=True, dtype=torch.promote_types(t.dtype, torch.float32))

        scales, *ys = ctx.saved_tensors
        grad_scales = stack([spatial_sum(grad * y) for y in ys])
        return grad, spatial_sum(grad), grad_scales, *(grad * scale for scale in scales)


def stack(tensors: list[Tensor]) -> Tensor:
    """torch.stack, without a copy for one tensor (DS2's inner shortcut has one term)."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def add_shortcuts(out: Tensor, weight: nn.Parameter | None, history: list[FoldedNorm | Tensor]) -> Tensor:
    """out += sum_i W_i * N(Y_i), in place (no temporaries the size of an activation).

    Every pass over an activation runs in out's dtype, also under autocast (mixed operands would
    copy the activation on the CPU). Folded terms (all terms of a stage are alike) are handled
    together: a few small ops per block, not per term.
    """
    if history and isinstance(history[0], FoldedNorm):
        scales, shifts = stack([n.scale for n in history]), stack([n.shift for n in history])
        if weight is not None:
            w = weight.unsqueeze(1)  # terms x 1 x C x 1 x 1, against terms x N x C x 1 x 1
            scales, shifts = scales * w, shifts * w
        bias = shifts[0] if len(history) == 1 else shifts.sum(0)
        return FoldedShortcutSum.apply(out, bias, scales, *(n.y for n in history))
    weights = [None] * len(history) if weight is None else weight.unbind(0)
    for w, n in zip(weights, history):
        out.add_(n) if w is None else out.addcmul_(w.to(out.dtype), n)
    return out


class MeanPool(nn.Module):
    """``AvgPool2d(stride, stride, ceil_mode=True)``, in eager mode a depthwise convolution where the
    windows tile the input exactly: PyTorch's CPU average pool takes 2-3x as long (benchmarks/cpu_details.py)."""

    def __init__(self, channels: int, stride: int) -> None:
        super().__init__()
        self.stride = stride
        self.register_buffer("kernel", torch.full((channels, 1, stride, stride), 1 / stride**2), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        # Partial windows at the border; and compiled, where Inductor fuses a pool into the kernels
        # around it but calls a convolution as a library kernel of its own.
        if x.shape[-2] % self.stride or x.shape[-1] % self.stride or torch.compiler.is_compiling():
            return nn.functional.avg_pool2d(x, self.stride, self.stride, ceil_mode=True)
        return nn.functional.conv2d(x, self.kernel.to(x.dtype), stride=self.stride, groups=x.shape[1])
