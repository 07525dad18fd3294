"""ai.onnx.ml ops against small Python twins (a dict look-up per element, a recursive walk per row
and tree): every attribute form, odd shapes, the defaults, and the errors a user reads."""

from __future__ import annotations

import math

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

import ember
from ember.errors import ExecutionError
from ember.ops.ml import (
    ArrayFeatureExtractor,
    Binarizer,
    Imputer,
    LabelEncoder,
    LabelEncoder_4,
    LinearClassifier,
    LinearRegressor,
    Normalizer,
    OneHotEncoder,
    Scaler,
    TreeEnsemble_5,
)

RNG = np.random.default_rng(0)
ML = "ai.onnx.ml"


def strings(*values):
    out = np.empty(len(values), dtype=object)
    out[:] = values
    return out


def run_node(op_type, inputs, attrs=None, *, ml_opset=4, n_outputs=1):
    """One ai.onnx.ml node through ember.load; inputs are (name, array) pairs."""
    outs = [f"y{i}" for i in range(n_outputs)]
    node = helper.make_node(op_type, [n for n, _ in inputs], outs, domain=ML, **(attrs or {}))
    vi = []
    for n, a in inputs:
        dt = TensorProto.STRING if a.dtype == object else helper.np_dtype_to_tensor_dtype(a.dtype)
        vi.append(helper.make_tensor_value_info(n, dt, a.shape))
    out_vi = [helper.make_tensor_value_info(o, TensorProto.UNDEFINED, None) for o in outs]
    model = helper.make_model(
        helper.make_graph([node], "g", vi, out_vi),
        opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid(ML, ml_opset)],
    )
    result = ember.load(model).run(dict(inputs))
    return [result[o] for o in outs] if n_outputs > 1 else result[outs[0]]


# ----------------------------------------------------------------------------------------------
# LabelEncoder
# ----------------------------------------------------------------------------------------------


def test_label_encoder_v1_both_directions():
    classes = ["cat", "dog", "eel"]
    y = run_node(
        "LabelEncoder",
        [("x", strings("dog", "eel", "yak", "cat").reshape(2, 2))],
        {"classes_strings": classes, "default_int64": -7},
        ml_opset=1,
    )
    np.testing.assert_array_equal(y, [[1, 2], [-7, 0]])
    assert y.dtype == np.int64
    y = LabelEncoder(np.array([2, -1, 0, 3], np.int64), classes_strings=classes)
    assert y.dtype == object
    assert y.tolist() == ["eel", "_Unused", "cat", "_Unused"]


def test_label_encoder_v2_lists():
    x = np.array([[1.5, np.nan], [2.0, -3.0]], np.float32)
    y = run_node(
        "LabelEncoder",
        [("x", x)],
        {"keys_floats": [1.5, float("nan"), 2.0], "values_strings": ["a", "nan", "c"]},
        ml_opset=2,
    )
    assert y.tolist() == [["a", "nan"], ["c", "_Unused"]]
    y = run_node(
        "LabelEncoder",
        [("x", np.array([5, 7, 9], np.int64))],
        {"keys_int64s": [7, 5], "values_floats": [0.5, 1.5]},
        ml_opset=2,
    )
    assert y.dtype == np.float32
    np.testing.assert_array_equal(y, [1.5, 0.5, -0.0])
    assert np.signbit(y[2])  # default_float is -0.0


@pytest.mark.parametrize("dtype", [np.int16, np.int32, np.int64, np.float64])
def test_label_encoder_v4_tensor_keys_and_values(dtype):
    keys = numpy_helper.from_array(np.array([3, 1, 4, 1], dtype), "keys")
    values = numpy_helper.from_array(np.array([30, 10, 40, 11], np.int16), "values")
    x = np.array([[1, 2, 3], [4, 1, 0]], dtype)
    y = run_node("LabelEncoder", [("x", x)], {"keys_tensor": keys, "values_tensor": values})
    # the repeated key 1 maps through its last occurrence; a missing key gives -1
    np.testing.assert_array_equal(y, [[11, -1, 30], [40, 11, -1]])
    assert y.dtype == np.int16


def test_label_encoder_v4_defaults_and_nan_keys():
    keys = np.array([np.nan, 1.0], np.float64)
    y = LabelEncoder_4(
        np.array([np.nan, -np.nan, 1.0, 2.0]),
        keys_tensor=keys,
        values_tensor=np.array([0.5, 1.5], np.float32),
    )
    np.testing.assert_array_equal(y, [0.5, 0.5, 1.5, -0.0])  # every NaN matches the NaN key
    y = LabelEncoder_4(strings("a", "b"), keys_strings=["a"], values_tensor=strings("A"))
    assert y.tolist() == ["A", "_Unused"]
    y = LabelEncoder_4(
        strings("a", "b"),
        keys_strings=["a"],
        values_tensor=np.array([4], np.int32),
        default_tensor=np.array([9], np.int32),
    )
    np.testing.assert_array_equal(y, [4, 9])
    assert y.dtype == np.int32
    y = LabelEncoder_4(np.zeros((0, 3), np.int64), keys_int64s=[1], values_int64s=[2])
    assert y.shape == (0, 3) and y.dtype == np.int64


def test_label_encoder_errors():
    x = np.array([1, 2], np.int64)
    with pytest.raises(ValueError, match=r"exactly one of keys_floats, .*; got keys_int64s, keys_"):
        LabelEncoder_4(x, keys_int64s=[1], keys_tensor=np.array([1]), values_int64s=[1])
    with pytest.raises(ValueError, match=r"exactly one of values_floats.*got none"):
        LabelEncoder_4(x, keys_int64s=[1])
    with pytest.raises(ValueError, match="same length, got 2 keys and 1 values"):
        LabelEncoder_4(x, keys_int64s=[1, 2], values_int64s=[1])
    with pytest.raises(TypeError, match="the keys are string but the input is int64"):
        LabelEncoder_4(x, keys_strings=["a"], values_int64s=[1])
    with pytest.raises(ValueError, match=r"default_tensor must hold one value, got shape \(2,\)"):
        LabelEncoder_4(
            x, keys_int64s=[1], values_tensor=np.array([1]), default_tensor=np.array([1, 2])
        )
    with pytest.raises(TypeError, match=r"default_tensor .* must have the type of values_tensor"):
        LabelEncoder_4(x, keys_int64s=[1], values_tensor=np.array([1]), default_tensor=strings("a"))
    with pytest.raises(ExecutionError, match="LabelEncoder needs exactly one of keys_"):
        run_node("LabelEncoder", [("x", x)], {"values_int64s": [1]})


# ----------------------------------------------------------------------------------------------
# Binarizer, ArrayFeatureExtractor, Scaler, Normalizer, OneHotEncoder, Imputer
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int32, np.int64])
def test_binarizer(dtype):
    x = np.array([[-2, 0, 1], [3, 2, 1]], dtype)
    y = run_node("Binarizer", [("x", x)], {"threshold": 1.0})
    np.testing.assert_array_equal(y, [[0, 0, 0], [1, 1, 0]])
    assert y.dtype == dtype
    np.testing.assert_array_equal(Binarizer(x), x > 0)  # default threshold 0
    assert Binarizer(np.array([np.nan], np.float32))[0] == 0


def test_array_feature_extractor_shapes():
    x = np.arange(24, dtype=np.float32).reshape(2, 3, 4)
    y = run_node("ArrayFeatureExtractor", [("x", x), ("i", np.array([[3, 0, 3]], np.int64))])
    np.testing.assert_array_equal(y, x[..., [3, 0, 3]])
    y = ArrayFeatureExtractor(np.array([5, 6, 7], np.int64), np.array([2, 1]))
    np.testing.assert_array_equal(y, [[7, 6]])  # a 1-D input gives one row
    y = ArrayFeatureExtractor(strings("a", "b", "c").reshape(1, 3), np.array([1]))
    assert y.tolist() == [["b"]]
    with pytest.raises(ValueError, match="index 4 is out of range for a last dimension of 4"):
        ArrayFeatureExtractor(x, np.array([0, 4]))
    with pytest.raises(ValueError, match="index -1 is out of range"):
        ArrayFeatureExtractor(x, np.array([-1]))


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, np.int32])
def test_scaler(dtype):
    x = np.array([[1, 2, 3], [4, 5, 6]], dtype)
    y = run_node("Scaler", [("x", x)], {"offset": [1.0, 2.0, 3.0], "scale": [0.5, 2.0, -1.0]})
    np.testing.assert_allclose(y, (x - [1, 2, 3]) * [0.5, 2.0, -1.0])
    assert y.dtype == np.float32
    np.testing.assert_allclose(Scaler(x, offset=[1.0], scale=[3.0]), (x - 1.0) * 3.0)
    np.testing.assert_allclose(Scaler(x, scale=[2.0]), x * 2.0)
    with pytest.raises(
        ValueError, match=r"Scaler scale must have 1 or 3 \(features\) values, got 2"
    ):
        Scaler(x, offset=[0.0], scale=[1.0, 2.0])
    with pytest.raises(ValueError, match="offset and scale must have the same length, got 3 and 1"):
        Scaler(x, offset=[0.0, 1.0, 2.0], scale=[1.0])


def normalizer_twin(row, norm):
    row = [float(v) for v in row]
    if norm == "MAX":
        d = max(row)
    elif norm == "L1":
        d = sum(abs(v) for v in row)
    else:
        d = math.sqrt(sum(v * v for v in row))
    return [v / d if d != 0 else v for v in row]


@pytest.mark.parametrize("norm", ["MAX", "L1", "L2"])
def test_normalizer(norm):
    x = np.array([[1.0, -4.0, 2.0], [0.0, 0.0, 0.0], [-3.0, -1.0, -2.0]], np.float64)
    y = run_node("Normalizer", [("x", x)], {"norm": norm})
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, [normalizer_twin(r, norm) for r in x], rtol=1e-6)
    y1 = Normalizer(np.array([3, 4], np.int64), norm=norm)
    np.testing.assert_allclose(y1, normalizer_twin([3, 4], norm), rtol=1e-6)


def test_normalizer_errors():
    with pytest.raises(ValueError, match="norm must be 'MAX', 'L1' or 'L2', got 'L3'"):
        Normalizer(np.ones((2, 2)), norm="L3")
    with pytest.raises(ValueError, match=r"1-D or 2-D \(N, F\) input, got shape \(1, 2, 2\)"):
        Normalizer(np.ones((1, 2, 2)))


def test_one_hot_encoder():
    y = run_node(
        "OneHotEncoder",
        [("x", strings("b", "z", "a", "b").reshape(2, 2))],
        {"cats_strings": ["a", "b", "c"]},
    )
    assert y.shape == (2, 2, 3) and y.dtype == np.float32
    np.testing.assert_array_equal(y, [[[0, 1, 0], [0, 0, 0]], [[1, 0, 0], [0, 1, 0]]])
    y = OneHotEncoder(np.array([2.7, -1.0, 5.0]), cats_int64s=[5, 2, -1])
    np.testing.assert_array_equal(y, [[0, 1, 0], [0, 0, 1], [1, 0, 0]])  # 2.7 truncates to 2
    with pytest.raises(ValueError, match="value 7 is not a category and zeros=0"):
        OneHotEncoder(np.array([5, 7], np.int64), cats_int64s=[5], zeros=0)
    with pytest.raises(ValueError, match="exactly one of cats_int64s, cats_strings; got none"):
        OneHotEncoder(np.array([1]))
    with pytest.raises(TypeError, match="cats_strings needs a string input"):
        OneHotEncoder(np.array([1]), cats_strings=["a"])


def test_imputer():
    x = np.array([[np.nan, 1.0, 2.0], [3.0, np.nan, np.nan]], np.float32)
    y = run_node(
        "Imputer",
        [("x", x)],
        {"imputed_value_floats": [10.0, 20.0, 30.0], "replaced_value_float": float("nan")},
    )
    np.testing.assert_array_equal(y, [[10, 1, 2], [3, 20, 30]])
    assert y.dtype == np.float32
    xi = np.array([[0, 5], [-1, 0]], np.int64)
    np.testing.assert_array_equal(Imputer(xi, imputed_value_int64s=[9]), [[9, 5], [-1, 9]])
    np.testing.assert_array_equal(
        Imputer(xi, imputed_value_int64s=[7, 8], replaced_value_int64=-1), [[0, 5], [7, 0]]
    )
    with pytest.raises(ValueError, match="with a float32 input needs imputed_value_floats"):
        Imputer(x, imputed_value_int64s=[1])
    with pytest.raises(ValueError, match=r"must have 1 or 3 \(features\) values, got 2"):
        Imputer(x, imputed_value_floats=[1.0, 2.0])


# ----------------------------------------------------------------------------------------------
# Linear models
# ----------------------------------------------------------------------------------------------


def test_linear_regressor():
    x = RNG.standard_normal((5, 3)).astype(np.float32)
    W = RNG.standard_normal((2, 3))
    b = np.array([0.5, -1.0])
    y = run_node(
        "LinearRegressor",
        [("x", x)],
        {"coefficients": W.reshape(-1).tolist(), "intercepts": b.tolist(), "targets": 2},
        ml_opset=1,
    )
    expected = x.astype(np.float64) @ W.T + b
    assert y.shape == (5, 2) and y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-5)
    y = LinearRegressor(x, coefficients=W[0].tolist(), post_transform="LOGISTIC")
    np.testing.assert_allclose(y[:, 0], 1 / (1 + np.exp(-(x @ W[0]))), rtol=1e-5)
    with pytest.raises(ValueError, match="give 2 targets, but targets=3"):
        LinearRegressor(x, coefficients=W.reshape(-1).tolist(), targets=3)
    with pytest.raises(ValueError, match="4 coefficients do not split into rows of 3 features"):
        LinearRegressor(x, coefficients=[1.0] * 4)
    with pytest.raises(ValueError, match="needs 2 intercepts, got 1"):
        LinearRegressor(x, coefficients=W.reshape(-1).tolist(), intercepts=[1.0], targets=2)
    with pytest.raises(ValueError, match="post_transform must be one of"):
        LinearRegressor(x, coefficients=W[0].tolist(), post_transform="TANH")


def softmax_rows(s):
    e = np.exp(s - s.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_linear_classifier_multiclass():
    x = RNG.standard_normal((6, 4))
    W = RNG.standard_normal((3, 4))
    b = RNG.standard_normal(3)
    labels, scores = run_node(
        "LinearClassifier",
        [("x", x)],
        {
            "coefficients": W.reshape(-1).tolist(),
            "intercepts": b.tolist(),
            "classlabels_strings": ["a", "b", "c"],
            "post_transform": "SOFTMAX",
        },
        ml_opset=1,
        n_outputs=2,
    )
    raw = x @ W.T + b
    np.testing.assert_allclose(scores, softmax_rows(raw), rtol=1e-5)
    assert scores.dtype == np.float32
    assert labels.tolist() == [["a", "b", "c"][i] for i in raw.argmax(axis=1)]


def test_linear_classifier_binary_single_row():
    x = np.array([[1.0, 2.0], [-3.0, 0.5]], np.float32)
    w = [0.5, -0.25]
    labels, scores = LinearClassifier(
        x, coefficients=w, intercepts=[0.1], classlabels_ints=[7, 9], post_transform="LOGISTIC"
    )
    s = x.astype(np.float64) @ w + 0.1  # [0.1, -1.525]
    np.testing.assert_array_equal(labels, [9, 7])
    np.testing.assert_allclose(scores[:, 1], 1 / (1 + np.exp(-s)), rtol=1e-6)
    np.testing.assert_allclose(scores.sum(axis=1), 1.0, rtol=1e-6)
    labels, scores = LinearClassifier(x, coefficients=w, classlabels_ints=[7, 9])
    np.testing.assert_allclose(scores, np.stack([-(x @ w), x @ w], axis=1), rtol=1e-6)


def test_linear_classifier_errors():
    x = np.ones((2, 2), np.float32)
    with pytest.raises(ValueError, match="exactly one of classlabels_ints, classlabels_strings"):
        LinearClassifier(x, coefficients=[1.0, 1.0])
    with pytest.raises(ValueError, match="has 2 score columns but 3 labels"):
        LinearClassifier(x, coefficients=[1.0] * 4, classlabels_ints=[1, 2, 3])
    with pytest.raises(ValueError, match="needs the coefficients attribute"):
        LinearClassifier(x, classlabels_ints=[1, 2])


# ----------------------------------------------------------------------------------------------
# TreeEnsemble
# ----------------------------------------------------------------------------------------------


def random_ensemble(rng, *, n_trees, n_features, n_targets, depth, base=0):
    """Random trees over small integer splits (base..base+3) so every comparison mode (and NaN)
    is exercised."""
    n = {
        k: []
        for k in (
            "modes",
            "featureids",
            "splits",
            "truenodeids",
            "trueleafs",
            "falsenodeids",
            "falseleafs",
            "missing",
        )
    }
    sets, weights, targets, roots = [], [], [], []

    def leaf():
        weights.append(float(rng.normal()))
        targets.append(int(rng.integers(n_targets)))
        return len(weights) - 1, 1

    def node(d):
        i = len(n["modes"])
        mode = int(rng.integers(7))
        n["modes"].append(mode)
        n["featureids"].append(int(rng.integers(n_features)))
        n["splits"].append(base + float(rng.integers(0, 4)) + (0.5 if rng.random() < 0.3 else 0.0))
        n["missing"].append(int(rng.random() < 0.5))
        if mode == 6:
            sets.append(
                [base + float(v) for v in rng.choice(4, size=rng.integers(1, 4), replace=False)]
            )
        for side in ("true", "false"):
            n[f"{side}nodeids"].append(0)
            n[f"{side}leafs"].append(0)
        for side in ("true", "false"):
            child, is_leaf = leaf() if d <= 1 or rng.random() < 0.25 else node(d - 1)
            n[f"{side}nodeids"][i] = child
            n[f"{side}leafs"][i] = is_leaf
        return i, 0

    for _ in range(n_trees):
        roots.append(node(depth)[0])
    # sets are listed in the order their nodes appear in nodes_modes
    membership = [v for members in sets for v in [*members, float("nan")]]
    return n, sets, weights, targets, roots, membership


def tree_twin(x, n, sets, weights, targets, roots, *, n_targets, aggregate):
    """Walk each row through each tree recursively (the spec's semantics, Python floats)."""
    member_index = np.cumsum([m == 6 for m in n["modes"]]) - 1
    out = np.zeros((x.shape[0], n_targets))
    for r, row in enumerate(x.astype(np.float64)):
        per_target = [[] for _ in range(n_targets)]
        for root in roots:
            i, is_leaf = root, 0
            while not is_leaf:
                v, s, m = float(row[n["featureids"][i]]), n["splits"][i], n["modes"][i]
                cond = [
                    v <= s,
                    v < s,
                    v >= s,
                    v > s,
                    v == s,
                    v != s,
                    m == 6 and v in sets[member_index[i]],
                ][m]
                cond = cond or (bool(n["missing"][i]) and math.isnan(v))
                side = "true" if cond else "false"
                i, is_leaf = n[f"{side}nodeids"][i], n[f"{side}leafs"][i]
            per_target[targets[i]].append(weights[i])
        for t, ws in enumerate(per_target):
            if not ws:
                continue
            out[r, t] = {
                "SUM": sum(ws),
                "AVERAGE": sum(ws) / len(roots),
                "MIN": min(ws),
                "MAX": max(ws),
            }[aggregate]
    return out


def tree_attrs(n, weights, targets, roots, membership, x_dtype, **extra):
    tensor_type = np.float64 if x_dtype == np.float64 else np.float32
    attrs = {
        "nodes_modes": numpy_helper.from_array(np.array(n["modes"], np.uint8), "modes"),
        "nodes_featureids": n["featureids"],
        "nodes_splits": numpy_helper.from_array(np.array(n["splits"], tensor_type), "splits"),
        "nodes_truenodeids": n["truenodeids"],
        "nodes_trueleafs": n["trueleafs"],
        "nodes_falsenodeids": n["falsenodeids"],
        "nodes_falseleafs": n["falseleafs"],
        "nodes_missing_value_tracks_true": n["missing"],
        "leaf_targetids": targets,
        "leaf_weights": numpy_helper.from_array(np.array(weights, tensor_type), "weights"),
        "tree_roots": roots,
        **extra,
    }
    if membership:
        attrs["membership_values"] = numpy_helper.from_array(
            np.array(membership, tensor_type), "members"
        )
    return attrs


@pytest.mark.parametrize("aggregate", [0, 1, 2, 3])
@pytest.mark.parametrize("x_dtype", [np.float32, np.float64])
def test_tree_ensemble_matches_twin(aggregate, x_dtype):
    rng = np.random.default_rng(aggregate)
    n, sets, weights, targets, roots, membership = random_ensemble(
        rng, n_trees=5, n_features=3, n_targets=3, depth=4
    )
    x = rng.integers(0, 4, (11, 3)).astype(x_dtype)
    x[rng.random(x.shape) < 0.15] = np.nan
    attrs = tree_attrs(
        n, weights, targets, roots, membership, x_dtype, n_targets=3, aggregate_function=aggregate
    )
    y = run_node("TreeEnsemble", [("x", x)], attrs, ml_opset=5)
    aggregate_name = ["AVERAGE", "SUM", "MIN", "MAX"][aggregate]
    expected = tree_twin(x, n, sets, weights, targets, roots, n_targets=3, aggregate=aggregate_name)
    assert y.dtype == x_dtype and y.shape == (11, 3)
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("post", [1, 2, 3, 4])
def test_tree_ensemble_post_transforms(post):
    rng = np.random.default_rng(7)
    n, _, weights, targets, roots, membership = random_ensemble(
        rng, n_trees=4, n_features=2, n_targets=3, depth=3
    )
    x = rng.integers(0, 4, (9, 2)).astype(np.float64)
    attrs = tree_attrs(n, weights, targets, roots, membership, np.float64, n_targets=3)
    raw = TreeEnsemble_5(x, **{k: _attr_value(v) for k, v in attrs.items()})
    y = TreeEnsemble_5(x, **{k: _attr_value(v) for k, v in attrs.items()}, post_transform=post)
    if post == 1:
        np.testing.assert_allclose(y, softmax_rows(raw), rtol=1e-12)
    elif post == 2:
        np.testing.assert_allclose(y, 1 / (1 + np.exp(-raw)), rtol=1e-12)
    elif post == 3:
        zero = raw == 0
        e = np.where(zero, 0.0, np.exp(raw - raw.max(axis=1, keepdims=True)))
        np.testing.assert_allclose(y, e / e.sum(axis=1, keepdims=True), rtol=1e-12)
        assert (y[zero] == 0).all()
    else:
        # PROBIT is the inverse normal CDF (to the approximation's ~1e-3): Phi(y) recovers raw.
        inside = (raw > 0.01) & (raw < 0.99)
        phi = 0.5 * (1 + np.vectorize(math.erf)(y[inside] / math.sqrt(2)))
        np.testing.assert_allclose(phi, raw[inside], atol=2e-3)


def _attr_value(v):
    """An onnx TensorProto attribute as the array ember hands the op."""
    return numpy_helper.to_array(v) if isinstance(v, TensorProto) else v


def test_tree_ensemble_matches_onnx_reference():
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(3)
    # NOTE: base=1 because onnx.reference ends a membership set at a 0.0 member (it tests the
    # member's truth value), which misreads every later set.
    n, _, weights, targets, roots, membership = random_ensemble(
        rng, n_trees=6, n_features=4, n_targets=2, depth=5, base=1
    )
    x = rng.integers(1, 5, (20, 4)).astype(np.float32)
    x[rng.random(x.shape) < 0.1] = np.nan
    attrs = tree_attrs(n, weights, targets, roots, membership, np.float32, n_targets=2)
    node = helper.make_node("TreeEnsemble", ["x"], ["y"], domain=ML, **attrs)
    model = helper.make_model(
        helper.make_graph(
            [node],
            "g",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
            [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        ),
        opset_imports=[helper.make_opsetid("", 19), helper.make_opsetid(ML, 5)],
    )
    expected = ReferenceEvaluator(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(ember.load(model).run({"x": x})["y"], expected, rtol=1e-6)


def test_tree_ensemble_single_leaf_tree_and_empty_targets():
    # A tree that is one leaf: one node whose branches both name leaf 0.
    kw = {
        "nodes_modes": np.array([0], np.uint8),
        "nodes_featureids": [0],
        "nodes_splits": np.array([0.0]),
        "nodes_truenodeids": [0],
        "nodes_trueleafs": [1],
        "nodes_falsenodeids": [0],
        "nodes_falseleafs": [1],
        "leaf_targetids": [1],
        "leaf_weights": np.array([2.5]),
        "tree_roots": [0],
        "n_targets": 3,
    }
    x = np.array([[1.0], [-1.0], [np.nan]])
    y = TreeEnsemble_5(x, **kw)
    np.testing.assert_array_equal(y, [[0, 2.5, 0]] * 3)
    # targets no leaf reaches score 0 under MIN and MAX too
    np.testing.assert_array_equal(TreeEnsemble_5(x, **kw, aggregate_function=2), y)
    y16 = TreeEnsemble_5(x.astype(np.float16), **kw, aggregate_function=3)
    assert y16.dtype == np.float16
    np.testing.assert_array_equal(y16, y)
    assert TreeEnsemble_5(np.zeros((0, 1)), **kw).shape == (0, 3)


def test_tree_ensemble_errors():
    base = {
        "nodes_modes": np.array([0, 0], np.uint8),
        "nodes_featureids": [0, 1],
        "nodes_splits": np.array([0.0, 1.0]),
        "nodes_truenodeids": [1, 0],
        "nodes_trueleafs": [0, 1],
        "nodes_falsenodeids": [0, 1],
        "nodes_falseleafs": [1, 1],
        "leaf_targetids": [0, 0],
        "leaf_weights": np.array([1.0, 2.0]),
        "tree_roots": [0],
    }
    x = np.zeros((2, 2))
    TreeEnsemble_5(x, **base)  # well formed

    def bad(**changes):
        return TreeEnsemble_5(x, **{**base, **changes})

    with pytest.raises(ValueError, match="a path never reaches a leaf"):
        bad(nodes_trueleafs=[0, 0], nodes_falseleafs=[0, 0], nodes_falsenodeids=[1, 0])
    with pytest.raises(ValueError, match=r"nodes_truenodeids\[0\] = 5 is not a valid node index"):
        bad(nodes_truenodeids=[5, 0])
    with pytest.raises(ValueError, match=r"nodes_falsenodeids\[1\] = 2 is not a valid leaf index"):
        bad(nodes_falsenodeids=[0, 2])
    with pytest.raises(ValueError, match=r"nodes_featureids must lie in \[0, 2\)"):
        bad(nodes_featureids=[0, 2])
    with pytest.raises(ValueError, match=r"nodes_modes must lie in 0\.\.6, got 9"):
        bad(nodes_modes=np.array([0, 9], np.uint8))
    with pytest.raises(ValueError, match="nodes_splits has 1 entries but nodes_modes has 2"):
        bad(nodes_splits=np.array([0.0]))
    with pytest.raises(ValueError, match="leaf_targetids has 1 entries but leaf_weights has 2"):
        bad(leaf_targetids=[0])
    with pytest.raises(ValueError, match=r"leaf_targetids must lie in \[0, n_targets=1\)"):
        bad(leaf_targetids=[0, 1], n_targets=1)
    with pytest.raises(ValueError, match=r"aggregate_function must be 0 .*got 4"):
        bad(aggregate_function=4)
    with pytest.raises(ValueError, match=r"post_transform must be 0 .*got -1"):
        bad(post_transform=-1)
    with pytest.raises(ValueError, match="BRANCH_MEMBER nodes need the membership_values"):
        bad(nodes_modes=np.array([6, 0], np.uint8))
    with pytest.raises(ValueError, match="holds 2 NaN-terminated sets but there are 1 BRANCH"):
        bad(
            nodes_modes=np.array([6, 0], np.uint8),
            membership_values=np.array([1.0, np.nan, 2.0, np.nan]),
        )
    with pytest.raises(ValueError, match=r"tree_roots must index nodes in \[0, 2\)"):
        bad(tree_roots=[2])
    with pytest.raises(ValueError, match=r"needs the attribute.*leaf_weights"):
        bad(leaf_weights=None)
    with pytest.raises(ValueError, match=r"2-D \(N, F\) input, got shape \(2,\)"):
        TreeEnsemble_5(np.zeros(2), **base)
    with pytest.raises(TypeError, match="float16, float or double input, got int64"):
        TreeEnsemble_5(np.zeros((2, 2), np.int64), **base)
