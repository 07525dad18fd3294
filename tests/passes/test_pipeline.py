"""optimize() by level: what each level does to real CNNs (the bundled digits_cnn, small torch
exports), that it preserves their outputs, and that running it twice equals running it once."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from tests.passes.graphs import check_rewrite, ops, snapshot

from ember.errors import ConfigError
from ember.ir import load_model
from ember.ir.verify import verify
from ember.passes import level_passes, optimize
from ember.zoo import load_eval, model_path

DIGITS = {
    0: {"Conv": 2, "BatchNormalization": 2, "Relu": 2, "MaxPool": 1, "Flatten": 1, "Gemm": 1},
    1: {"Conv": 2, "BatchNormalization": 2, "Relu": 2, "MaxPool": 1, "Flatten": 1, "Gemm": 1},
    2: {"ember.FusedConv": 2, "MaxPool": 1, "Flatten": 1, "Gemm": 1},
    3: {"Transpose": 2, "ember.FusedConv": 2, "ember.MaxPool": 1, "Flatten": 1, "Gemm": 1},
}


@pytest.mark.parametrize("level", [0, 1, 2, 3])
def test_digits_cnn_at_each_level(level: int) -> None:
    x = load_eval("digits_cnn").x[:64]
    m = check_rewrite(
        lambda: load_model(model_path("digits_cnn")), lambda m: optimize(m, level), [x]
    )
    assert ops(m) == DIGITS[level]
    if level >= 2:
        fused = [n.metadata_props["ember.fused"] for n in m.graph if n.op_type == "FusedConv"]
        assert fused == ["Conv+BatchNormalization+Relu"] * 2
        assert m.opset_imports["ai.ember"] == 1


def test_level_0_changes_nothing() -> None:
    m = load_model(model_path("digits_cnn"))
    before = snapshot(m)
    assert optimize(m, 0) is m
    assert snapshot(m) == before


def test_each_level_extends_the_one_below() -> None:
    names = [[type(p).__name__ for p in level_passes(level)] for level in range(4)]
    assert names[0] == []
    for lower, higher in itertools.pairwise(names):
        assert higher[: len(lower)] == lower
    assert "ChannelsLastPass" in names[3] and "ChannelsLastPass" not in names[2]


@pytest.mark.parametrize("level", [-1, 4, True, 2.0, "3", None])
def test_a_level_outside_0_to_3_is_a_config_error(level: Any) -> None:
    with pytest.raises(ConfigError, match=r"optimization level must be 0, 1, 2 or 3, got"):
        optimize(load_model(model_path("digits_cnn")), level)


# --- torch-exported CNNs (skipped without torch) -----------------------------------------------


def _torch_models() -> dict[str, Any]:
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self, c_in: int, c_out: int, stride: int) -> None:
            super().__init__()
            self.body = nn.Sequential(
                nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(),
                nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False),
                nn.BatchNorm2d(c_out),
            )
            self.down = (
                nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
                if stride != 1 or c_in != c_out
                else nn.Identity()
            )

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.relu(self.body(x) + self.down(x))

    class TinyResNet(nn.Module):
        """ResNet's shape: stem, max pool, residual blocks, global average pool, linear."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1), nn.ReLU(), nn.MaxPool2d(2))
            self.blocks = nn.Sequential(Block(8, 8, 1), Block(8, 16, 2))
            self.fc = nn.Linear(16, 10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = nn.functional.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1)
            return self.fc(torch.flatten(x, 1))

    class TinyMobile(nn.Module):
        """MobileNet-style pieces: hardswish, depthwise ReLU6, squeeze-excite, a channel concat."""

        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.Hardswish())
            self.dw = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.ReLU6())
            self.se1, self.se2 = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1)
            self.a, self.b = nn.Conv2d(8, 4, 1), nn.Conv2d(8, 4, 3, padding=1)
            self.head = nn.Linear(8 * 8 * 8, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.dw(self.stem(x))
            s = nn.functional.adaptive_avg_pool2d(x, 1)
            x = x * nn.functional.hardsigmoid(self.se2(torch.relu(self.se1(s))))
            x = torch.cat([nn.functional.gelu(self.a(x)), torch.sigmoid(self.b(x))], 1)
            return self.head(torch.flatten(nn.functional.avg_pool2d(x, 2), 1))

    torch.manual_seed(0)
    return {"resnet": TinyResNet(), "mobile": TinyMobile()}


@pytest.fixture(scope="module")
def torch_cnns(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")  # the dynamo exporter
    from ember.bench.harness import export_torch

    out = tmp_path_factory.mktemp("torch_cnns")
    paths = {}
    for name, module in _torch_models().items():
        paths[name] = export_torch(
            module, [torch.randn(1, 3, 32, 32)], out / f"{name}.onnx", input_names=["x"]
        )
    return paths


TORCH_LEVEL_3 = {
    "resnet": {
        "Transpose": 2,
        "ember.FusedConv": 6,
        "ember.MaxPool": 1,
        "ember.GlobalAveragePool": 1,
        "Reshape": 1,
        "Gemm": 1,
    },
    "mobile": {
        "Transpose": 2,
        "ember.FusedConv": 6,
        "ember.GlobalAveragePool": 1,
        "Mul": 1,
        "Concat": 1,
        "ember.AveragePool": 1,
        "Reshape": 1,
        "Gemm": 1,
    },
}


@pytest.mark.parametrize("name", ["resnet", "mobile"])
@pytest.mark.parametrize("level", [1, 2, 3])
def test_torch_cnns_keep_their_outputs(torch_cnns: dict[str, Path], name: str, level: int) -> None:
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    path = torch_cnns[name]
    m = check_rewrite(lambda: load_model(path), lambda m: optimize(m, level), [x])
    if level >= 2:
        assert "ReduceMean" not in ops(m) and "BatchNormalization" not in ops(m)
    if level == 3:
        assert ops(m) == TORCH_LEVEL_3[name]
        region = [n for n in m.graph if n.op_type not in ("Transpose", "Reshape", "Gemm")]
        assert all(n.metadata_props["ember.layout"] == "NHWC" for n in region)


def test_torch_resnet_fuses_residual_blocks(torch_cnns: dict[str, Path]) -> None:
    m = optimize(load_model(torch_cnns["resnet"]), 2)
    verify(m)
    fused = sorted(n.metadata_props["ember.fused"] for n in m.graph if n.op_type == "FusedConv")
    # The exporter already folds BatchNorm in eval mode; the block's second conv takes the Add.
    assert fused == ["Conv+Add+Relu", "Conv+Add+Relu", "Conv+Relu", "Conv+Relu", "Conv+Relu"]
    assert ops(m)["Conv"] == 1  # the downsample conv: its output is the other block's Z
