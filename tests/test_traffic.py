"""benchmarks/traffic.py counts what README's traffic table says: bytes read plus written per op,
nothing for views, and the dense shortcuts add no convolution or BatchNorm work."""
import importlib.util
import sys

import torch

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
