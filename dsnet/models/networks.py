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
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import torch
from torch import Tensor, nn

from dsnet.models.kernels import FoldedNorm, MeanPool, add_shortcuts, apply_norm
from dsnet.models.registry import register_model

Shortcut = Literal["identity", "dense", "dense_a", "dense_identity"]
NormKind = Literal["group", "layer", "instance", "batch", "none"]
WeightKind = Literal["channel", "scalar", "none"]

BLOCKS_BY_DEPTH = {26: (2, 2, 2, 2), 38: (3, 3, 3, 3), 50: (3, 4, 6, 3), 77: (3, 4, 15, 3), 101: (3, 4, 23, 3)}


@dataclass(frozen=True)
class ShortcutSpec:
    """How the shortcuts of a network are built (the ablation axes of Table 1)."""

    kind: Shortcut = "identity"  # a key of SHORTCUT_KINDS
    norm: NormKind = "group"
    weight: WeightKind = "channel"
    inner: bool = False  # DS2: weighted normalised shortcut around every 3x3 conv
    ds2_strided: Literal["pool", "skip"] = "pool"

    def __post_init__(self) -> None:
        if self.kind not in SHORTCUT_KINDS:
            raise ValueError(f"unknown shortcut kind {self.kind!r}; choose {', '.join(SHORTCUT_KINDS)}")
        if self.norm not in PARAMETER_FREE_NORMS:
            raise ValueError(f"unknown norm {self.norm!r}; choose {', '.join(PARAMETER_FREE_NORMS)}")
        if self.weight not in WEIGHT_KINDS:
            raise ValueError(f"unknown weight {self.weight!r}; choose {', '.join(WEIGHT_KINDS)}")
        if self.ds2_strided not in ("pool", "skip"):
            raise ValueError(f"unknown ds2_strided {self.ds2_strided!r}; choose pool or skip")

    @property
    def has_normalised_shortcuts(self) -> bool:
        """Whether ``norm`` and ``weight`` change anything (ResNet and Eq. 13 have neither N nor W)."""
        return self.wiring.normalised or self.inner

    @property
    def wiring(self) -> StageWiring:
        """The object that connects the blocks of a stage for this kind."""
        return SHORTCUT_KINDS[self.kind]


class StageWiring(Protocol):
    """How the blocks of one stage are connected: the only place a shortcut kind is decided."""

    normalised: bool  # the stage keeps one N per block that a later block reads (``Stage.norms``)

    def weight_terms(self, index: int) -> int:
        """How many learnable weights W block ``index`` of a stage has per channel (its ``dense_weight``;
        0: none, also where unweighted terms are summed)."""

    def forward(self, stage: Stage, x: Tensor) -> Tensor:
        """The stage's output for input ``x``."""


class IdentityWiring:
    """ResNet: every block keeps its own identity/projection shortcut."""

    normalised = False

    def weight_terms(self, index: int) -> int:
        return 0

    def forward(self, stage: Stage, x: Tensor) -> Tensor:
        for block in stage.blocks:
            x = block(x)
        return x


@dataclass(frozen=True)
class DenseWiring:
    """Block 0 keeps its shortcut; block l >= 1 has none and reads every earlier block instead::

        Y_l = ReLU(X_l + sum_{i<l} W_l^i * N(S_i)),   S_i = Y_i (variant b, Eq. 12) or X_i (a, Eq. 11)

    ``plain=True`` sums the Y_i as they are, without N and W (Eq. 13, the naive dense identity
    shortcut of Table 1). N without W is not a kind: it is ``ShortcutSpec(weight="none")``.
    """

    reads_residual: bool = False  # S_i = X_i (variant a) instead of Y_i (variant b)
    plain: bool = False  # no N and no W (Eq. 13)

    @property
    def normalised(self) -> bool:
        return not self.plain

    def weight_terms(self, index: int) -> int:
        return 0 if self.plain else index

    def forward(self, stage: Stage, x: Tensor) -> Tensor:
        first, *rest = stage.blocks
        if self.reads_residual:  # X_0 stays intact for its term, so block 0's sum is not in place
            source = first.residual(x)
            y = torch.relu(source + first.own_shortcut(x))
        else:
            y = source = first(x)
        history = [self._term(stage, 0, source)] if rest else []
        for l, block in enumerate(rest, start=1):
            x_l = block.residual(y)
            out = x_l.clone() if self.reads_residual else x_l
            y = torch.relu_(add_shortcuts(out, block.dense_weight, history))
            if l < len(rest):
                history.append(self._term(stage, l, x_l if self.reads_residual else y))
        return y

    def _term(self, stage: Stage, index: int, source: Tensor) -> FoldedNorm | Tensor:
        """N(S_i), computed once and shared by every later block of the stage (§4.5)."""
        return apply_norm(stage.norms[index], source) if self.normalised else source


SHORTCUT_KINDS: dict[str, StageWiring] = {
    "identity": IdentityWiring(),
    "dense": DenseWiring(),
    "dense_a": DenseWiring(reads_residual=True),
    "dense_identity": DenseWiring(plain=True),
}


PARAMETER_FREE_NORMS: dict[str, Callable[[int], nn.Module]] = {
    "group": lambda c: nn.GroupNorm(math.gcd(32, c), c, affine=False),
    "layer": lambda c: nn.GroupNorm(1, c, affine=False),
    "instance": lambda c: nn.GroupNorm(c, c, affine=False),
    "batch": lambda c: nn.BatchNorm2d(c, affine=False),
    "none": lambda c: nn.Identity(),
}


def parameter_free_norm(kind: NormKind, channels: int) -> nn.Module:
    """The normalisation N of a shortcut: no affine transform (paper §3.3)."""
    if kind not in PARAMETER_FREE_NORMS:
        raise ValueError(f"unknown norm {kind!r}; choose {', '.join(PARAMETER_FREE_NORMS)}")
    return PARAMETER_FREE_NORMS[kind](channels)


WEIGHT_KINDS = ("channel", "scalar", "none")


def shortcut_weights(kind: WeightKind, terms: int, channels: int) -> nn.Parameter | None:
    """Learnable weights for ``terms`` incoming shortcuts, shape (terms, C, 1, 1) ("channel") or
    (terms, 1, 1, 1) ("scalar"); init 1."""
    if kind == "none":
        return None
    size = channels if kind == "channel" else 1
    if kind not in ("channel", "scalar"):
        raise ValueError(f"unknown weight {kind!r}; choose channel, scalar or none")
    return nn.Parameter(torch.ones(terms, size, 1, 1))


class Bottleneck(nn.Module):
    """torchvision's v1.5 bottleneck; ``residual`` gives X (bn3 output, before any shortcut)."""

    expansion = 4

    def __init__(
        self,
        inplanes: int,
        planes: int,
        stride: int,
        downsample: nn.Module | None,
        groups: int,
        base_width: int,
        spec: ShortcutSpec,
        dense_terms: int,
    ) -> None:
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
            self.inner_norm = parameter_free_norm(spec.norm, width)
            self.inner_weight = shortcut_weights(spec.weight, 1, width)
            if stride > 1:
                self.inner_pool = MeanPool(width, stride)
        # Dense shortcuts into this block: W_l^i for i < l, stored with the block that reads them.
        self.dense_weight = shortcut_weights(spec.weight, dense_terms, out_channels) if dense_terms else None

    def residual(self, x: Tensor) -> Tensor:
        a = self.relu(self.bn1(self.conv1(x)))
        b = self.bn2(self.conv2(a))
        if self.inner_norm is not None:
            n = apply_norm(self.inner_norm, a)
            if self.inner_pool is not None:  # average pooling commutes with a per-channel affine map
                n = (
                    FoldedNorm(self.inner_pool(n.y), n.scale, n.shift)
                    if isinstance(n, FoldedNorm)
                    else self.inner_pool(n)
                )
            b = add_shortcuts(b, self.inner_weight, [n])
        return self.bn3(self.conv3(self.relu(b)))

    def own_shortcut(self, x: Tensor) -> Tensor:
        """The block's own identity or projection shortcut P(x)."""
        return x if self.downsample is None else self.downsample(x)

    def forward(self, x: Tensor) -> Tensor:
        """Block with its own identity/projection shortcut (ResNet, and block 0 of every stage)."""
        return self.relu(self.residual(x).add_(self.own_shortcut(x)))  # in place, as torchvision's


class Stage(nn.Module):
    """One stage (``layerK``): its blocks, connected by the spec's ``StageWiring``.

    Blocks are children "0", "1", ... as in torchvision's ``nn.Sequential`` stages.
    """

    def __init__(self, blocks: Sequence[Bottleneck], spec: ShortcutSpec) -> None:
        super().__init__()
        for i, block in enumerate(blocks):
            self.add_module(str(i), block)
        self.blocks = list(blocks)  # plain list: not registered twice
        self.wiring = spec.wiring
        if self.wiring.normalised:
            channels = blocks[0].bn3.num_features
            # N of every block output that a later block reads (all but the last).
            self.norms = nn.ModuleList(parameter_free_norm(spec.norm, channels) for _ in blocks[:-1])

    def forward(self, x: Tensor) -> Tensor:
        return self.wiring.forward(self, x)

    def __getitem__(self, index: int) -> Bottleneck:
        return self.blocks[index]

    def __len__(self) -> int:
        return len(self.blocks)


class DSNet(nn.Module):
    """ResNet / DSNet / DS2Net with torchvision's module names (one class for the whole family)."""

    def __init__(
        self,
        layers: Sequence[int] = (3, 4, 6, 3),
        num_classes: int = 1000,
        shortcut: ShortcutSpec = ShortcutSpec(),
        width: float = 1.0,
        groups: int = 1,
        width_per_group: int = 64,
        stem: Literal["imagenet", "cifar"] = "imagenet",
        zero_init_residual: bool = False,
    ) -> None:
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
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, out_channels, 1, stride=stride, bias=False), nn.BatchNorm2d(out_channels)
            )
        wiring = self.shortcut.wiring
        stage_blocks = []
        for l in range(blocks):
            stage_blocks.append(
                Bottleneck(
                    self.inplanes if l == 0 else out_channels,
                    planes,
                    stride if l == 0 else 1,
                    downsample if l == 0 else None,
                    self.groups,
                    self.base_width,
                    self.shortcut,
                    dense_terms=wiring.weight_terms(l),
                )
            )
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

    def to_channels_last(self) -> DSNet:
        """``self.to(memory_format=torch.channels_last)``, but the shortcut weights (T x C x 1 x 1) get
        their default strides back: for them the format changes only strides, not memory, and their
        gradients come back with the default strides, which DDP then copies into its buckets at every
        step (warning "Grad strides do not match bucket view strides")."""
        self.to(memory_format=torch.channels_last)
        for block in self.modules():
            if isinstance(block, Bottleneck):
                for weight in (block.dense_weight, block.inner_weight):
                    if weight is not None:
                        weight.data = weight.data.clone(memory_format=torch.contiguous_format)
        return self


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


# --- builders -----------------------------------------------------------------------------------
# One documented function per registered name, as torchvision's. Keyword arguments reach DSNet
# (num_classes, width, stem, ...); ``norm``, ``weight`` and ``ds2_strided`` override the spec.

RESNET = ShortcutSpec("identity")
DSNET = ShortcutSpec("dense")
DS2NET = ShortcutSpec("dense", inner=True)


def _build(spec: ShortcutSpec, depth: int, **kwargs: Any) -> DSNet:
    overrides = {k: v for k in ("norm", "weight", "ds2_strided") if (v := kwargs.pop(k, None)) is not None}
    if not spec.has_normalised_shortcuts and overrides.keys() & {"norm", "weight"}:
        raise ValueError(
            f"norm= and weight= do not apply here: this network has no normalised, weighted "
            f"shortcuts (kind {spec.kind!r})"
        )
    if not spec.inner and "ds2_strided" in overrides:
        raise ValueError("ds2_strided= applies to DS2 networks only")
    return DSNet(BLOCKS_BY_DEPTH[depth], shortcut=dataclasses.replace(spec, **overrides), **kwargs)


@register_model()
def resnet50(**kwargs: Any) -> DSNet:
    """ResNet-50 v1.5, torchvision's layout: a torchvision state dict loads unchanged (the baseline)."""
    return _build(RESNET, 50, **kwargs)


@register_model()
def dsnet50(**kwargs: Any) -> DSNet:
    """DSNet-50: ResNet-50 with dense weighted normalised shortcuts in each stage (Eq. 12, §3.3)."""
    return _build(DSNET, 50, **kwargs)


@register_model()
def ds2net50(**kwargs: Any) -> DSNet:
    """DS2Net-50: DSNet-50 plus a weighted normalised shortcut around every 3x3 convolution (§3.3)."""
    return _build(DS2NET, 50, **kwargs)


@register_model()
def resnet50_dense(**kwargs: Any) -> DSNet:
    """Dense identity shortcut, no N and no W (Eq. 13; the failed naive baseline of Table 1)."""
    return _build(ShortcutSpec("dense_identity"), 50, **kwargs)


@register_model()
def dsnet50_a(**kwargs: Any) -> DSNet:
    """Variant (a), Eq. 11: dense terms from N(X_i) instead of N(Y_i)."""
    return _build(ShortcutSpec("dense_a"), 50, **kwargs)


@register_model()
def dsnext50_32x4d(**kwargs: Any) -> DSNet:
    """DSNeXt-50 (32x4d): ResNeXt-50's grouped 3x3 convolutions with DSNet's shortcuts (Table 5)."""
    return _build(DSNET, 50, groups=32, width_per_group=4, **kwargs)


@register_model()
def ds2next50_32x4d(**kwargs: Any) -> DSNet:
    """DS2NeXt-50 (32x4d): ResNeXt-50 with DS2Net's shortcuts (Table 5)."""
    return _build(DS2NET, 50, groups=32, width_per_group=4, **kwargs)


@register_model()
def dswrn50_2(**kwargs: Any) -> DSNet:
    """DS-WRN-50-2: Wide ResNet-50-2 (bottleneck 3x3 convolutions twice as wide) with DSNet's shortcuts."""
    return _build(DSNET, 50, width_per_group=128, **kwargs)


# Other depths (Table 3): blocks per stage from BLOCKS_BY_DEPTH.


@register_model()
def resnet26(**kwargs: Any) -> DSNet:
    """ResNet-26, blocks (2, 2, 2, 2)."""
    return _build(RESNET, 26, **kwargs)


@register_model()
def dsnet26(**kwargs: Any) -> DSNet:
    """DSNet-26, blocks (2, 2, 2, 2)."""
    return _build(DSNET, 26, **kwargs)


@register_model()
def ds2net26(**kwargs: Any) -> DSNet:
    """DS2Net-26, blocks (2, 2, 2, 2)."""
    return _build(DS2NET, 26, **kwargs)


@register_model()
def resnet38(**kwargs: Any) -> DSNet:
    """ResNet-38, blocks (3, 3, 3, 3)."""
    return _build(RESNET, 38, **kwargs)


@register_model()
def dsnet38(**kwargs: Any) -> DSNet:
    """DSNet-38, blocks (3, 3, 3, 3)."""
    return _build(DSNET, 38, **kwargs)


@register_model()
def ds2net38(**kwargs: Any) -> DSNet:
    """DS2Net-38, blocks (3, 3, 3, 3)."""
    return _build(DS2NET, 38, **kwargs)


@register_model()
def resnet77(**kwargs: Any) -> DSNet:
    """ResNet-77, blocks (3, 4, 15, 3)."""
    return _build(RESNET, 77, **kwargs)


@register_model()
def dsnet77(**kwargs: Any) -> DSNet:
    """DSNet-77, blocks (3, 4, 15, 3)."""
    return _build(DSNET, 77, **kwargs)


@register_model()
def ds2net77(**kwargs: Any) -> DSNet:
    """DS2Net-77, blocks (3, 4, 15, 3)."""
    return _build(DS2NET, 77, **kwargs)


@register_model()
def resnet101(**kwargs: Any) -> DSNet:
    """ResNet-101, blocks (3, 4, 23, 3)."""
    return _build(RESNET, 101, **kwargs)


@register_model()
def dsnet101(**kwargs: Any) -> DSNet:
    """DSNet-101, blocks (3, 4, 23, 3)."""
    return _build(DSNET, 101, **kwargs)


@register_model()
def ds2net101(**kwargs: Any) -> DSNet:
    """DS2Net-101, blocks (3, 4, 23, 3)."""
    return _build(DS2NET, 101, **kwargs)
