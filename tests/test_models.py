import pytest
import torch
import torchvision
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

import dsnet
from conftest import sample
from dsnet.cam.images import model_view, open_image, to_tensor
from dsnet.models.networks import BLOCKS_BY_DEPTH, Stage, parameter_free_norm
from dsnet.zoo.manifest import Preprocessing
from dsnet.zoo.weights import warm_start_from_resnet


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name", dsnet.list_models())
def test_every_registered_model_runs_forward_and_backward(name):
    width = 0.25 if "next" in name else 0.125  # 32 groups need >= 32 channels in the 3x3 conv
    model = dsnet.get_model(name, width=width, num_classes=7)
    out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 7)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_registry_lists_the_required_builders():
    required = {
        "resnet50",
        "dsnet50",
        "ds2net50",
        "dsnet50_a",
        "resnet50_dense",
        "dsnext50_32x4d",
        "ds2next50_32x4d",
        "dswrn50_2",
    } | {f"{p}{d}" for p in ("dsnet", "ds2net") for d in (26, 38, 77, 101)}
    assert required <= set(dsnet.list_models())
    with pytest.raises(ValueError, match="registered models: .*dsnet50"):
        dsnet.get_model("dsnet51")


def test_parameter_overheads_match_the_spec():
    resnet, ds, ds2 = (n_params(dsnet.get_model(n)) for n in ("resnet50", "dsnet50", "ds2net50"))
    assert resnet == 25_557_032 == n_params(torchvision.models.resnet50())
    assert ds - resnet == 25_344  # (3*256 + 6*512 + 15*1024 + 3*2048), docs/architecture.md
    assert (ds2 - resnet) / resnet < 0.0015  # paper §4.2: < 0.15 %
    # DS2's inner shortcut in the three strided blocks is an average pool by default; "skip" drops it.
    ds2_skip = n_params(dsnet.get_model("ds2net50", ds2_strided="skip"))
    assert ds2 - ds2_skip == 128 + 256 + 512
    assert n_params(dsnet.get_model("dsnet50", weight="scalar")) - resnet == 3 + 6 + 15 + 3
    assert n_params(dsnet.get_model("dsnet50", weight="none")) == resnet


def test_depths_follow_table_3():
    for depth, blocks in BLOCKS_BY_DEPTH.items():
        model = dsnet.get_model(f"dsnet{depth}" if depth != 50 else "dsnet50", width=0.125)
        assert [len(getattr(model, f"layer{i}")) for i in range(1, 5)] == list(blocks)


def test_group_norm_uses_a_divisor_of_the_channels_at_narrow_widths():
    norm = parameter_free_norm("group", 48)
    assert isinstance(norm, nn.GroupNorm) and norm.num_groups == 16 and not norm.affine
    assert parameter_free_norm("instance", 8).num_groups == 8 and parameter_free_norm("layer", 8).num_groups == 1


def naive_stage(stage: Stage, x: torch.Tensor) -> torch.Tensor:
    """Eq. 11/12/13 written out directly for any dense wiring: N recomputed for every shortcut, out of place."""
    blocks, wiring = stage.blocks, stage.wiring
    first = blocks[0]
    identity = x if first.downsample is None else first.downsample(x)
    xs = [first.residual(x)]
    ys = [torch.relu(xs[0] + identity)]
    for l in range(1, len(blocks)):
        xl = blocks[l].residual(ys[-1])
        sources = xs if wiring.reads_residual else ys
        total = xl.clone()
        for i in range(l):
            term = stage.norms[i](sources[i]) if wiring.normalised else sources[i]
            weight = blocks[l].dense_weight
            total = total + (term if weight is None else weight[i] * term)
        xs.append(xl)
        ys.append(torch.relu(total))
    return ys[-1]


@pytest.mark.parametrize(
    "name,weight",
    [
        ("dsnet50", "channel"),
        ("ds2net50", "channel"),
        ("dsnet50_a", "channel"),
        ("dsnet50", "scalar"),
        ("dsnet50", "none"),
        ("resnet50_dense", None),
    ],
)
def test_shared_normalisation_equals_the_equation(name, weight):
    torch.manual_seed(0)
    model = dsnet.get_model(name, width=0.25, weight=weight).eval()
    for block in model.modules():  # non-trivial weights, so a wrong index would show
        if hasattr(block, "dense_weight") and block.dense_weight is not None:
            nn.init.uniform_(block.dense_weight, 0.2, 1.5)
    for training in (False, True):  # materialised N (inference) and folded N (while autograd records)
        x = torch.randn(2, 16, 16, 16, requires_grad=training)  # the 0.25x stem has 16 channels
        with torch.set_grad_enabled(training):
            for i in range(1, 5):
                stage = getattr(model, f"layer{i}")
                torch.testing.assert_close(stage(x), naive_stage(stage, x), rtol=1e-5, atol=1e-5)
                x = stage(x)


@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_normalisation_has_the_gradients_of_groupnorm(monkeypatch, channels_last):
    """Training uses N folded into scale/shift (dsnet.models.kernels.apply_norm); its backward must equal
    that of PyTorch's GroupNorm, also for a dead (all-zero) channel and in channels_last."""
    from dsnet.models import networks as models

    torch.manual_seed(0)
    model = dsnet.get_model("ds2net50", width=0.25, num_classes=10).train()
    x = torch.randn(2, 3, 64, 64)
    block = model.layer1[0]
    with torch.no_grad():  # five channels of layer1's Y_0 = ReLU(X_0 + P(x)) become exactly zero
        for conv, bn in ((block.conv3, block.bn3), block.downsample):
            conv.weight[:5], bn.bias[:5] = 0, -1
    if channels_last:
        model, x = model.to(memory_format=torch.channels_last), x.contiguous(memory_format=torch.channels_last)
    gradients = []
    for normalise in (models.apply_norm, lambda norm, y: norm(y)):
        monkeypatch.setattr(models, "apply_norm", normalise)
        model.zero_grad()
        nn.functional.cross_entropy(model(x), torch.tensor([1, 7])).backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters()})
    folded, reference = gradients
    with torch.no_grad():
        assert (block(model.maxpool(model.relu(model.bn1(model.conv1(x)))))[:, :5] == 0).all()  # dead channels
    for name, g in reference.items():  # float32 rounding only: relative to the whole tensor
        assert torch.isfinite(folded[name]).all(), name
        assert (folded[name] - g).norm() <= 1e-4 * g.norm() + 1e-8, name


def test_hand_written_backwards_pass_gradcheck():
    """The folded N's scale/shift and the folded shortcut sum have hand-written backwards (fewer
    passes and ops than autograd's); finite differences in float64 confirm them, also for a constant
    (zero-variance) group (eps 1e-2: at 1e-5, 1/std amplifies the one-pass variance's 1e-17 rounding
    past the tolerance)."""
    from dsnet.models.kernels import FoldedShortcutSum, GroupNormAffine

    torch.manual_seed(0)
    y = torch.randn(2, 6, 4, 5, dtype=torch.float64)
    y[1, :3] = 0.5  # group 0 of sample 1 is constant
    y.requires_grad_()
    assert torch.autograd.gradcheck(lambda t: GroupNormAffine.apply(t, 2, 1e-2), (y,))
    scale, shift = GroupNormAffine.apply(y, 2, 1e-2)  # N(y) = y * scale + shift is GroupNorm
    torch.testing.assert_close(y * scale + shift, nn.functional.group_norm(y, 2, eps=1e-2))
    out, bias, scales = (
        torch.randn(shape, dtype=torch.float64, requires_grad=True)
        for shape in ((2, 6, 4, 5), (2, 6, 1, 1), (2, 2, 6, 1, 1))
    )
    y1 = torch.randn(2, 6, 4, 5, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(
        lambda o, *rest: FoldedShortcutSum.apply(o.clone(), *rest), (out, bias, scales, y, y1)
    )
    assert torch.autograd.gradcheck(
        lambda o, *rest: FoldedShortcutSum.apply(o.clone(), *rest), (out, bias, scales[:1], y)
    )


def test_shortcut_weight_gradients_are_not_rounded_to_the_activations_dtype():
    """In a bf16 (or fp16) sum, the float32 factors' gradients are float32 sums, not bf16 roundings
    (2^-8 relative error, and fp16 overflow at 65504 under a loss scale)."""
    from dsnet.models.kernels import FoldedShortcutSum

    torch.manual_seed(0)
    y = torch.randn(2, 8, 16, 16).bfloat16()
    out = torch.randn(2, 8, 16, 16).bfloat16().requires_grad_()
    bias, scale = torch.rand(2, 8, 1, 1, requires_grad=True), torch.rand(1, 2, 8, 1, 1, requires_grad=True)
    grad = torch.randn(2, 8, 16, 16).bfloat16()
    result = FoldedShortcutSum.apply(out.clone(), bias, scale, y)
    assert result.dtype == torch.bfloat16
    result.backward(grad)
    assert scale.grad.dtype == bias.grad.dtype == torch.float32
    # the products are bf16 (one rounding each, as any bf16 op); their sum is float32
    torch.testing.assert_close(scale.grad[0], (grad * y).float().sum((2, 3), keepdim=True), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(bias.grad, grad.float().sum((2, 3), keepdim=True), rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("size", [16, 15])  # the strided block's 2x2 pool tiles 16 px exactly, not 15
def test_ds2_inner_shortcut_equals_the_equation(size):
    """b = ReLU(bn2(conv2(a)) + w * AvgPool(N(a))), written out, for a strided and a plain block,
    with N materialised (inference) and folded (autograd recording)."""
    torch.manual_seed(0)
    model = dsnet.get_model("ds2net50", width=0.25).eval()
    for block in (model.layer2[0], model.layer2[1]):
        nn.init.uniform_(block.inner_weight, 0.2, 1.5)

        def naive(x, block=block):
            a = torch.relu(block.bn1(block.conv1(x)))
            n = block.inner_norm(a)
            if block.stride > 1:
                n = nn.functional.avg_pool2d(n, 2, 2, ceil_mode=True)
            return block.bn3(block.conv3(torch.relu(block.bn2(block.conv2(a)) + block.inner_weight[0] * n)))

        x = torch.randn(2, block.conv1.in_channels, size, size)
        for training in (False, True):
            x.requires_grad_(training)
            with torch.set_grad_enabled(training):
                torch.testing.assert_close(block.residual(x), naive(x), rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_torch_compile_traces_one_graph_with_eager_gradients():
    """torch.compile sees DS2Net as one graph in training (folded N, hand-written backwards) and in
    inference (fullgraph=True fails on any graph break; a break in the shortcut sum once made
    Inductor fail on ds2net50), and AOT autograd's gradients are eager's."""
    torch.manual_seed(0)
    model = dsnet.get_model("ds2net50", width=0.125, num_classes=10).train()
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    x = torch.randn(2, 3, 64, 64)
    gradients = []
    for run in (compiled, model):
        model.zero_grad()
        run(x).logsumexp(1).sum().backward()
        gradients.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for name, g in gradients[1].items():
        torch.testing.assert_close(gradients[0][name], g, rtol=1e-5, atol=1e-6, msg=name)
    model.eval()
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), model(x))


class _DtypeMixes(TorchDispatchMode):
    """Records ops over an activation (batch x C x H x W, H*W > 1) whose float operands mix dtypes,
    and ops that make a float32 activation."""

    def __init__(self, batch: int) -> None:
        super().__init__()
        self.batch, self.mixed, self.float32 = batch, set(), set()

    def is_activation(self, t) -> bool:
        return isinstance(t, torch.Tensor) and t.dim() == 4 and t.shape[0] == self.batch and t.shape[2:].numel() > 1

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        operands = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor) and t.is_floating_point()]
        if any(map(self.is_activation, operands)) and len({t.dtype for t in operands}) > 1:
            self.mixed.add(str(func))
        if any(self.is_activation(t) and t.dtype == torch.float32 for t in tree_leaves(out)):
            self.float32.add(str(func))
        return out


@pytest.mark.parametrize("name", ["dsnet50", "ds2net50"])
def test_autocast_runs_the_shortcuts_in_the_activations_dtype(name):
    """Under autocast (bf16 here, fp16 on CUDA alike) no shortcut op mixes dtypes over an activation
    and none makes a float32 copy of one: on the CPU every mixed op copies the activation (README's
    `benchmarks/models.py --amp` runs before and after). BatchNorm's mixed-precision kernels
    (float32 statistics) are PyTorch's own and ResNet50 has them too. The logits stay close to float32's."""
    torch.manual_seed(0)
    batch, x = 3, torch.randn(3, 3, 64, 64)
    model = dsnet.get_model(name, width=0.25, num_classes=10).eval()
    with torch.no_grad():
        reference = model(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = model(x).float()
    assert nn.functional.cosine_similarity(logits.flatten(), reference.flatten(), dim=0) > 0.99
    for training in (False, True):
        model.train(training)
        with torch.autocast("cpu", dtype=torch.bfloat16), _DtypeMixes(batch) as seen:
            with torch.set_grad_enabled(training):
                logits = model(x)
            if training:
                logits.float().sum().backward()
        assert seen.mixed <= {"aten.native_batch_norm.default", "aten.native_batch_norm_backward.default"}
        assert not seen.float32, seen.float32
    assert all(torch.isfinite(p.grad).all() for p in model.parameters())


class _OpCounts(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.counts: dict[str, int] = {}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        self.counts[name] = self.counts.get(name, 0) + 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize(
    "name,terms,norms,pools", [("resnet50", 0, 0, 0), ("dsnet50", 27, 12, 0), ("ds2net50", 27 + 16, 12 + 16, 3)]
)
def test_inference_runs_one_fused_norm_per_source_and_one_in_place_pass_per_term(name, terms, norms, pools):
    """Without autograd (served inference, benchmarks/models.py) a forward runs the fast path whose CPU
    ratios docs/benchmarks.md records: N materialised once per source by PyTorch's fused GroupNorm (no
    folded statistics: no sum/vector_norm, no autograd Function), one in-place addcmul_ per weighted
    term (DSNet50: 3 + 6 + 15 + 3; DS2Net50 adds one per block), DS2's strided pool one depthwise
    convolution, and nothing that copies or allocates an activation beside them (a regression guard:
    issue 23 suspected an extra copy, a Python loop or the autograd path in inference)."""
    model = dsnet.get_model(name, width=0.125, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64)
    for mode in (torch.no_grad, torch.inference_mode):
        with mode():
            reference = model(x)
            with _OpCounts() as seen:
                out = model(x)
            assert torch.equal(out, reference)
        counts = seen.counts
        if mode is torch.no_grad:  # under inference_mode the mode sees composite ops (conv2d, group_norm)
            assert set(counts) <= {
                "convolution",
                "native_batch_norm",
                "relu_",
                "add_",
                "addcmul_",
                "native_group_norm",
                "unbind",
                "empty",
                "max_pool2d_with_indices",
                "mean",
                "view",
                "t",
                "addmm",
            }, counts
            assert counts.get("native_group_norm", 0) == norms
            assert counts["convolution"] == 53 + pools
        assert counts.get("addcmul_", 0) == terms
        assert counts["add_"] == (16 if name == "resnet50" else 4)  # own shortcuts: every block / block 0


def test_resnet50_dense_is_eq_13():
    model = dsnet.get_model("resnet50_dense", width=0.25).eval()
    stage = model.layer1
    x = torch.randn(1, 16, 8, 8)
    with torch.no_grad():
        ys = [stage[0](x)]
        for block in stage.blocks[1:]:
            ys.append(torch.relu(block.residual(ys[-1]) + sum(ys)))
        torch.testing.assert_close(stage(x), ys[-1])


def test_same_logits_as_torchvision_on_a_real_image():
    torch.manual_seed(0)
    reference = torchvision.models.resnet50().eval()
    ours = dsnet.get_model("resnet50").eval()
    ours.load_state_dict(reference.state_dict(), strict=True)
    pre = Preprocessing()
    x = to_tensor(model_view(open_image(sample("golf_ball")).image, pre), pre)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=0, atol=1e-5)


def test_warm_start_loads_every_backbone_tensor():
    state = torchvision.models.resnet50().state_dict()
    for name in ("dsnet50", "ds2net50"):
        model = dsnet.get_model(name)
        report = warm_start_from_resnet(model, state)
        assert set(report.loaded) == set(state) and not report.unused and not report.skipped
        assert report.new and all(k.endswith(("dense_weight", "inner_weight")) for k in report.new)
        for k, v in state.items():
            assert torch.equal(model.state_dict()[k], v)
    small = dsnet.get_model("dsnet50", num_classes=10)
    report = warm_start_from_resnet(small, state)
    assert report.skipped == ["fc.weight", "fc.bias"]


def test_layer4_forward_split_matches_forward():
    model = dsnet.get_model("ds2net50", width=0.125, num_classes=5).eval()
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        torch.testing.assert_close(model.forward_head(model.forward_features(x)), model(x))


def test_an_unknown_shortcut_kind_is_refused_with_the_known_ones():
    from dsnet.models.networks import SHORTCUT_KINDS

    with pytest.raises(ValueError, match=f"unknown shortcut kind 'densee'; choose {', '.join(SHORTCUT_KINDS)}$"):
        dsnet.ShortcutSpec("densee")


def test_builder_options_that_do_not_apply_are_refused_and_none_means_the_default():
    assert n_params(dsnet.get_model("dsnet50", norm=None, weight=None)) == n_params(dsnet.get_model("dsnet50"))
    with pytest.raises(ValueError, match="unknown norm 'bogus'; choose group, layer, instance, batch, none"):
        dsnet.get_model("dsnet50", norm="bogus")
    with pytest.raises(ValueError, match="unknown weight 'vector'"):
        dsnet.get_model("ds2net50", weight="vector")
    for name in ("resnet50", "resnet50_dense"):  # no N and no W: the options would change nothing
        with pytest.raises(ValueError, match="norm= and weight= do not apply here"):
            dsnet.get_model(name, weight="scalar")
    with pytest.raises(ValueError, match="ds2_strided= applies to DS2 networks only"):
        dsnet.get_model("dsnet50", ds2_strided="skip")
