"""Low-rank factorization: the reported error is the exact relative Frobenius error, high energy
keeps outputs close, and layers where a factorization would not save FLOPs are left alone."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
import ember.ir
from ember import zoo
from ember.compress.lowrank import LowRankConfig, choose_rank, lowrank, relative_error
from ember.errors import ConfigError

ort = pytest.importorskip("onnxruntime")


def matmul_model(k: int = 96, n: int = 80, rank: int | None = None, seed: int = 0) -> ir.Model:
    """y = x @ W (x: (batch, seq, K)), then Gemm(y, G^T, bias) with transB: both factorizable."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((k, n)).astype(np.float32)
    if rank is not None:  # a low-rank weight plus a little noise
        w = (rng.standard_normal((k, rank)) @ rng.standard_normal((rank, n))).astype(np.float32)
        w += 0.01 * rng.standard_normal((k, n)).astype(np.float32)
    g = rng.standard_normal((70, n)).astype(np.float32)
    if rank is not None:
        g = (rng.standard_normal((70, rank)) @ rng.standard_normal((rank, n))).astype(np.float32)
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Reshape", ["h", "flat"], ["h2"]),
        helper.make_node("Gemm", ["h2", "g", "bias"], ["y"], transB=1, name="gemm"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 70])],
        [
            numpy_helper.from_array(w, "w"),
            numpy_helper.from_array(g, "g"),
            numpy_helper.from_array(rng.standard_normal(70).astype(np.float32), "bias"),
            numpy_helper.from_array(np.array([-1, n], np.int64), "flat"),
        ],
    )
    return ir.from_proto(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


def effective_weight(model: ir.Model, name: str) -> np.ndarray:
    """The K x N product of the two factors that replaced layer `name`."""
    inits = {k: v.const_value.numpy() for k, v in model.graph.initializers.items()}  # type: ignore[union-attr]
    return inits[f"{name}_lowrank_a"] @ inits[f"{name}_lowrank_b"]


@pytest.mark.parametrize("energy", [0.5, 0.8, 0.95])
def test_reported_error_is_the_exact_relative_frobenius_error(energy: float) -> None:
    model = matmul_model()
    w = model.graph.initializers["w"].const_value.numpy()  # type: ignore[union-attr]
    g = model.graph.initializers["g"].const_value.numpy().T  # type: ignore[union-attr]
    out, layers = lowrank(model, LowRankConfig(energy=energy, min_size=1))
    by_name = {layer.name: layer for layer in layers}
    for name, weight in (("mm", w), ("gemm", g)):
        layer = by_name[name]
        s = np.linalg.svd(weight.astype(np.float64), compute_uv=False)
        want = np.sqrt((s[layer.rank :] ** 2).sum() / (s**2).sum())
        if not layer.replaced:
            continue
        assert layer.error == pytest.approx(want, rel=1e-9)
        got = np.linalg.norm(weight - effective_weight(out, name)) / np.linalg.norm(weight)
        assert got == pytest.approx(want, rel=1e-4, abs=1e-6)  # float32 factors
        # the smallest rank that keeps `energy` of the squared singular values
        kept = np.cumsum(s**2) / (s**2).sum()
        assert kept[layer.rank - 1] >= energy and (layer.rank == 1 or kept[layer.rank - 2] < energy)
        assert layer.error <= np.sqrt(1 - energy) + 1e-12
        K, N = layer.shape
        assert (layer.flops_before, layer.flops_after) == (2 * K * N, 2 * layer.rank * (K + N))


def test_high_energy_keeps_outputs_close_and_ort_agrees() -> None:
    model = matmul_model(rank=8)
    out, layers = lowrank(model, LowRankConfig(energy=0.999, min_size=1))
    replaced = [layer for layer in layers if layer.replaced]
    assert [layer.name for layer in replaced] == ["mm", "gemm"]
    assert all(layer.rank <= 40 for layer in replaced)
    ops = [n.op_type for n in out.graph]
    assert ops == ["MatMul", "MatMul", "Reshape", "MatMul", "Gemm"]
    gemm = next(n for n in out.graph if n.op_type == "Gemm")
    assert gemm.attributes["transB"].value == 0
    x = np.random.default_rng(1).standard_normal((4, 3, 96)).astype(np.float32)
    want = ember.load(model).run({"x": x})["y"]
    got = ember.load(out).run({"x": x})["y"]
    proto = ir.to_proto(out)
    onnx.checker.check_model(proto, full_check=True)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"x": x})[0], got, rtol=1e-4, atol=1e-3)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < 0.01


def test_layers_that_would_not_save_flops_are_left_alone() -> None:
    model = matmul_model()  # a random (full-rank) weight: 95% energy needs most singular values
    out, layers = lowrank(model, LowRankConfig(energy=0.95, min_size=1))
    for layer in layers:
        K, N = layer.shape
        assert layer.replaced == (layer.rank * (K + N) < K * N)
        if not layer.replaced:
            assert "saves no FLOPs" in layer.reason
            assert layer.flops_after == layer.flops_before and layer.error == 0.0
    assert not any(layer.replaced for layer in layers)
    assert [n.op_type for n in out.graph] == ["MatMul", "Reshape", "Gemm"]
    # an explicit rank too large to pay is refused the same way
    _, layers = lowrank(model, LowRankConfig(rank=60, min_size=1))
    assert not any(layer.replaced for layer in layers)


def test_zoo_mlp_by_rank_and_min_size() -> None:
    path = zoo.model_path("mnist_mlp")
    out, layers = lowrank(path, LowRankConfig(rank=32))
    assert [(layer.name, layer.replaced) for layer in layers] == [
        ("/0/Gemm", True),
        ("/3/Gemm", True),
        ("/6/Gemm", False),  # 128 x 10 is below min_size 4096
    ]
    assert "min_size" in layers[2].reason
    ev = zoo.load_eval("mnist_mlp")
    logits = ember.load(out).run({"input": ev.x})["logits"]
    assert float((logits.argmax(1) == ev.y).mean()) > 0.9


def test_choose_rank_and_error() -> None:
    s = np.array([4.0, 2.0, 1.0, 1.0])
    assert choose_rank(s, LowRankConfig(energy=0.7)) == 1  # 16 / 22 = 0.727
    assert choose_rank(s, LowRankConfig(energy=0.8)) == 2  # 20 / 22 = 0.909
    assert choose_rank(s, LowRankConfig(energy=0.95)) == 3  # 21 / 22 = 0.955
    assert choose_rank(s, LowRankConfig(energy=1.0)) == 4
    assert choose_rank(s, LowRankConfig(rank=9)) == 4
    assert relative_error(s, 2) == pytest.approx(np.sqrt(2 / 22))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"energy": 0.0}, "energy must be in"),
        ({"energy": 1.5}, "energy must be in"),
        ({"energy": None}, "needs energy"),
        ({"rank": 0}, "rank must be an int"),
        ({"rank": 2.5}, "rank must be an int"),
        ({"min_size": 0}, "min_size"),
        ({"op_types": ("Conv",)}, "op_types"),
    ],
)
def test_bad_config(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        LowRankConfig(**options)


def test_external_data_models_are_read_into_the_result(tmp_path: Path) -> None:
    path = tmp_path / "mlp.onnx"
    ir.save(ember.ir.load_model(zoo.model_path("mnist_mlp")), path, external_data="mlp.data")
    out, layers = lowrank(path, LowRankConfig(rank=8))
    assert sum(layer.replaced for layer in layers) == 2
    x = zoo.load_eval("mnist_mlp").x[:4]
    assert ember.load(out).run({"input": x})["logits"].shape == (4, 10)
