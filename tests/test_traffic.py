"""benchmarks/traffic.py counts what README's traffic tables say: bytes read plus written per op,
nothing for views, and the dense shortcuts add no convolution or BatchNorm work; compiled, Inductor
fuses most of their traffic away."""

import importlib.util
import sys

import pytest
import torch

import dsnet
from conftest import ROOT

spec = importlib.util.spec_from_file_location("traffic", ROOT / "benchmarks" / "traffic.py")
traffic = sys.modules["traffic"] = importlib.util.module_from_spec(spec)  # dataclasses look it up
spec.loader.exec_module(traffic)


def test_bytes_are_operands_plus_results_and_views_are_free():
    a, b = torch.randn(10, 10), torch.randn(10, 10)
    with traffic.TrafficMode() as mode:
        c = a + b  # reads 2 x 400 bytes, writes 400
        c.view(100)  # a view moves nothing
        c.mul_(2)  # in place: reads and writes c
    assert mode.traffic.bytes("other") == mode.traffic.bytes() == 3 * 400 + 2 * 400
    assert mode.traffic.ops("other") == 2


def test_dense_shortcuts_add_no_convolution_or_batch_norm_traffic():
    resnet, dsnet50 = (traffic.training_step_traffic(n, batch=2, size=64, width=0.25) for n in ("resnet50", "dsnet50"))
    for group in ("convolution", "batch norm"):
        assert dsnet50.bytes(group) == resnet.bytes(group) and dsnet50.ops(group) == resnet.ops(group)
    assert dsnet50.bytes("other") > resnet.bytes("other")


@pytest.mark.slow
def test_inductor_fuses_the_dense_shortcut_sums():
    """What README's compiled traffic table rests on: compiled, a dense stage's shortcuts cost a
    fraction of their eager traffic (each block's sum and its backward fused into a few kernels).
    Fails if they stop compiling into one graph (fullgraph) or Inductor can no longer fuse them."""
    x = torch.randn(2, 64, 16, 16)
    eager, compiled = {}, {}
    for name in ("resnet38", "dsnet38"):  # layer3: three blocks, three dense terms
        torch.manual_seed(0)
        stage = dsnet.get_model(name, width=0.125).layer3.train()
        eager[name] = traffic.eager_traffic(stage, x, torch.sum)
        compiled[name] = traffic.compiled_traffic(stage, x, torch.sum)
        assert compiled[name].ops("convolution") == eager[name].ops("convolution")  # library kernels: counted alike
    extra_eager = eager["dsnet38"].bytes() - eager["resnet38"].bytes()
    extra_compiled = compiled["dsnet38"].bytes() - compiled["resnet38"].bytes()
    print(f"\nFUSION compiled dense stage: {extra_compiled / extra_eager:.0%} of its eager extra traffic")
    assert 0 < extra_compiled < 0.4 * extra_eager


def test_triton_count_is_the_triton_schedule_of_the_same_graphs():
    """``--compile triton`` counts what Inductor's Triton scheduling (a GPU's code path) launches:
    it computes N's statistics in the kernel that writes y (a reduction fused after an elementwise
    op of the same size), where Inductor's C++ code generation reads y again in a kernel of its own."""
    norm = torch.nn.GroupNorm(8, 32, affine=False)

    class ReluThenStatistics(torch.nn.Module):
        def forward(self, x):
            return dsnet.models.kernels.apply_norm(norm, torch.relu(x * 2))  # y, and N's scale and shift

    x = torch.randn(2, 32, 16, 16, requires_grad=True)
    loss = lambda n: n.y.sum() + n.scale.sum() + n.shift.sum()
    cpp, triton = (traffic.compiled_traffic(ReluThenStatistics(), x, loss, s) for s in ("cpp", "triton"))
    activation = x.numel() * x.element_size()
    assert 0 < triton.bytes() <= cpp.bytes() - 0.9 * activation  # one pass over y less
