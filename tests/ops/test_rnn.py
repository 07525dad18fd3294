"""RNN/GRU/LSTM against float64 twins that walk one batch entry and one time step at a time."""

from __future__ import annotations

import numpy as np
import pytest
from onnx import TensorProto, helper

import ember
from ember.errors import ExecutionError
from ember.ops.registry import OpContext
from ember.ops.rnn import GRU, GRU_14, LSTM, LSTM_14, RNN, RNN_14

RNG = np.random.default_rng(0)
EXACT = OpContext(exact=True)


def rand(*shape: int, dtype=np.float32) -> np.ndarray:
    return RNG.uniform(-1, 1, shape).astype(dtype)


def sigmoid(x):
    return 1 / (1 + np.exp(-x))


# ----------------------------------------------------------------------------------------------
# Twins: plain per-entry loops in float64. Layout 0; D directions; lens per batch entry.
# ----------------------------------------------------------------------------------------------


def order(direction: str, d: int, L: int) -> range:
    backward = direction == "reverse" or (direction == "bidirectional" and d == 1)
    return range(L - 1, -1, -1) if backward else range(L)


def twin_rnn(X, W, R, B, lens, h0, direction, f=np.tanh, clip=None):
    X, W, R, B, h0 = (a.astype(np.float64) for a in (X, W, R, B, h0))
    T, N, _ = X.shape
    D, H = W.shape[0], R.shape[-1]
    Y = np.zeros((T, D, N, H))
    Yh = np.zeros((D, N, H))
    cl = (lambda v: np.clip(v, -clip, clip)) if clip else (lambda v: v)
    for d in range(D):
        for b in range(N):
            h = h0[d, b]
            for t in order(direction, d, lens[b]):
                h = f(cl(W[d] @ X[t, b] + R[d] @ h + B[d, :H] + B[d, H:]))
                Y[t, d, b] = h
            Yh[d, b] = h
    return Y, Yh


def twin_gru(X, W, R, B, lens, h0, direction, linear_before_reset=0):
    X, W, R, B, h0 = (a.astype(np.float64) for a in (X, W, R, B, h0))
    T, N, _ = X.shape
    D, H = W.shape[0], R.shape[-1]
    Y = np.zeros((T, D, N, H))
    Yh = np.zeros((D, N, H))
    for d in range(D):
        Wz, Wr, Wh = np.split(W[d], 3)
        Rz, Rr, Rh = np.split(R[d], 3)
        wbz, wbr, wbh, rbz, rbr, rbh = np.split(B[d], 6)
        for b in range(N):
            h = h0[d, b]
            for t in order(direction, d, lens[b]):
                x = X[t, b]
                z = sigmoid(Wz @ x + Rz @ h + wbz + rbz)
                r = sigmoid(Wr @ x + Rr @ h + wbr + rbr)
                if linear_before_reset:
                    n = np.tanh(Wh @ x + r * (Rh @ h + rbh) + wbh)
                else:
                    n = np.tanh(Wh @ x + Rh @ (r * h) + rbh + wbh)
                h = (1 - z) * n + z * h
                Y[t, d, b] = h
            Yh[d, b] = h
    return Y, Yh


def twin_lstm(X, W, R, B, lens, h0, c0, P, direction, input_forget=0):
    X, W, R, B, h0, c0, P = (a.astype(np.float64) for a in (X, W, R, B, h0, c0, P))
    T, N, _ = X.shape
    D, H = W.shape[0], R.shape[-1]
    Y = np.zeros((T, D, N, H))
    Yh = np.zeros((D, N, H))
    Yc = np.zeros((D, N, H))
    for d in range(D):
        Wi, Wo, Wf, Wc = np.split(W[d], 4)
        Ri, Ro, Rf, Rc = np.split(R[d], 4)
        bias = B[d, : 4 * H] + B[d, 4 * H :]
        bi, bo, bf, bc = np.split(bias, 4)
        pi, po, pf = np.split(P[d], 3)
        for b in range(N):
            h, c = h0[d, b], c0[d, b]
            for t in order(direction, d, lens[b]):
                x = X[t, b]
                i = sigmoid(Wi @ x + Ri @ h + bi + pi * c)
                f = 1 - i if input_forget else sigmoid(Wf @ x + Rf @ h + bf + pf * c)
                c = f * c + i * np.tanh(Wc @ x + Rc @ h + bc)
                o = sigmoid(Wo @ x + Ro @ h + bo + po * c)
                h = o * np.tanh(c)
                Y[t, d, b] = h
            Yh[d, b], Yc[d, b] = h, c
    return Y, Yh, Yc


def params(D, G, I, H, N):
    return rand(D, G * H, I), rand(D, G * H, H), rand(D, 2 * G * H), rand(D, N, H)


# ----------------------------------------------------------------------------------------------
# Sweeps
# ----------------------------------------------------------------------------------------------

DIRECTIONS = ["forward", "reverse", "bidirectional"]


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("lens", [None, [5, 3, 0]])
def test_rnn_matches_twin(direction, lens):
    T, N, I, H = 5, 3, 4, 6
    D = 2 if direction == "bidirectional" else 1
    X = rand(T, N, I)
    W, R, B, h0 = params(D, 1, I, H, N)
    seq = None if lens is None else np.array(lens, dtype=np.int32)
    Y, Yh = RNN_14(X, W, R, B, seq, h0, direction=direction, ctx=EXACT)
    eY, eYh = twin_rnn(X, W, R, B, lens or [T] * N, h0, direction)
    assert Y.dtype == np.float32 and Y.shape == (T, D, N, H)
    np.testing.assert_allclose(Y, eY, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Yh, eYh, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("linear_before_reset", [0, 1])
@pytest.mark.parametrize("lens", [None, [2, 4]])
def test_gru_matches_twin(direction, linear_before_reset, lens):
    T, N, I, H = 4, 2, 3, 5
    D = 2 if direction == "bidirectional" else 1
    X = rand(T, N, I)
    W, R, B, h0 = params(D, 3, I, H, N)
    seq = None if lens is None else np.array(lens, dtype=np.int32)
    Y, Yh = GRU_14(
        X, W, R, B, seq, h0, direction=direction, linear_before_reset=linear_before_reset, ctx=EXACT
    )
    eY, eYh = twin_gru(X, W, R, B, lens or [T] * N, h0, direction, linear_before_reset)
    np.testing.assert_allclose(Y, eY, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Yh, eYh, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("direction", DIRECTIONS)
@pytest.mark.parametrize("input_forget", [0, 1])
@pytest.mark.parametrize("lens", [None, [3, 1, 2]])
def test_lstm_matches_twin(direction, input_forget, lens):
    T, N, I, H = 3, 3, 2, 4
    D = 2 if direction == "bidirectional" else 1
    X = rand(T, N, I)
    W, R, B, h0 = params(D, 4, I, H, N)
    c0, P = rand(D, N, H), rand(D, 3 * H)
    seq = None if lens is None else np.array(lens, dtype=np.int32)
    Y, Yh, Yc = LSTM_14(
        X, W, R, B, seq, h0, c0, P, direction=direction, input_forget=input_forget, ctx=EXACT
    )
    eY, eYh, eYc = twin_lstm(X, W, R, B, lens or [T] * N, h0, c0, P, direction, input_forget)
    np.testing.assert_allclose(Y, eY, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Yh, eYh, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Yc, eYc, rtol=1e-5, atol=1e-6)


def test_layout_1_is_batch_major():
    T, N, I, H = 4, 3, 2, 5
    X = rand(T, N, I)
    W, R, B, h0 = params(2, 4, I, H, N)
    c0 = rand(2, N, H)
    Y0, Yh0, Yc0 = LSTM_14(X, W, R, B, None, h0, c0, direction="bidirectional")
    Y1, Yh1, Yc1 = LSTM_14(
        X.transpose(1, 0, 2),
        W,
        R,
        B,
        None,
        h0.transpose(1, 0, 2),
        c0.transpose(1, 0, 2),
        direction="bidirectional",
        layout=1,
    )
    np.testing.assert_allclose(Y1, Y0.transpose(2, 0, 1, 3), rtol=1e-6)
    np.testing.assert_allclose(Yh1, Yh0.transpose(1, 0, 2), rtol=1e-6)
    np.testing.assert_allclose(Yc1, Yc0.transpose(1, 0, 2), rtol=1e-6)


def test_defaults_zero_bias_and_states():
    X = rand(3, 2, 4)
    W, R, _, _ = params(1, 3, 4, 5, 2)
    Y, Yh = GRU(X, W, R)
    eY, eYh = twin_gru(X, W, R, np.zeros((1, 30)), [3, 3], np.zeros((1, 2, 5)), "forward")
    np.testing.assert_allclose(Y, eY, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(Yh, eYh, rtol=1e-5, atol=1e-6)


def test_sequence_lens_zero_keeps_initial_state_and_outputs_zeros():
    X = rand(3, 2, 2)
    W, R, B, h0 = params(1, 1, 2, 3, 2)
    Y, Yh = RNN(X, W, R, B, np.array([0, 3]), h0)
    assert not Y[:, :, 0].any()
    np.testing.assert_array_equal(Yh[0, 0], h0[0, 0])


def test_clip_bounds_the_pre_activations():
    X = rand(4, 2, 3) * 100
    W, R, B, h0 = params(1, 1, 3, 4, 2)
    Y, _ = RNN(
        X,
        W,
        R,
        B,
        None,
        h0,
        activations=["Affine"],
        activation_alpha=[1.0],
        activation_beta=[0.0],
        clip=0.5,
    )
    assert np.abs(Y).max() <= 0.5 + 1e-6
    eY, _ = twin_rnn(X, W, R, B, [4, 4], h0, "forward", f=lambda v: v, clip=0.5)
    np.testing.assert_allclose(Y, eY, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("name", "alpha", "beta", "twin"),
    [
        ("Relu", [], [], lambda v: np.maximum(v, 0)),
        ("LeakyRelu", [0.3], [], lambda v: np.where(v >= 0, v, 0.3 * v)),
        ("ThresholdedRelu", [0.2], [], lambda v: np.where(v >= 0.2, v, 0)),
        ("ScaledTanh", [2.0], [0.5], lambda v: 2.0 * np.tanh(0.5 * v)),
        ("HardSigmoid", [0.3], [0.4], lambda v: np.clip(0.3 * v + 0.4, 0, 1)),
        ("Elu", [0.7], [], lambda v: np.where(v >= 0, v, 0.7 * np.expm1(v))),
        ("Softsign", [], [], lambda v: v / (1 + np.abs(v))),
        ("Softplus", [], [], lambda v: np.log1p(np.exp(v))),
        ("sigmoid", [], [], sigmoid),
    ],
)
def test_rnn_activation_functions(name, alpha, beta, twin):
    X = rand(3, 2, 3)
    W, R, B, h0 = params(1, 1, 3, 4, 2)
    Y, _ = RNN(
        X,
        W,
        R,
        B,
        None,
        h0,
        activations=[name],
        activation_alpha=alpha or None,
        activation_beta=beta or None,
        ctx=EXACT,
    )
    eY, _ = twin_rnn(X, W, R, B, [3, 3], h0, "forward", f=twin)
    np.testing.assert_allclose(Y, eY, rtol=1e-5, atol=1e-6)


def test_alpha_is_consumed_only_by_functions_that_take_it():
    # Bidirectional: (Tanh, LeakyRelu) — the one alpha goes to LeakyRelu.
    X = rand(3, 1, 2)
    W, R, B, h0 = params(2, 1, 2, 3, 1)
    Y, _ = RNN(
        X,
        W,
        R,
        B,
        None,
        h0,
        direction="bidirectional",
        activations=["Tanh", "LeakyRelu"],
        activation_alpha=[0.25],
    )
    eY, _ = twin_rnn(
        X, W[1:], R[1:], B[1:], [3], h0[1:], "reverse", f=lambda v: np.where(v >= 0, v, 0.25 * v)
    )
    np.testing.assert_allclose(Y[:, 1:], eY, rtol=1e-5, atol=1e-6)


def test_one_activation_set_serves_both_directions():
    X = rand(2, 1, 2)
    W, R, B, h0 = params(2, 3, 2, 3, 1)
    a = GRU(X, W, R, B, None, h0, direction="bidirectional", activations=["Sigmoid", "Tanh"])
    b = GRU(X, W, R, B, None, h0, direction="bidirectional")
    np.testing.assert_array_equal(a[0], b[0])


def test_exact_mode_keeps_the_dtype_and_is_closer():
    X = rand(20, 2, 8)
    W, R, B, _ = params(1, 4, 8, 16, 2)
    fast = LSTM(X, W, R, B)[0]
    exact = LSTM(X, W, R, B, ctx=EXACT)[0]
    ref = twin_lstm(
        X,
        W,
        R,
        B,
        [20, 20],
        np.zeros((1, 2, 16)),
        np.zeros((1, 2, 16)),
        np.zeros((1, 48)),
        "forward",
    )[0]
    assert fast.dtype == exact.dtype == np.float32
    assert np.abs(exact - ref).max() <= np.abs(fast - ref).max() + 1e-7
    np.testing.assert_allclose(exact, ref, rtol=1e-6, atol=1e-7)


def test_float64_and_float16_inputs_keep_their_dtype():
    for dtype in (np.float64, np.float16):
        X = rand(2, 1, 2, dtype=dtype)
        W, R = rand(1, 3, 2, dtype=dtype), rand(1, 3, 3, dtype=dtype)
        Y, Yh = RNN(X, W, R)
        assert Y.dtype == Yh.dtype == dtype


def test_empty_sequence():
    X = np.zeros((0, 2, 3), np.float32)
    W, R, B, h0 = params(1, 3, 3, 4, 2)
    Y, Yh = GRU(X, W, R, B, None, h0)
    assert Y.shape == (0, 1, 2, 4)
    np.testing.assert_array_equal(Yh, h0)


# ----------------------------------------------------------------------------------------------
# Bad values
# ----------------------------------------------------------------------------------------------


def test_bad_direction():
    W, R, _, _ = params(1, 1, 2, 3, 1)
    with pytest.raises(ValueError, match="direction must be forward, reverse or bidirectional"):
        RNN(rand(2, 1, 2), W, R, direction="sideways")


def test_direction_count_mismatch():
    W, R, _, _ = params(1, 1, 2, 3, 1)
    with pytest.raises(ValueError, match="needs 2 direction"):
        RNN(rand(2, 1, 2), W, R, direction="bidirectional")


def test_unknown_activation():
    W, R, _, _ = params(1, 1, 2, 3, 1)
    with pytest.raises(ValueError, match="unknown activation 'Swish'"):
        RNN(rand(2, 1, 2), W, R, activations=["Swish"])


def test_wrong_activation_count():
    W, R, _, _ = params(1, 4, 2, 3, 1)
    with pytest.raises(ValueError, match="activations needs 3 names"):
        LSTM(rand(2, 1, 2), W, R, activations=["Sigmoid", "Tanh"])


def test_hidden_size_mismatch():
    W, R, _, _ = params(1, 3, 2, 3, 1)
    with pytest.raises(ValueError, match="hidden_size=4"):
        GRU(rand(2, 1, 2), W, R, hidden_size=4)


def test_bad_bias_shape():
    W, R, _, _ = params(1, 3, 2, 3, 1)
    with pytest.raises(ValueError, match=r"B must have shape \(1, 18\)"):
        GRU(rand(2, 1, 2), W, R, rand(1, 9))


def test_bad_sequence_lens():
    W, R, _, _ = params(1, 1, 2, 3, 2)
    with pytest.raises(ValueError, match=r"sequence_lens must hold 2 lengths in \[0, 2\]"):
        RNN(rand(2, 2, 2), W, R, None, np.array([1, 5]))


def test_bad_peephole_shape():
    W, R, _, _ = params(1, 4, 2, 3, 1)
    with pytest.raises(ValueError, match=r"P must have shape \(1, 9\)"):
        LSTM(rand(2, 1, 2), W, R, None, None, None, None, rand(1, 3))


def test_bad_initial_state_shape():
    W, R, _, _ = params(1, 1, 2, 3, 2)
    with pytest.raises(
        ValueError, match=r"initial states must have shape \(2, 1, 3\), got \(1, 2, 3\)"
    ):
        RNN_14(rand(2, 2, 2).transpose(1, 0, 2), W, R, None, None, rand(1, 2, 3), layout=1)


def test_bad_layout():
    W, R, _, _ = params(1, 1, 2, 3, 1)
    with pytest.raises(ValueError, match="layout must be 0 or 1"):
        RNN_14(rand(2, 1, 2), W, R, layout=2)


# ----------------------------------------------------------------------------------------------
# Through the runtime
# ----------------------------------------------------------------------------------------------


def test_lstm_model_with_omitted_outputs_and_inputs():
    T, N, I, H = 3, 2, 2, 4
    X = rand(T, N, I)
    W, R, _, _ = params(1, 4, I, H, N)
    h0 = rand(1, N, H)
    node = helper.make_node("LSTM", ["X", "W", "R", "", "", "h0"], ["", "", "Yc"], hidden_size=H)
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape)
            for n, a in (("X", X), ("W", W), ("R", R), ("h0", h0))
        ],
        [helper.make_tensor_value_info("Yc", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    got = ember.load(model, exact=True).run({"X": X, "W": W, "R": R, "h0": h0})["Yc"]
    zeros = np.zeros((1, 8 * H), np.float32)
    _, _, eYc = twin_lstm(
        X, W, R, zeros, [T] * N, h0, np.zeros((1, N, H)), np.zeros((1, 3 * H)), "forward"
    )
    np.testing.assert_allclose(got, eYc, rtol=1e-5, atol=1e-6)


def test_runtime_names_the_node_on_failure():
    X = rand(2, 1, 2)
    W, R, _, _ = params(1, 1, 2, 3, 1)
    node = helper.make_node("RNN", ["X", "W", "R"], ["Y"], activations=["Nope"], name="rnn0")
    graph = helper.make_graph(
        [node],
        "g",
        [
            helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape)
            for n, a in (("X", X), ("W", W), ("R", R))
        ],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 14)])
    with pytest.raises(ExecutionError, match=r"rnn0.*unknown activation 'Nope'"):
        ember.load(model).run({"X": X, "W": W, "R": R})
