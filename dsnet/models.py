"""ResNet, DSNet and DS2Net as one parameterised network (paper §3.3, §4.5; docs/architecture.md).

Module names are torchvision's (``conv1``, ``bn1``, ``layer1..4``, ``fc``; inside a block
``conv1/bn1/conv2/bn2/conv3/bn3/downsample``), so a torchvision ResNet50 state dict loads into
``resnet50`` unchanged and into ``dsnet50``/``ds2net50`` with only the new shortcut tensors missing.

Dense weighted normalised shortcut, variant (b) (Eq. 12), inside each stage::

    Y_0 = ReLU(X_0 + P(Y_prev))                        projection/identity shortcut kept
    Y_l = ReLU(X_l + sum_{i<l} W_l^i * N(Y_i)),  l>=1  no identity shortcut anywhere else

Choices the paper leaves open (documented here, tested in tests/test_models.py):

* ``W`` starts at 1 for every term, so an untrained weighted model equals the "no weight" ablation.
* ``N`` is computed once per ``Y_i`` and shared by all later blocks of the stage (§4.5); the last
  block of a stage is never normalised because nothing in the stage reads it.
* GroupNorm uses ``gcd(32, C)`` groups, so narrow widths (C < 32 at 0.25x) still work.
* DS2's inner shortcut is ``b = ReLU(bn2(conv2(a)) + w * N(a))``: the ReLU sits after the sum,
  like the outer shortcut. Where ``conv2`` has stride 2, ``ds2_strided`` picks "pool" (2x2 average
  pool of ``N(a)``, the default) or "skip" (no inner shortcut in that block).
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal, Sequence

import torch
from torch import Tensor, nn

from .registry import register_model

Shortcut = Literal["identity", "dense", "dense_a", "dense_identity"]
NormKind = Literal["group", "layer", "instance", "batch", "none"]
WeightKind = Literal["channel", "scalar", "none"]

BLOCKS_BY_DEPTH = {26: (2, 2, 2, 2), 38: (3, 3, 3, 3), 50: (3, 4, 6, 3), 77: (3, 4, 15, 3), 101: (3, 4, 23, 3)}


@dataclass(frozen=True)
class ShortcutSpec:
    """How the shortcuts of a network are built (the ablation axes of Table 1)."""

    kind: Shortcut = "identity"
    norm: NormKind = "group"
    weight: WeightKind = "channel"
    inner: bool = False  # DS2: weighted normalised shortcut around every 3x3 conv
    ds2_strided: Literal["pool", "skip"] = "pool"


def shortcut_norm(kind: NormKind, channels: int) -> nn.Module:
    """A parameter-free normalisation N (no affine transform, paper §3.3)."""
    if kind == "group":
        return nn.GroupNorm(math.gcd(32, channels), channels, affine=False)
    if kind == "layer":
        return nn.GroupNorm(1, channels, affine=False)
    if kind == "instance":
        return nn.GroupNorm(channels, channels, affine=False)
    if kind == "batch":
        return nn.BatchNorm2d(channels, affine=False)
    if kind == "none":
        return nn.Identity()
    raise ValueError(f"unknown norm {kind!r}; choose group, layer, instance, batch or none")


def shortcut_weight(kind: WeightKind, terms: int, channels: int) -> nn.Parameter | None:
    """Learnable weights for ``terms`` incoming shortcuts, shape (terms, C, 1, 1); init 1."""
    if kind == "none":
        return None
    size = channels if kind == "channel" else 1
    if kind not in ("channel", "scalar"):
        raise ValueError(f"unknown weight {kind!r}; choose channel, scalar or none")
    return nn.Parameter(torch.ones(terms, size, 1, 1))


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


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck; ``residual`` gives X (bn3 output, before any shortcut)."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None,
                 groups: int, base_width: int, spec: ShortcutSpec, dense_terms: int) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(inplanes, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, groups=groups, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride
        self.inner_norm: nn.Module | None = None
        self.inner_weight: nn.Parameter | None = None
        self.inner_pool: MeanPool | None = None
        if spec.inner and not (stride > 1 and spec.ds2_strided == "skip"):
            self.inner_norm = shortcut_norm(spec.norm, width)
            self.inner_weight = shortcut_weight(spec.weight, 1, width)
            if stride > 1:
                self.inner_pool = MeanPool(width, stride)
        # Dense shortcuts into this block: W_l^i for i < l, stored with the block that reads them.
        self.dense_weight = shortcut_weight(spec.weight, dense_terms, out_channels) if dense_terms else None

    def residual(self, x: Tensor) -> Tensor:
        a = self.relu(self.bn1(self.conv1(x)))
        b = self.bn2(self.conv2(a))
        if self.inner_norm is not None:
            n = normalized(self.inner_norm, a)
            if self.inner_pool is not None:  # average pooling commutes with a per-channel affine map
                n = Normalized(self.inner_pool(n.y), n.scale, n.shift) if isinstance(n, Normalized) else self.inner_pool(n)
            b = add_dense_shortcuts(b, self.inner_weight, [n])
        return self.bn3(self.conv3(self.relu(b)))

    def forward(self, x: Tensor) -> Tensor:
        """Block with its own identity/projection shortcut (ResNet, and block 0 of every stage)."""
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(self.residual(x).add_(identity))  # in place, as torchvision's


class Stage(nn.Module):
    """One stage (``layerK``): block 0 keeps its shortcut, later blocks take the dense ones.

    Blocks are children "0", "1", ... as in torchvision's ``nn.Sequential`` stages.
    """

    def __init__(self, blocks: Sequence[Bottleneck], spec: ShortcutSpec) -> None:
        super().__init__()
        for i, block in enumerate(blocks):
            self.add_module(str(i), block)
        self.blocks = list(blocks)  # plain list: not registered twice
        self.kind = spec.kind
        if spec.kind in ("dense", "dense_a"):
            channels = blocks[0].bn3.num_features
            # N of every block output that a later block reads (all but the last).
            self.norms = nn.ModuleList(shortcut_norm(spec.norm, channels) for _ in blocks[:-1])

    def forward(self, x: Tensor) -> Tensor:
        if self.kind == "identity":
            for block in self.blocks:
                x = block(x)
            return x
        first = self.blocks[0]
        if self.kind == "dense_a":  # variant (a): the dense terms read N(X_i), so X_i stays intact
            x_0 = first.residual(x)
            y = torch.relu(x_0 + (x if first.downsample is None else first.downsample(x)))
            history = [normalized(self.norms[0], x_0)]
        else:
            y = first(x)
            history = [y if self.kind == "dense_identity" else normalized(self.norms[0], y)]
        last = len(self.blocks) - 1
        for l in range(1, last + 1):
            block = self.blocks[l]
            x_l = block.residual(y)
            out = x_l.clone() if self.kind == "dense_a" else x_l
            y = torch.relu_(add_dense_shortcuts(out, block.dense_weight, history))
            if l < last:
                source = x_l if self.kind == "dense_a" else y
                history.append(source if self.kind == "dense_identity" else normalized(self.norms[l], source))
        return y

    def __getitem__(self, index: int) -> Bottleneck:
        return self.blocks[index]

    def __len__(self) -> int:
        return len(self.blocks)


@dataclass(frozen=True)
class Normalized:
    """N(y) kept as ``y * scale + shift`` (scale, shift: N x C x 1 x 1, at least float32), never materialised.

    GroupNorm without affine is a per-(sample, channel) affine map of y, so a weighted shortcut
    W * N(y) is ``(W * scale) * y + W * shift``: one multiply-add over y, and the shifts of all
    terms of a block sum to a single bias (§4.5 taken one step further: N is shared *and* folded).
    """

    y: Tensor
    scale: Tensor
    shift: Tensor


def normalized(norm: nn.Module, y: Tensor) -> Normalized | Tensor:
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
    return Normalized(y, *_GroupAffine.apply(y, norm.num_groups, norm.eps))


def _per_channel(per_group: Tensor, channels: int) -> Tensor:
    """N x G group values repeated to N x C x 1 x 1, to broadcast over an N x C x H x W tensor."""
    n, groups = per_group.shape
    return per_group.repeat_interleave(channels // groups, dim=1).view(n, channels, 1, 1)


class _GroupAffine(torch.autograd.Function):
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
        return _per_channel(rstd, channels), _per_channel(-mean * rstd, channels)

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
        return (y * _per_channel(slope, c).to(dtype)).add_(_per_channel(shift, c).to(dtype)), None, None


class _FoldedShortcuts(torch.autograd.Function):
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
        grad_scales = _stack([spatial_sum(grad * y) for y in ys])
        return grad, spatial_sum(grad), grad_scales, *(grad * scale for scale in scales)


def _stack(tensors: list[Tensor]) -> Tensor:
    """torch.stack, without a copy for one tensor (DS2's inner shortcut has one term)."""
    return tensors[0].unsqueeze(0) if len(tensors) == 1 else torch.stack(tensors)


def add_dense_shortcuts(out: Tensor, weight: nn.Parameter | None, history: list[Normalized | Tensor]) -> Tensor:
    """out += sum_i W_i * N(Y_i), in place (no temporaries the size of an activation).

    Every pass over an activation runs in out's dtype, also under autocast (mixed operands would
    copy the activation on the CPU). Folded terms (all terms of a stage are alike) are handled
    together: a few small ops per block, not per term.
    """
    if history and isinstance(history[0], Normalized):
        scales, shifts = _stack([n.scale for n in history]), _stack([n.shift for n in history])
        if weight is not None:
            w = weight.unsqueeze(1)  # terms x 1 x C x 1 x 1, against terms x N x C x 1 x 1
            scales, shifts = scales * w, shifts * w
        bias = shifts[0] if len(history) == 1 else shifts.sum(0)
        return _FoldedShortcuts.apply(out, bias, scales, *(n.y for n in history))
    weights = [None] * len(history) if weight is None else weight.unbind(0)
    for w, n in zip(weights, history):
        out.add_(n) if w is None else out.addcmul_(w.to(out.dtype), n)
    return out


class DSNet(nn.Module):
    """ResNet / DSNet / DS2Net with torchvision's module names (one class for the whole family)."""

    def __init__(self, layers: Sequence[int] = (3, 4, 6, 3), num_classes: int = 1000,
                 shortcut: ShortcutSpec = ShortcutSpec(), width: float = 1.0, groups: int = 1,
                 width_per_group: int = 64, stem: Literal["imagenet", "cifar"] = "imagenet",
                 zero_init_residual: bool = False) -> None:
        super().__init__()
        self.shortcut = shortcut
        self.groups, self.base_width = groups, width_per_group
        self.inplanes = _scaled(64, width)
        if stem == "imagenet":
            self.conv1 = nn.Conv2d(3, self.inplanes, 7, stride=2, padding=3, bias=False)
            self.maxpool: nn.Module = nn.MaxPool2d(3, stride=2, padding=1)
        elif stem == "cifar":
            self.conv1 = nn.Conv2d(3, self.inplanes, 3, stride=1, padding=1, bias=False)
            self.maxpool = nn.Identity()
        else:
            raise ValueError(f"unknown stem {stem!r}; choose imagenet or cifar")
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_stage(_scaled(64, width), layers[0], 1)
        self.layer2 = self._make_stage(_scaled(128, width), layers[1], 2)
        self.layer3 = self._make_stage(_scaled(256, width), layers[2], 2)
        self.layer4 = self._make_stage(_scaled(512, width), layers[3], 2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.inplanes, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d) and m.affine:
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)

    def _make_stage(self, planes: int, blocks: int, stride: int) -> Stage:
        out_channels = planes * Bottleneck.expansion
        downsample = None
        if stride != 1 or self.inplanes != out_channels:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, out_channels, 1, stride=stride, bias=False),
                                       nn.BatchNorm2d(out_channels))
        dense = self.shortcut.kind in ("dense", "dense_a")
        stage_blocks = []
        for l in range(blocks):
            stage_blocks.append(Bottleneck(self.inplanes if l == 0 else out_channels, planes,
                                           stride if l == 0 else 1, downsample if l == 0 else None,
                                           self.groups, self.base_width, self.shortcut,
                                           dense_terms=l if dense else 0))
        self.inplanes = out_channels
        return Stage(stage_blocks, self.shortcut)

    def forward_features(self, x: Tensor) -> Tensor:
        """Output of ``layer4`` (the Grad-CAM target layer's activations)."""
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, features: Tensor) -> Tensor:
        """Logits from ``layer4`` activations: only pooling and fc follow the target layer."""
        return self.fc(torch.flatten(self.avgpool(features), 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_head(self.forward_features(x))


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


def to_channels_last(model: nn.Module) -> nn.Module:
    """``model.to(memory_format=torch.channels_last)``, but the shortcut weights (T x C x 1 x 1) get
    their default strides back: for them the format changes only strides, not memory, and their
    gradients come back with the default strides, which DDP then copies into its buckets at every
    step (warning "Grad strides do not match bucket view strides")."""
    model.to(memory_format=torch.channels_last)
    for block in model.modules():
        if isinstance(block, Bottleneck):
            for weight in (block.dense_weight, block.inner_weight):
                if weight is not None:
                    weight.data = weight.data.clone(memory_format=torch.contiguous_format)
    return model


# --- builders -----------------------------------------------------------------------------------
# Each registered builder is a thin wrapper; ``**kwargs`` reach DSNet (num_classes, width, ...).

RESNET = ShortcutSpec("identity")
DSNET = ShortcutSpec("dense")
DS2NET = ShortcutSpec("dense", inner=True)


def _build(spec: ShortcutSpec, depth: int = 50, **kwargs) -> DSNet:
    """``norm``, ``weight`` and ``ds2_strided`` override the builder's spec; the rest go to DSNet."""
    overrides = {k: kwargs.pop(k) for k in ("norm", "weight", "ds2_strided") if kwargs.get(k) is not None}
    return DSNet(BLOCKS_BY_DEPTH[depth], shortcut=dataclasses.replace(spec, **overrides), **kwargs)


@register_model()
def resnet50(**kwargs) -> DSNet:
    return _build(RESNET, 50, **kwargs)


@register_model()
def resnet50_dense(**kwargs) -> DSNet:
    """Dense identity shortcut, no N and no W (Eq. 13; the failed naive baseline of Table 1)."""
    return _build(ShortcutSpec("dense_identity"), 50, **kwargs)


@register_model()
def dsnet50(**kwargs) -> DSNet:
    return _build(DSNET, 50, **kwargs)


@register_model()
def dsnet50_a(**kwargs) -> DSNet:
    """Variant (a), Eq. 11: dense terms from N(X_i) instead of N(Y_i)."""
    return _build(ShortcutSpec("dense_a"), 50, **kwargs)


@register_model()
def ds2net50(**kwargs) -> DSNet:
    return _build(DS2NET, 50, **kwargs)


@register_model()
def dsnext50_32x4d(**kwargs) -> DSNet:
    return _build(DSNET, 50, groups=32, width_per_group=4, **kwargs)


@register_model()
def ds2next50_32x4d(**kwargs) -> DSNet:
    return _build(DS2NET, 50, groups=32, width_per_group=4, **kwargs)


@register_model()
def dswrn50_2(**kwargs) -> DSNet:
    return _build(DSNET, 50, width_per_group=128, **kwargs)


def _register_depth(prefix: str, spec: ShortcutSpec, depth: int) -> None:
    def builder(**kwargs) -> DSNet:
        return _build(spec, depth, **kwargs)

    builder.__name__ = builder.__qualname__ = f"{prefix}{depth}"
    builder.__doc__ = f"{prefix} with the depth-{depth} block design {BLOCKS_BY_DEPTH[depth]} (Table 3)."
    register_model()(builder)


for _depth in (26, 38, 77, 101):
    for _prefix, _spec in (("resnet", RESNET), ("dsnet", DSNET), ("ds2net", DS2NET)):
        _register_depth(_prefix, _spec, _depth)


@dataclass(frozen=True)
class WarmStartReport:
    loaded: list[str]
    new: list[str]  # in the model, not in the ResNet state dict (the dense shortcut tensors)
    skipped: list[str]  # in both, with different shapes (e.g. fc for another class count)
    unused: list[str]  # in the ResNet state dict, not in the model

    def summary(self) -> str:
        return (f"warm start: loaded {len(self.loaded)} tensors; new {len(self.new)} "
                f"({', '.join(self.new[:4])}{'...' if len(self.new) > 4 else ''}); "
                f"skipped (shape) {self.skipped}; unused {self.unused}")


def warm_start_from_resnet(model: nn.Module, state_dict: dict[str, Tensor]) -> WarmStartReport:
    """Copy every matching tensor of a torchvision-format ResNet state dict into ``model``."""
    own = model.state_dict()
    loaded = [k for k, v in state_dict.items() if k in own and own[k].shape == v.shape]
    skipped = [k for k, v in state_dict.items() if k in own and own[k].shape != v.shape]
    model.load_state_dict({k: state_dict[k] for k in loaded}, strict=False)
    return WarmStartReport(loaded, [k for k in own if k not in state_dict], skipped,
                           [k for k in state_dict if k not in own])
