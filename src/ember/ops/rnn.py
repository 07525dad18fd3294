"""Recurrent ops: RNN, GRU and LSTM, one direction at a time, looping over time steps.

Every step is vectorized over batch and hidden units; the input projection of all time steps is one
matmul up front. `sequence_lens` follows onnxruntime: steps past a batch entry's length output zeros
and leave its state alone, and the reverse direction starts at the entry's last valid step.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from ember.ops.common import work_arrays
from ember.ops.registry import OpContext, op

Activation = Callable[[np.ndarray], np.ndarray]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    e = np.exp(-np.abs(x))  # never overflows
    return np.where(x >= 0, 1 / (1 + e), e / (1 + e))


def _softplus(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))


# name (lowercase) -> (number of parameters, defaults, builder(alpha, beta) -> function)
_ACTIVATIONS: dict[str, tuple[int, tuple[float, float], Callable[[float, float], Activation]]] = {
    "relu": (0, (0.0, 0.0), lambda a, b: lambda x: np.maximum(x, 0)),
    "tanh": (0, (0.0, 0.0), lambda a, b: np.tanh),
    "sigmoid": (0, (0.0, 0.0), lambda a, b: _sigmoid),
    "affine": (2, (1.0, 0.0), lambda a, b: lambda x: a * x + b),
    "leakyrelu": (1, (0.01, 0.0), lambda a, b: lambda x: np.where(x >= 0, x, a * x)),
    "thresholdedrelu": (1, (1.0, 0.0), lambda a, b: lambda x: np.where(x >= a, x, 0)),
    "scaledtanh": (2, (1.0, 1.0), lambda a, b: lambda x: a * np.tanh(b * x)),
    "hardsigmoid": (2, (0.2, 0.5), lambda a, b: lambda x: np.clip(a * x + b, 0, 1)),
    "elu": (1, (1.0, 0.0), lambda a, b: lambda x: np.where(x >= 0, x, a * np.expm1(x))),
    "softsign": (0, (0.0, 0.0), lambda a, b: lambda x: x / (1 + np.abs(x))),
    "softplus": (0, (0.0, 0.0), lambda a, b: _softplus),
}


def _activation_functions(
    names: Sequence[str] | None,
    alpha: Sequence[float] | None,
    beta: Sequence[float] | None,
    defaults: Sequence[str],
    n_directions: int,
) -> list[list[Activation]]:
    """The activation functions of each direction, `len(defaults)` per direction.

    alpha/beta are consumed in order by the functions that take them (onnxruntime's reading of
    "consumed in the order of activation functions").
    """
    per_dir = len(defaults)
    if names is None:
        names = list(defaults) * n_directions
    elif len(names) == per_dir and n_directions == 2:
        names = list(names) * 2  # one set given for a bidirectional node: both directions use it
    if len(names) != per_dir * n_directions:
        raise ValueError(
            f"activations needs {per_dir * n_directions} names ({per_dir} per direction), "
            f"got {len(names)}: {list(names)}"
        )
    alphas = list(alpha) if alpha is not None else []
    betas = list(beta) if beta is not None else []
    funcs = []
    for name in names:
        entry = _ACTIVATIONS.get(name.lower())
        if entry is None:
            raise ValueError(
                f"unknown activation {name!r}; expected one of Relu, Tanh, Sigmoid, Affine, "
                "LeakyRelu, ThresholdedRelu, ScaledTanh, HardSigmoid, Elu, Softsign, Softplus"
            )
        n_params, (a, b), build = entry
        if n_params >= 1 and alphas:
            a = alphas.pop(0)
        if n_params >= 2 and betas:
            b = betas.pop(0)
        funcs.append(build(a, b))
    return [funcs[d * per_dir : (d + 1) * per_dir] for d in range(n_directions)]


def _n_directions(direction: str) -> int:
    if direction in ("forward", "reverse"):
        return 1
    if direction == "bidirectional":
        return 2
    raise ValueError(f"direction must be forward, reverse or bidirectional, got {direction!r}")


class _Setup:
    """Inputs brought to layout 0 ((T, B, I) / (D, B, H)), in the compute dtype, plus masks."""

    def __init__(
        self,
        X: np.ndarray,
        W: np.ndarray,
        R: np.ndarray,
        sequence_lens: np.ndarray | None,
        given_states: list[np.ndarray | None],
        *,
        n_gates: int,
        direction: str,
        hidden_size: int | None,
        layout: int,
        ctx: OpContext | None,
    ) -> None:
        if layout not in (0, 1):
            raise ValueError(f"layout must be 0 or 1, got {layout}")
        if X.ndim != 3:
            raise ValueError(f"X must be rank 3 (seq, batch, input), got shape {X.shape}")
        self.dtype = X.dtype
        self.layout = layout
        if layout == 1:
            X = X.transpose(1, 0, 2)
            given_states = [s.transpose(1, 0, 2) if s is not None else None for s in given_states]
        T, B, _ = X.shape
        D = _n_directions(direction)
        H = R.shape[-1]
        if W.shape[0] != D or R.shape[0] != D:
            raise ValueError(
                f"direction={direction!r} needs {D} direction(s) in W and R, got W {W.shape}, "
                f"R {R.shape}"
            )
        if hidden_size is not None and hidden_size != H:
            raise ValueError(f"hidden_size={hidden_size} but R has shape {R.shape}")
        if W.shape[1] != n_gates * H or R.shape[1] != n_gates * H:
            raise ValueError(
                f"W and R need {n_gates}*hidden_size={n_gates * H} rows, got W {W.shape}, "
                f"R {R.shape}"
            )
        if sequence_lens is None:
            lens = np.full(B, T, dtype=np.int64)
        else:
            lens = np.asarray(sequence_lens, dtype=np.int64).reshape(-1)
            if lens.shape != (B,) or (lens < 0).any() or (lens > T).any():
                raise ValueError(
                    f"sequence_lens must hold {B} lengths in [0, {T}], got {lens.tolist()}"
                )
        states: list[np.ndarray] = []
        for s in given_states:
            if s is not None and s.shape != (D, B, H):
                want = (D, B, H) if layout == 0 else (B, D, H)
                got = s.shape if layout == 0 else s.transpose(1, 0, 2).shape
                raise ValueError(f"initial states must have shape {want}, got {got}")
            states.append(s if s is not None else np.zeros((D, B, H), dtype=X.dtype))
        X, W, R, *states = work_arrays(ctx, X, W, R, *states)
        self.X, self.W, self.R, self.states = X, W, R, states
        self.T, self.B, self.H, self.D = T, B, H, D
        t = np.arange(T)[:, None]  # (T, 1)
        self.mask = (t < lens[None, :])[..., None]  # (T, B, 1): step t is valid for entry b
        # Reverse order within each entry's valid prefix; padding steps stay put. An involution.
        self.reverse_index = np.where(t < lens[None, :], lens[None, :] - 1 - t, t)  # (T, B)
        self.reversed = [
            direction == "reverse" or (direction == "bidirectional" and d == 1) for d in range(D)
        ]

    def inputs(self, d: int) -> np.ndarray:
        """X in the processing order of direction d: (T, B, I)."""
        if not self.reversed[d]:
            return self.X
        return self.X[self.reverse_index, np.arange(self.B)[None, :]]

    def outputs(self, d: int, Y: np.ndarray) -> np.ndarray:
        """Per-step outputs (T, B, H) of direction d back in time order, zero past each length."""
        Y = np.where(self.mask, Y, 0)
        if self.reversed[d]:
            Y = Y[self.reverse_index, np.arange(self.B)[None, :]]
        return Y

    def finish(
        self, Ys: list[np.ndarray], finals: list[list[np.ndarray]]
    ) -> tuple[np.ndarray, ...]:
        """Stack directions and restore the layout: Y (T, D, B, H) and states (D, B, H)."""
        Y = np.stack(Ys, axis=1).astype(self.dtype, copy=False)
        outs = [np.stack(f, axis=0).astype(self.dtype, copy=False) for f in finals]
        if self.layout == 1:
            Y = Y.transpose(2, 0, 1, 3)  # (B, T, D, H)
            outs = [o.transpose(1, 0, 2) for o in outs]
        return (Y, *outs)


def _bias(B: np.ndarray | None, D: int, n_gates: int, H: int, like: np.ndarray) -> np.ndarray:
    """B as (D, 2, n_gates*H) = (direction, [Wb, Rb], gates), zeros when omitted."""
    if B is None:
        return np.zeros((D, 2, n_gates * H), dtype=like.dtype)
    if B.shape != (D, 2 * n_gates * H):
        raise ValueError(f"B must have shape {(D, 2 * n_gates * H)}, got {B.shape}")
    return B.reshape(D, 2, n_gates * H).astype(like.dtype, copy=False)


def _clipper(clip: float | None) -> Callable[[np.ndarray], np.ndarray]:
    if clip is None:
        return lambda x: x
    if clip <= 0:
        raise ValueError(f"clip must be positive, got {clip}")
    return lambda x: np.clip(x, -clip, clip)


def _rnn(
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None,
    sequence_lens: np.ndarray | None,
    initial_h: np.ndarray | None,
    *,
    activation_alpha: list[float] | None,
    activation_beta: list[float] | None,
    activations: list[str] | None,
    clip: float | None,
    direction: str,
    hidden_size: int | None,
    layout: int,
    ctx: OpContext | None,
) -> tuple[np.ndarray, ...]:
    s = _Setup(
        X,
        W,
        R,
        sequence_lens,
        [initial_h],
        n_gates=1,
        direction=direction,
        hidden_size=hidden_size,
        layout=layout,
        ctx=ctx,
    )
    acts = _activation_functions(activations, activation_alpha, activation_beta, ["Tanh"], s.D)
    bias = _bias(B, s.D, 1, s.H, s.X)
    clipped = _clipper(clip)
    Ys, finals = [], []
    for d in range(s.D):
        (f,) = acts[d]
        xw = s.inputs(d) @ s.W[d].T + bias[d].sum(axis=0)  # (T, B, H)
        h = s.states[0][d]  # (B, H)
        ys = []
        for t in range(s.T):
            h_new = f(clipped(xw[t] + h @ s.R[d].T))
            h = np.where(s.mask[t], h_new, h)
            ys.append(h_new)
        Ys.append(s.outputs(d, np.stack(ys) if ys else np.zeros((0, s.B, s.H), s.X.dtype)))
        finals.append(h)
    return s.finish(Ys, [finals])


def _gru(
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None,
    sequence_lens: np.ndarray | None,
    initial_h: np.ndarray | None,
    *,
    activation_alpha: list[float] | None,
    activation_beta: list[float] | None,
    activations: list[str] | None,
    clip: float | None,
    direction: str,
    hidden_size: int | None,
    layout: int,
    linear_before_reset: int,
    ctx: OpContext | None,
) -> tuple[np.ndarray, ...]:
    s = _Setup(
        X,
        W,
        R,
        sequence_lens,
        [initial_h],
        n_gates=3,
        direction=direction,
        hidden_size=hidden_size,
        layout=layout,
        ctx=ctx,
    )
    acts = _activation_functions(
        activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh"], s.D
    )
    bias = _bias(B, s.D, 3, s.H, s.X)
    clipped = _clipper(clip)
    H = s.H
    Ys, finals = [], []
    for d in range(s.D):
        f, g = acts[d]
        wb, rb = bias[d]
        xw = s.inputs(d) @ s.W[d].T + wb  # (T, B, 3H): gates z, r, h
        R_zr, R_h = s.R[d][: 2 * H], s.R[d][2 * H :]
        h = s.states[0][d]  # (B, H)
        ys = []
        for t in range(s.T):
            zr = f(clipped(xw[t, :, : 2 * H] + h @ R_zr.T + rb[: 2 * H]))
            z, r = zr[:, :H], zr[:, H:]
            if linear_before_reset:
                n = g(clipped(xw[t, :, 2 * H :] + r * (h @ R_h.T + rb[2 * H :])))
            else:
                n = g(clipped(xw[t, :, 2 * H :] + (r * h) @ R_h.T + rb[2 * H :]))
            h_new = (1 - z) * n + z * h
            h = np.where(s.mask[t], h_new, h)
            ys.append(h_new)
        Ys.append(s.outputs(d, np.stack(ys) if ys else np.zeros((0, s.B, H), s.X.dtype)))
        finals.append(h)
    return s.finish(Ys, [finals])


def _lstm(
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None,
    sequence_lens: np.ndarray | None,
    initial_h: np.ndarray | None,
    initial_c: np.ndarray | None,
    P: np.ndarray | None,
    *,
    activation_alpha: list[float] | None,
    activation_beta: list[float] | None,
    activations: list[str] | None,
    clip: float | None,
    direction: str,
    hidden_size: int | None,
    input_forget: int,
    layout: int,
    ctx: OpContext | None,
) -> tuple[np.ndarray, ...]:
    s = _Setup(
        X,
        W,
        R,
        sequence_lens,
        [initial_h, initial_c],
        n_gates=4,
        direction=direction,
        hidden_size=hidden_size,
        layout=layout,
        ctx=ctx,
    )
    acts = _activation_functions(
        activations, activation_alpha, activation_beta, ["Sigmoid", "Tanh", "Tanh"], s.D
    )
    bias = _bias(B, s.D, 4, s.H, s.X)
    H = s.H
    if P is None:
        P = np.zeros((s.D, 3 * H), dtype=s.X.dtype)
    elif P.shape != (s.D, 3 * H):
        raise ValueError(f"P must have shape {(s.D, 3 * H)}, got {P.shape}")
    (P,) = work_arrays(ctx, P)
    clipped = _clipper(clip)
    Ys, finals_h, finals_c = [], [], []
    for d in range(s.D):
        f, g, h_act = acts[d]
        p_i, p_o, p_f = P[d][:H], P[d][H : 2 * H], P[d][2 * H :]
        xw = s.inputs(d) @ s.W[d].T + bias[d].sum(axis=0)  # (T, B, 4H): gates i, o, f, c
        h, c = s.states[0][d], s.states[1][d]  # (B, H) each
        ys = []
        for t in range(s.T):
            gates = xw[t] + h @ s.R[d].T
            i = f(clipped(gates[:, :H] + p_i * c))
            # input_forget couples the gates: forget what is let in.
            fg = 1 - i if input_forget else f(clipped(gates[:, 2 * H : 3 * H] + p_f * c))
            c_new = fg * c + i * g(clipped(gates[:, 3 * H :]))
            o = f(clipped(gates[:, H : 2 * H] + p_o * c_new))
            h_new = o * h_act(c_new)
            h = np.where(s.mask[t], h_new, h)
            c = np.where(s.mask[t], c_new, c)
            ys.append(h_new)
        Ys.append(s.outputs(d, np.stack(ys) if ys else np.zeros((0, s.B, H), s.X.dtype)))
        finals_h.append(h)
        finals_c.append(c)
    return s.finish(Ys, [finals_h, finals_c])


@op
def RNN(
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    *,
    activation_alpha: list[float] | None = None,
    activation_beta: list[float] | None = None,
    activations: list[str] | None = None,
    clip: float | None = None,
    direction: str = "forward",
    hidden_size: int | None = None,
    output_sequence: int = 0,
    ctx: OpContext | None = None,
) -> tuple[np.ndarray, ...]:
    """Simple RNN: H_t = f(X_t W^T + H_{t-1} R^T + Wb + Rb); returns (Y, Y_h)."""
    del output_sequence  # opset 1 only: whether Y is wanted; undeclared outputs are dropped anyway
    return _rnn(
        X,
        W,
        R,
        B,
        sequence_lens,
        initial_h,
        activation_alpha=activation_alpha,
        activation_beta=activation_beta,
        activations=activations,
        clip=clip,
        direction=direction,
        hidden_size=hidden_size,
        layout=0,
        ctx=ctx,
    )


@op
def RNN_14(
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    *,
    activation_alpha: list[float] | None = None,
    activation_beta: list[float] | None = None,
    activations: list[str] | None = None,
    clip: float | None = None,
    direction: str = "forward",
    hidden_size: int | None = None,
    layout: int = 0,
    ctx: OpContext | None = None,
) -> tuple[np.ndarray, ...]:
    """RNN with `layout` (1: batch-major X, Y, initial_h, Y_h)."""
    return _rnn(
        X,
        W,
        R,
        B,
        sequence_lens,
        initial_h,
        activation_alpha=activation_alpha,
        activation_beta=activation_beta,
        activations=activations,
        clip=clip,
        direction=direction,
        hidden_size=hidden_size,
        layout=layout,
        ctx=ctx,
    )


@op
def GRU(
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    *,
    activation_alpha: list[float] | None = None,
    activation_beta: list[float] | None = None,
    activations: list[str] | None = None,
    clip: float | None = None,
    direction: str = "forward",
    hidden_size: int | None = None,
    linear_before_reset: int = 0,
    output_sequence: int = 0,
    ctx: OpContext | None = None,
) -> tuple[np.ndarray, ...]:
    """GRU with gates (z, r, h); returns (Y, Y_h). Opsets 1-13 (linear_before_reset since 3)."""
    del output_sequence  # opset 1 only: whether Y is wanted; undeclared outputs are dropped anyway
    return _gru(
        X,
        W,
        R,
        B,
        sequence_lens,
        initial_h,
        activation_alpha=activation_alpha,
        activation_beta=activation_beta,
        activations=activations,
        clip=clip,
        direction=direction,
        hidden_size=hidden_size,
        layout=0,
        linear_before_reset=linear_before_reset,
        ctx=ctx,
    )


@op
def GRU_14(
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    *,
    activation_alpha: list[float] | None = None,
    activation_beta: list[float] | None = None,
    activations: list[str] | None = None,
    clip: float | None = None,
    direction: str = "forward",
    hidden_size: int | None = None,
    layout: int = 0,
    linear_before_reset: int = 0,
    ctx: OpContext | None = None,
) -> tuple[np.ndarray, ...]:
    """GRU with `layout` (1: batch-major X, Y, initial_h, Y_h)."""
    return _gru(
        X,
        W,
        R,
        B,
        sequence_lens,
        initial_h,
        activation_alpha=activation_alpha,
        activation_beta=activation_beta,
        activations=activations,
        clip=clip,
        direction=direction,
        hidden_size=hidden_size,
        layout=layout,
        linear_before_reset=linear_before_reset,
        ctx=ctx,
    )


@op
def LSTM(
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    initial_c: np.ndarray | None = None,
    P: np.ndarray | None = None,
    *,
    activation_alpha: list[float] | None = None,
    activation_beta: list[float] | None = None,
    activations: list[str] | None = None,
    clip: float | None = None,
    direction: str = "forward",
    hidden_size: int | None = None,
    input_forget: int = 0,
    output_sequence: int = 0,
    ctx: OpContext | None = None,
) -> tuple[np.ndarray, ...]:
    """LSTM with gates (i, o, f, c) and peepholes P (i, o, f); returns (Y, Y_h, Y_c)."""
    del output_sequence  # opset 1 only: whether Y is wanted; undeclared outputs are dropped anyway
    return _lstm(
        X,
        W,
        R,
        B,
        sequence_lens,
        initial_h,
        initial_c,
        P,
        activation_alpha=activation_alpha,
        activation_beta=activation_beta,
        activations=activations,
        clip=clip,
        direction=direction,
        hidden_size=hidden_size,
        input_forget=input_forget,
        layout=0,
        ctx=ctx,
    )


@op
def LSTM_14(
    X: np.ndarray,
    W: np.ndarray,
    R: np.ndarray,
    B: np.ndarray | None = None,
    sequence_lens: np.ndarray | None = None,
    initial_h: np.ndarray | None = None,
    initial_c: np.ndarray | None = None,
    P: np.ndarray | None = None,
    *,
    activation_alpha: list[float] | None = None,
    activation_beta: list[float] | None = None,
    activations: list[str] | None = None,
    clip: float | None = None,
    direction: str = "forward",
    hidden_size: int | None = None,
    input_forget: int = 0,
    layout: int = 0,
    ctx: OpContext | None = None,
) -> tuple[np.ndarray, ...]:
    """LSTM with `layout` (1: batch-major X, Y, initial_h/c, Y_h/c)."""
    return _lstm(
        X,
        W,
        R,
        B,
        sequence_lens,
        initial_h,
        initial_c,
        P,
        activation_alpha=activation_alpha,
        activation_beta=activation_beta,
        activations=activations,
        clip=clip,
        direction=direction,
        hidden_size=hidden_size,
        input_forget=input_forget,
        layout=layout,
        ctx=ctx,
    )
