"""ai.onnx.ml ops: LabelEncoder (1, 2, 4), Binarizer, ArrayFeatureExtractor, Scaler, Normalizer,
OneHotEncoder, Imputer, LinearRegressor, LinearClassifier and TreeEnsemble (5).

Key look-ups (LabelEncoder, OneHotEncoder) are one sort plus one binary search over the whole input;
trees are walked one level per step for every (row, tree) pair at once. Scores accumulate in float64
and are cast to the output dtype once. Where the spec leaves a case open, these follow onnxruntime
(noted at the branch). ZipMap, DictVectorizer, CastMap and the SVM ops are not implemented.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ember.ops.registry import op

_ML = "ai.onnx.ml"
# TreeEnsemble's post_transform codes, in the spec's order.
# NOTE: onnxruntime (1.32) reads 1 as LOGISTIC and 2 as SOFTMAX (its internal enum order), and
# onnx.reference ignores post_transform; both disagree with the spec here.
_POST_TRANSFORMS = ("NONE", "SOFTMAX", "LOGISTIC", "SOFTMAX_ZERO", "PROBIT")


# ---------------------------------------------------------------------------------------------
# shared helpers


def _is_string(a: np.ndarray) -> bool:
    return a.dtype.kind in "OUS"


def _lookup(keys: np.ndarray, x: np.ndarray) -> np.ndarray:
    """For each element of x, its index in the 1-D `keys` (the last one where a key repeats), or -1.

    Strings compare as str; numbers compare by value in their common dtype, and a NaN key matches
    every NaN element.
    """
    if _is_string(keys) != _is_string(x):
        kind = "string" if _is_string(keys) else "numeric"
        raise TypeError(f"the keys are {kind} but the input is {x.dtype}")
    if keys.size == 0:
        return np.full(x.shape, -1, np.int64)
    if _is_string(keys):
        keys, x = keys.astype(str), x.astype(str)
    else:
        common = np.result_type(keys.dtype, x.dtype)
        keys, x = keys.astype(common), x.astype(common)
    # np.unique keeps the first occurrence, so run it on the reversed keys to keep the last.
    uniq, first = np.unique(keys[::-1], return_index=True)  # NaNs collapse into one, sorted last
    where = (len(keys) - 1 - first).astype(np.int64)  # index in `keys` of each uniq entry
    pos = np.minimum(np.searchsorted(uniq, x), len(uniq) - 1)  # NaN x lands on the NaN key, if any
    found = uniq[pos] == x
    if x.dtype.kind == "f":
        found |= np.isnan(uniq[pos]) & np.isnan(x)
    return np.where(found, where[pos], -1)


def _erfinv(x: np.ndarray) -> np.ndarray:
    """Winitzki's approximation of erf^-1 (about 2e-3 relative error).

    NOTE: deliberately approximate: it is what onnxruntime and onnx.reference compute for PROBIT.
    """
    sgn = np.where(x < 0, -1.0, 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        log = np.log((1.0 - x) * (1.0 + x))
        v = 2.0 / (np.pi * 0.147) + 0.5 * log
        return sgn * np.sqrt(-v + np.sqrt(v * v - log / 0.147))


def _post_transform(scores: np.ndarray, post_transform: str) -> np.ndarray:
    """Apply an ML post transform to (N, C) float64 scores, row by row where it normalizes."""
    if post_transform == "NONE":
        return scores
    if post_transform == "LOGISTIC":
        return 1.0 / (1.0 + np.exp(-scores))
    if post_transform == "SOFTMAX":
        e = np.exp(scores - np.max(scores, axis=-1, keepdims=True))
        return e / np.sum(e, axis=-1, keepdims=True)
    if post_transform == "SOFTMAX_ZERO":
        # Scores that are (nearly) exactly zero stay zero instead of becoming exp(0 - max).
        v_max = np.max(scores, axis=-1, keepdims=True)
        nonzero = np.abs(scores) > 1e-7
        e = np.where(nonzero, np.exp(scores - v_max), scores * np.exp(-v_max))
        total = np.sum(e, axis=-1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(total == 0, 0.5, e / total)
    if post_transform == "PROBIT":
        return np.sqrt(2.0) * _erfinv(2.0 * scores - 1.0)
    raise ValueError(
        f"post_transform must be one of NONE, SOFTMAX, LOGISTIC, SOFTMAX_ZERO, PROBIT; "
        f"got {post_transform!r}"
    )


def _as_rows(X: np.ndarray, op_type: str) -> np.ndarray:
    """A 1-D input as one row, a 2-D input as is: (N, F)."""
    if X.ndim == 1:
        return X.reshape(1, -1)
    if X.ndim != 2:
        raise ValueError(f"{op_type} takes a 1-D or 2-D (N, F) input, got shape {X.shape}")
    return X


def _only_one(op_type: str, **candidates: Any) -> str:
    """The name of the one candidate attribute that is set; ValueError unless exactly one is."""
    given = [name for name, value in candidates.items() if value is not None]
    if len(given) != 1:
        names = ", ".join(candidates)
        raise ValueError(
            f"{op_type} needs exactly one of {names}; got {', '.join(given) or 'none'}"
        )
    return given[0]


# ---------------------------------------------------------------------------------------------
# encoders and simple transforms


@op(domain=_ML)
def LabelEncoder(X, *, classes_strings=None, default_int64=-1, default_string="_Unused"):
    """Version 1: strings -> their index in classes_strings (default_int64 when absent), or
    int64 -> the class string at that index (default_string when out of range)."""
    classes = np.array(classes_strings if classes_strings is not None else [], dtype=object)
    if _is_string(X):
        idx = _lookup(classes, X)
        return np.where(idx >= 0, idx, np.int64(default_int64)).astype(np.int64)
    if X.dtype != np.int64:
        raise TypeError(f"LabelEncoder-1 takes a string or int64 input, got {X.dtype}")
    ok = (X >= 0) & np.less(X, len(classes))
    out = np.full(X.shape, default_string, dtype=object)
    out[ok] = classes[X[ok]]
    return out


def _label_encode(
    X: np.ndarray, keys: np.ndarray, values: np.ndarray, default: np.ndarray
) -> np.ndarray:
    if len(keys) != len(values):
        raise ValueError(
            f"LabelEncoder keys and values must have the same length, got {len(keys)} keys and "
            f"{len(values)} values"
        )
    idx = _lookup(keys, X)
    if len(values) == 0:
        return np.full(X.shape, default, dtype=values.dtype)
    return np.where(idx >= 0, values[np.maximum(idx, 0)], default).astype(values.dtype)


def _string_values(v: list[str]) -> np.ndarray:
    out = np.empty(len(v), dtype=object)
    out[:] = v
    return out


@op(domain=_ML)
def LabelEncoder_2(
    X,
    *,
    default_float=-0.0,
    default_int64=-1,
    default_string="_Unused",
    keys_floats=None,
    keys_int64s=None,
    keys_strings=None,
    values_floats=None,
    values_int64s=None,
    values_strings=None,
):
    """Map each element through parallel keys_*/values_* lists; unmatched -> the default_* of the
    values' type."""
    return LabelEncoder_4(
        X,
        default_float=default_float,
        default_int64=default_int64,
        default_string=default_string,
        keys_floats=keys_floats,
        keys_int64s=keys_int64s,
        keys_strings=keys_strings,
        values_floats=values_floats,
        values_int64s=values_int64s,
        values_strings=values_strings,
    )


@op(domain=_ML)
def LabelEncoder_4(
    X,
    *,
    default_float=-0.0,
    default_int64=-1,
    default_string="_Unused",
    default_tensor=None,
    keys_floats=None,
    keys_int64s=None,
    keys_strings=None,
    keys_tensor=None,
    values_floats=None,
    values_int64s=None,
    values_strings=None,
    values_tensor=None,
):
    """Version 2 plus keys/values/default as 1-D tensors of any listed type; a NaN key matches
    every NaN input and a repeated key maps through its last occurrence."""
    which = _only_one(
        "LabelEncoder",
        keys_floats=keys_floats,
        keys_int64s=keys_int64s,
        keys_strings=keys_strings,
        keys_tensor=keys_tensor,
    )
    keys = {
        "keys_floats": lambda: np.array(keys_floats, dtype=np.float32),
        "keys_int64s": lambda: np.array(keys_int64s, dtype=np.int64),
        "keys_strings": lambda: _string_values(keys_strings),
        "keys_tensor": lambda: np.asarray(keys_tensor).reshape(-1),
    }[which]()
    which = _only_one(
        "LabelEncoder",
        values_floats=values_floats,
        values_int64s=values_int64s,
        values_strings=values_strings,
        values_tensor=values_tensor,
    )
    if which == "values_floats":
        values, default = np.array(values_floats, np.float32), np.float32(default_float)
    elif which == "values_int64s":
        values, default = np.array(values_int64s, np.int64), np.int64(default_int64)
    elif which == "values_strings":
        values, default = _string_values(values_strings), default_string
    else:
        values = np.asarray(values_tensor).reshape(-1)
        if default_tensor is None:  # the spec's defaults per value type
            default = (
                "_Unused" if _is_string(values) else (-1 if values.dtype.kind in "iu" else -0.0)
            )
        else:
            d = np.asarray(default_tensor)
            if d.size != 1:
                raise ValueError(f"default_tensor must hold one value, got shape {d.shape}")
            if _is_string(d) != _is_string(values):
                raise TypeError(
                    f"default_tensor ({d.dtype}) must have the type of values_tensor "
                    f"({values.dtype})"
                )
            default = d.reshape(())[()]
        if not _is_string(values):
            default = np.asarray(default).astype(values.dtype)
    return _label_encode(X, keys, values, default)


@op(domain=_ML)
def Binarizer(X, *, threshold=0.0):
    """1 where X > threshold, else 0, in X's dtype (NaN -> 0)."""
    return np.greater(X, threshold).astype(X.dtype)


@op(domain=_ML)
def ArrayFeatureExtractor(X, Y):
    """X[..., Y] along the last axis, Y flattened; a 1-D X gives one row (1, len(Y))."""
    if X.ndim == 0:
        raise ValueError("ArrayFeatureExtractor needs an input of rank >= 1, got a scalar")
    idx = np.asarray(Y).astype(np.int64).reshape(-1)
    n = X.shape[-1]
    bad = idx[(idx < 0) | (idx >= n)]
    if bad.size:
        raise ValueError(
            f"ArrayFeatureExtractor index {int(bad[0])} is out of range for a last dimension of {n}"
        )
    out = X[..., idx]
    return out.reshape(1, idx.size) if X.ndim == 1 else out


@op(domain=_ML)
def Scaler(X, *, offset=None, scale=None):
    """(X - offset) * scale as float32; offset/scale have one value or one per feature (last axis);
    an absent offset is 0, an absent scale 1."""
    if X.ndim == 0:
        raise ValueError("Scaler needs an input of rank >= 1, got a scalar")
    F = X.shape[-1]
    off = np.array(offset if offset is not None else [0.0], np.float64)
    sc = np.array(scale if scale is not None else [1.0], np.float64)
    for name, a in (("offset", off), ("scale", sc)):
        if a.size not in (1, F):
            raise ValueError(f"Scaler {name} must have 1 or {F} (features) values, got {a.size}")
    if offset is not None and scale is not None and off.size != sc.size:
        raise ValueError(
            f"Scaler offset and scale must have the same length, got {off.size} and {sc.size}"
        )
    return ((X.astype(np.float64) - off) * sc).astype(np.float32)


@op(domain=_ML)
def Normalizer(X, *, norm="MAX"):
    """Each row divided by its max (MAX), sum of |x| (L1) or L2 norm; a zero divisor keeps the
    row as is. Output float32."""
    x = _as_rows(X, "Normalizer").astype(np.float64)
    if norm == "MAX":
        # NOTE: the spec's max(X), not max(|X|) (onnxruntime agrees; onnx.reference uses |X|).
        div = np.max(x, axis=1, keepdims=True) if x.shape[1] else np.zeros((x.shape[0], 1))
    elif norm == "L1":
        div = np.sum(np.abs(x), axis=1, keepdims=True)
    elif norm == "L2":
        div = np.sqrt(np.sum(x * x, axis=1, keepdims=True))
    else:
        raise ValueError(f"Normalizer norm must be 'MAX', 'L1' or 'L2', got {norm!r}")
    y = x / np.where(div == 0, 1.0, div)
    return y.reshape(X.shape).astype(np.float32)


@op(domain=_ML)
def OneHotEncoder(X, *, cats_int64s=None, cats_strings=None, zeros=1):
    """X (...) -> (..., n_categories) float32 one-hot rows; numeric inputs are truncated to int64
    and looked up in cats_int64s, strings in cats_strings. Unknown values give a zero row, or an
    error when zeros=0."""
    which = _only_one("OneHotEncoder", cats_int64s=cats_int64s, cats_strings=cats_strings)
    if which == "cats_strings":
        if not _is_string(X):
            raise TypeError(f"OneHotEncoder with cats_strings needs a string input, got {X.dtype}")
        cats = _string_values(cats_strings)
        x = X
    else:
        if _is_string(X):
            raise TypeError("OneHotEncoder with cats_int64s needs a numeric input, got strings")
        cats = np.array(cats_int64s, np.int64)
        x = X.astype(np.int64)  # truncation, as a C cast
    if cats.size == 0:
        raise ValueError(f"OneHotEncoder {which} must not be empty")
    idx = _lookup(cats, x)
    if not zeros and (idx < 0).any():
        bad = x[idx < 0].reshape(-1)[0]
        shown = repr(bad) if isinstance(bad, str) else bad
        raise ValueError(f"OneHotEncoder: value {shown} is not a category and zeros=0")
    return (idx[..., None] == np.arange(cats.size)).astype(np.float32)


@op(domain=_ML)
def Imputer(
    X,
    *,
    imputed_value_floats=None,
    imputed_value_int64s=None,
    replaced_value_float=0.0,
    replaced_value_int64=0,
):
    """Replace elements equal to the replaced value (NaN matches NaN) by the imputed value of their
    feature (last axis), or by the single imputed value."""
    if X.ndim == 0:
        raise ValueError("Imputer needs an input of rank >= 1, got a scalar")
    if X.dtype.kind == "f":
        values, replaced = imputed_value_floats, replaced_value_float
        name = "imputed_value_floats"
    elif X.dtype.kind in "iu":
        values, replaced = imputed_value_int64s, replaced_value_int64
        name = "imputed_value_int64s"
    else:
        raise TypeError(f"Imputer takes a float or integer input, got {X.dtype}")
    if not values:
        raise ValueError(f"Imputer with a {X.dtype} input needs {name}")
    v = np.array(values).astype(X.dtype)
    F = X.shape[-1]
    if v.size not in (1, F):
        raise ValueError(f"Imputer {name} must have 1 or {F} (features) values, got {v.size}")
    nan_matches = X.dtype.kind == "f" and np.isnan(replaced)
    hit = np.isnan(X) if nan_matches else np.equal(X, replaced)
    return np.where(hit, v, X)


# ---------------------------------------------------------------------------------------------
# linear models


def _linear_scores(X: np.ndarray, coefficients: Any, intercepts: Any, op_type: str) -> np.ndarray:
    """X (N, F) @ coefficients (C, F)^T + intercepts (C): (N, C) float64."""
    if X.dtype.kind not in "fiu":
        raise TypeError(f"{op_type} takes a float or integer input, got {X.dtype}")
    x = _as_rows(X, op_type).astype(np.float64)
    F = x.shape[1]
    if not coefficients:
        raise ValueError(f"{op_type} needs the coefficients attribute")
    coef = np.array(coefficients, np.float64)
    if F == 0 or coef.size % F:
        raise ValueError(
            f"{op_type}: {coef.size} coefficients do not split into rows of {F} features"
        )
    W = coef.reshape(-1, F)  # (C, F)
    scores = x @ W.T  # (N, C)
    if intercepts:
        b = np.array(intercepts, np.float64)
        if b.size != W.shape[0]:
            raise ValueError(f"{op_type} needs {W.shape[0]} intercepts, got {b.size}")
        scores = scores + b
    return scores


@op(domain=_ML)
def LinearRegressor(X, *, coefficients=None, intercepts=None, post_transform="NONE", targets=1):
    """X @ coefficients(targets, F)^T + intercepts, then the post transform: (N, targets)
    float32."""
    scores = _linear_scores(X, coefficients, intercepts, "LinearRegressor")
    if scores.shape[1] != targets:
        raise ValueError(
            f"LinearRegressor: {len(coefficients)} coefficients give {scores.shape[1]} targets, "
            f"but targets={targets}"
        )
    return _post_transform(scores, post_transform).astype(np.float32)


@op(domain=_ML)
def LinearClassifier(
    X,
    *,
    classlabels_ints=None,
    classlabels_strings=None,
    coefficients=None,
    intercepts=None,
    multi_class=0,
    post_transform="NONE",
):
    """Scores X @ W^T + b (N, C) after the post transform, and the label of the top raw score.

    One score column with two class labels is the binary form: scores become [-s, s] and the label
    is the second class where s > 0.
    """
    del multi_class  # the spec gives it no effect on the computation
    which = _only_one(
        "LinearClassifier",
        classlabels_ints=classlabels_ints,
        classlabels_strings=classlabels_strings,
    )
    labels = (
        np.array(classlabels_ints, np.int64)
        if which == "classlabels_ints"
        else _string_values(classlabels_strings)
    )
    scores = _linear_scores(X, coefficients, intercepts, "LinearClassifier")
    C = scores.shape[1]
    if C == 1 and labels.size == 2:
        # NOTE: [-s, s] as in onnx.reference, so LOGISTIC gives [1 - p, p] (onnxruntime agrees);
        # with post_transform NONE onnxruntime writes [1 - s, s] instead.
        scores = np.concatenate([-scores, scores], axis=1)
        C = 2
    if C == 1:
        # NOTE: a lone score without two labels: onnxruntime's 1/0 ("1"/"0") by the sign.
        pos, neg = (1, 0) if which == "classlabels_ints" else ("1", "0")
        y = np.where(scores[:, 0] > 0, pos, neg)
        y = y.astype(np.int64) if which == "classlabels_ints" else y.astype(object)
    else:
        if labels.size != C:
            raise ValueError(f"LinearClassifier has {C} score columns but {labels.size} labels")
        y = labels[np.argmax(scores, axis=1)]
    return y, _post_transform(scores, post_transform).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# tree ensembles

_AGGREGATES = ("AVERAGE", "SUM", "MIN", "MAX")
_MODE_MEMBER = 6


def _check_ids(name: str, ids: np.ndarray, leaf: np.ndarray, n_nodes: int, n_leaves: int) -> None:
    limit = np.where(leaf, n_leaves, n_nodes)
    bad = np.flatnonzero((ids < 0) | (ids >= limit))
    if bad.size:
        i = bad[0]
        kind = "leaf" if leaf[i] else "node"
        raise ValueError(f"{name}[{i}] = {ids[i]} is not a valid {kind} index")


def _walk_trees(
    x: np.ndarray,
    roots: np.ndarray,
    *,
    featureids: np.ndarray,
    splits: np.ndarray,
    modes: np.ndarray,
    true_ids: np.ndarray,
    true_leaf: np.ndarray,
    false_ids: np.ndarray,
    false_leaf: np.ndarray,
    missing_true: np.ndarray,
    member_of: np.ndarray,
    members: np.ndarray,
) -> np.ndarray:
    """The leaf each (row, tree) pair reaches: (N, n_trees) leaf indices.

    x is (N, F) float64; node arrays are parallel, one entry per interior node. member_of gives
    a BRANCH_MEMBER node's row in `members` (its set, NaN-padded).
    """
    N, n_trees = x.shape[0], roots.size
    node = np.broadcast_to(roots, (N, n_trees)).copy()  # node index, or leaf index once done
    done = np.zeros((N, n_trees), dtype=bool)
    rows = np.broadcast_to(np.arange(N)[:, None], (N, n_trees))
    for _ in range(len(modes) + 1):  # one tree level per step; a path visits each node once
        active = ~done
        if not active.any():
            return node
        r, n = rows[active], node[active]
        v = x[r, featureids[n]]
        s, m = splits[n], modes[n]
        with np.errstate(invalid="ignore"):
            cond = np.select(
                [m == 0, m == 1, m == 2, m == 3, m == 4, m == 5],
                [v <= s, v < s, v >= s, v > s, v == s, v != s],
                default=False,
            )
        is_member = m == _MODE_MEMBER
        if is_member.any():
            sets = members[member_of[n[is_member]]]  # (k, max set size)
            cond[is_member] = np.any(sets == v[is_member, None], axis=1)
        cond |= missing_true[n] & np.isnan(v)
        node[active] = np.where(cond, true_ids[n], false_ids[n])
        done[active] = np.where(cond, true_leaf[n], false_leaf[n])
    if not done.all():
        raise ValueError("the tree structure has a cycle: a path never reaches a leaf")
    return node


def _aggregate(
    leaf_rows: np.ndarray,
    leaf_ids: np.ndarray,
    weights: np.ndarray,
    targets: np.ndarray,
    *,
    N: int,
    n_targets: int,
    n_trees: int,
    aggregate_function: str,
) -> np.ndarray:
    """Combine leaf weights into (N, n_targets) float64 scores; leaf_rows/leaf_ids are parallel."""
    w = weights[leaf_ids]
    flat = leaf_rows * n_targets + targets[leaf_ids]
    size = N * n_targets
    if aggregate_function in ("SUM", "AVERAGE"):
        out = np.bincount(flat, weights=w, minlength=size).astype(np.float64)
        if aggregate_function == "AVERAGE":
            out /= max(n_trees, 1)
        return out.reshape(N, n_targets)
    hit = np.bincount(flat, minlength=size) > 0
    if aggregate_function == "MIN":
        out = np.full(size, np.inf)
        np.minimum.at(out, flat, w)
    else:
        out = np.full(size, -np.inf)
        np.maximum.at(out, flat, w)
    # NOTE: a target no leaf reached scores 0, as in onnxruntime (onnx.reference leaves the
    # dtype's max/min there).
    return np.where(hit, out, 0.0).reshape(N, n_targets)


@op(domain=_ML)
def TreeEnsemble_5(
    X,
    *,
    aggregate_function=1,
    leaf_targetids=None,
    leaf_weights=None,
    membership_values=None,
    n_targets=None,
    nodes_falseleafs=None,
    nodes_falsenodeids=None,
    nodes_featureids=None,
    nodes_hitrates=None,
    nodes_missing_value_tracks_true=None,
    nodes_modes=None,
    nodes_splits=None,
    nodes_trueleafs=None,
    nodes_truenodeids=None,
    post_transform=0,
    tree_roots=None,
):
    """Sum/average/min/max of the leaf weights each row reaches in every tree, per target, then
    the post transform: (N, n_targets) in X's dtype.

    Interior nodes compare one feature with their split (<=, <, >=, >, ==, !=) or test membership
    in a set (BRANCH_MEMBER, sets listed in membership_values separated by NaN); a NaN feature
    follows the true branch where nodes_missing_value_tracks_true says so.
    """
    del nodes_hitrates  # a performance hint
    required = {
        "leaf_targetids": leaf_targetids,
        "leaf_weights": leaf_weights,
        "nodes_falseleafs": nodes_falseleafs,
        "nodes_falsenodeids": nodes_falsenodeids,
        "nodes_featureids": nodes_featureids,
        "nodes_modes": nodes_modes,
        "nodes_splits": nodes_splits,
        "nodes_trueleafs": nodes_trueleafs,
        "nodes_truenodeids": nodes_truenodeids,
        "tree_roots": tree_roots,
    }
    missing = [k for k, v in required.items() if v is None]
    if missing:
        raise ValueError(f"TreeEnsemble needs the attribute(s) {', '.join(missing)}")
    if X.dtype.kind != "f":
        raise TypeError(f"TreeEnsemble takes a float16, float or double input, got {X.dtype}")
    if X.ndim != 2:
        raise ValueError(f"TreeEnsemble takes a 2-D (N, F) input, got shape {X.shape}")
    if not 0 <= aggregate_function < len(_AGGREGATES):
        raise ValueError(
            f"aggregate_function must be 0 (AVERAGE), 1 (SUM), 2 (MIN) or 3 (MAX), "
            f"got {aggregate_function}"
        )
    if not 0 <= post_transform < len(_POST_TRANSFORMS):
        raise ValueError(
            f"post_transform must be 0 (NONE), 1 (SOFTMAX), 2 (LOGISTIC), 3 (SOFTMAX_ZERO) or "
            f"4 (PROBIT), got {post_transform}"
        )
    modes = np.asarray(nodes_modes).astype(np.int64).reshape(-1)
    n_nodes = modes.size
    # Splits and set members take X's dtype first (as a threshold of that type would), then
    # everything compares exactly in float64.
    splits = np.asarray(nodes_splits).reshape(-1).astype(X.dtype).astype(np.float64)
    node_attrs = {
        "nodes_featureids": np.array(nodes_featureids, np.int64),
        "nodes_truenodeids": np.array(nodes_truenodeids, np.int64),
        "nodes_falsenodeids": np.array(nodes_falsenodeids, np.int64),
        "nodes_trueleafs": np.array(nodes_trueleafs, np.int64) != 0,
        "nodes_falseleafs": np.array(nodes_falseleafs, np.int64) != 0,
        "nodes_splits": splits,
    }
    if nodes_missing_value_tracks_true is not None:
        node_attrs["nodes_missing_value_tracks_true"] = (
            np.array(nodes_missing_value_tracks_true, np.int64) != 0
        )
    for name, a in node_attrs.items():
        if a.size != n_nodes:
            raise ValueError(f"{name} has {a.size} entries but nodes_modes has {n_nodes}")
    missing_true = node_attrs.get("nodes_missing_value_tracks_true", np.zeros(n_nodes, dtype=bool))
    targets = np.array(leaf_targetids, np.int64)
    weights = np.asarray(leaf_weights).reshape(-1).astype(np.float64)
    n_leaves = weights.size
    if targets.size != n_leaves:
        raise ValueError(
            f"leaf_targetids has {targets.size} entries but leaf_weights has {n_leaves}"
        )
    if n_targets is None:
        n_targets = int(targets.max()) + 1 if targets.size else 0
    if targets.size and (targets.min() < 0 or targets.max() >= n_targets):
        raise ValueError(f"leaf_targetids must lie in [0, n_targets={n_targets})")
    bad_modes = modes[(modes < 0) | (modes > _MODE_MEMBER)]
    if bad_modes.size:
        raise ValueError(f"nodes_modes must lie in 0..6, got {int(bad_modes[0])}")
    featureids = node_attrs["nodes_featureids"]
    if n_nodes and (featureids.min() < 0 or featureids.max() >= X.shape[1]):
        raise ValueError(
            f"nodes_featureids must lie in [0, {X.shape[1]}) (the input's features), "
            f"got {int(featureids.min())}..{int(featureids.max())}"
        )
    _check_ids(
        "nodes_truenodeids",
        node_attrs["nodes_truenodeids"],
        node_attrs["nodes_trueleafs"],
        n_nodes,
        n_leaves,
    )
    _check_ids(
        "nodes_falsenodeids",
        node_attrs["nodes_falsenodeids"],
        node_attrs["nodes_falseleafs"],
        n_nodes,
        n_leaves,
    )
    roots = np.array(tree_roots, np.int64)
    if roots.size and (roots.min() < 0 or roots.max() >= n_nodes):
        raise ValueError(f"tree_roots must index nodes in [0, {n_nodes})")

    # BRANCH_MEMBER sets: the k-th member node takes the k-th NaN-terminated run of values.
    is_member = modes == _MODE_MEMBER
    member_of = np.cumsum(is_member) - 1
    n_sets = int(is_member.sum())
    members = np.full((max(n_sets, 1), 1), np.nan)
    if n_sets:
        if membership_values is None:
            raise ValueError("BRANCH_MEMBER nodes need the membership_values attribute")
        mv = np.asarray(membership_values).reshape(-1).astype(X.dtype).astype(np.float64)
        ends = np.flatnonzero(np.isnan(mv))
        if ends.size != n_sets:
            raise ValueError(
                f"membership_values holds {ends.size} NaN-terminated sets but there are "
                f"{n_sets} BRANCH_MEMBER nodes"
            )
        starts = np.concatenate([[0], ends[:-1] + 1])
        lengths = ends - starts
        members = np.full((n_sets, max(int(lengths.max()), 1)), np.nan)
        col = np.arange(members.shape[1])
        keep = col[None, :] < lengths[:, None]
        members[keep] = mv[(starts[:, None] + col[None, :])[keep]]

    x = X.astype(np.float64)
    N = X.shape[0]
    leaves = _walk_trees(
        x,
        roots,
        featureids=featureids,
        splits=splits,
        modes=modes,
        true_ids=node_attrs["nodes_truenodeids"],
        true_leaf=node_attrs["nodes_trueleafs"],
        false_ids=node_attrs["nodes_falsenodeids"],
        false_leaf=node_attrs["nodes_falseleafs"],
        missing_true=missing_true,
        member_of=member_of,
        members=members,
    )  # (N, n_trees)
    rows = np.broadcast_to(np.arange(N)[:, None], leaves.shape)
    scores = _aggregate(
        rows.reshape(-1),
        leaves.reshape(-1),
        weights,
        targets,
        N=N,
        n_targets=n_targets,
        n_trees=roots.size,
        aggregate_function=_AGGREGATES[aggregate_function],
    )
    return _post_transform(scores, _POST_TRANSFORMS[post_transform]).astype(X.dtype)
