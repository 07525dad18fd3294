"""String ops: StringNormalizer, StringSplit, StringConcat, RegexFullMatch and TfIdfVectorizer.

String tensors are NumPy object arrays of Python str (bytes elements are decoded as UTF-8).
Per-string work goes through `np.frompyfunc`, the one way NumPy maps a Python function over strings.
Regular expressions use Python's `re`, which accepts the RE2 syntax the spec asks for (a superset).
"""

from __future__ import annotations

import itertools
import re
from typing import Any

import numpy as np

from ember.ops.registry import op


def _as_str(s: Any) -> str:
    return s.decode("utf-8") if isinstance(s, bytes) else str(s)


def _map(fn: Any, x: np.ndarray) -> np.ndarray:
    """fn applied to every element: an object array of x's shape (0-d included)."""
    out = np.frompyfunc(fn, 1, 1)(x)
    if isinstance(out, np.ndarray):
        return out
    box = np.empty((), dtype=object)  # a 0-d input gives a bare result, maybe a list
    box[()] = out
    return box


def _strings(x: np.ndarray, what: str) -> np.ndarray:
    """`x` as an object array of str; TypeError for non-string tensors."""
    x = np.asarray(x)
    if x.dtype.kind not in "OUS":
        raise TypeError(f"{what} needs a string tensor, got {x.dtype}")
    if x.dtype.kind == "O" and all(isinstance(s, str) for s in x.flat):
        return x
    return _map(_as_str, x)


@op
def StringNormalizer_10(
    X: np.ndarray,
    *,
    case_change_action: str = "NONE",
    is_case_sensitive: int = 0,
    locale: str = "",
    stopwords: list[str] | None = None,
) -> np.ndarray:
    """Drop elements equal to a stopword, then lower- or upper-case what is left.

    X is [C] or [1, C]; if every element is dropped the output is [""] (or [[""]]).
    """
    del locale  # NOTE: case changes use Python's Unicode rules, not a C locale
    if case_change_action not in ("NONE", "LOWER", "UPPER"):
        raise ValueError(
            f"case_change_action must be NONE, LOWER or UPPER, got {case_change_action!r}"
        )
    x = _strings(X, "StringNormalizer")
    if x.ndim not in (1, 2) or (x.ndim == 2 and x.shape[0] != 1):
        raise ValueError(
            f"StringNormalizer input must have shape [C] or [1, C], got {list(x.shape)}"
        )
    row = x.reshape(-1)
    if stopwords:
        if is_case_sensitive:
            stops = set(stopwords)
            keep = _map(lambda s: s not in stops, row)
        else:
            stops = {w.lower() for w in stopwords}
            keep = _map(lambda s: s.lower() not in stops, row)
        row = row[keep.astype(bool)]
    if case_change_action == "LOWER":
        row = _map(str.lower, row)
    elif case_change_action == "UPPER":
        row = _map(str.upper, row)
    if row.size == 0:
        row = np.array([""], dtype=object)
    row = row.astype(object)
    return row.reshape(1, -1) if x.ndim == 2 else row


@op
def StringSplit_20(
    X: np.ndarray, *, delimiter: str | None = None, maxsplit: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Split each string; returns (substrings padded with "" to the longest split, counts).

    No delimiter (or "") splits on runs of whitespace and drops empty pieces, like str.split().
    """
    x = _strings(X, "StringSplit")
    sep = delimiter if delimiter else None
    limit = -1 if maxsplit is None else maxsplit
    if limit < -1:
        raise ValueError(f"StringSplit maxsplit must be non-negative, got {maxsplit}")
    pieces = _map(lambda s: s.split(sep, limit), x)
    lengths = _map(len, pieces).astype(np.int64)
    width = int(lengths.max(initial=0))
    out = np.full((*x.shape, width), "", dtype=object)
    for index in np.ndindex(x.shape):  # NOTE: ragged lists have no vectorized NumPy form
        out[index][: lengths[index]] = pieces[index]
    return out, lengths


@op
def StringConcat_20(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Elementwise X + Y with broadcasting."""
    joined = np.add(_strings(X, "StringConcat"), _strings(Y, "StringConcat"))
    return np.asarray(joined, dtype=object)  # a 0-d add returns a bare str


@op
def RegexFullMatch_20(X: np.ndarray, *, pattern: str | None = None) -> np.ndarray:
    """Whether each string matches `pattern` in full."""
    if pattern is None:
        raise ValueError("RegexFullMatch needs a pattern")
    try:
        regex = re.compile(pattern)
    except re.error as e:
        raise ValueError(f"RegexFullMatch: invalid pattern {pattern!r}: {e}") from e
    x = _strings(X, "RegexFullMatch")
    return _map(lambda s: regex.fullmatch(s) is not None, x).astype(bool)


@op
def TfIdfVectorizer_9(
    X: np.ndarray,
    *,
    max_gram_length: int,
    max_skip_count: int,
    min_gram_length: int,
    mode: str,
    ngram_counts: list[int],
    ngram_indexes: list[int],
    pool_int64s: list[int] | None = None,
    pool_strings: list[str] | None = None,
    weights: list[float] | None = None,
) -> np.ndarray:
    """Count the pool's n-grams (sizes min..max, with up to max_skip_count skipped items between
    neighbours) in each row of X ([C] or [B, C]) and weight them by `mode` (TF, IDF, TFIDF).

    Unigrams are counted once; longer n-grams once per skip distance, as onnxruntime does.
    """
    if mode not in ("TF", "IDF", "TFIDF"):
        raise ValueError(f"TfIdfVectorizer mode must be TF, IDF or TFIDF, got {mode!r}")
    if (pool_int64s is None) == (pool_strings is None):
        raise ValueError("TfIdfVectorizer needs exactly one of pool_int64s and pool_strings")
    if not 1 <= min_gram_length <= max_gram_length or max_skip_count < 0:
        raise ValueError(
            f"TfIdfVectorizer needs 1 <= min_gram_length <= max_gram_length and "
            f"max_skip_count >= 0, got {min_gram_length}, {max_gram_length}, {max_skip_count}"
        )
    pool: np.ndarray = (
        np.asarray(pool_int64s, dtype=np.int64)
        if pool_int64s is not None
        else np.asarray(pool_strings, dtype=object)
    )
    x = np.asarray(X)
    if pool_strings is not None:
        x = _strings(x, "TfIdfVectorizer")
    squeeze = x.ndim <= 1
    if x.ndim > 2:
        raise ValueError(f"TfIdfVectorizer input must be [C] or [B, C], got shape {list(x.shape)}")
    x = x.reshape(1, -1) if squeeze else x  # (B, C)
    B, C = x.shape
    output_size = max(ngram_indexes) + 1
    counts = np.zeros((B, output_size), dtype=np.int64)
    bounds = [*ngram_counts, pool.size]
    first_id = 0  # index into ngram_indexes of the first n-gram of the current size
    for size_minus_1, (start, end) in enumerate(itertools.pairwise(bounds)):
        n = size_minus_1 + 1
        grams = pool[start:end].reshape(-1, n)  # (K, n)
        columns = np.asarray(ngram_indexes[first_id : first_id + len(grams)], dtype=np.int64)
        first_id += len(grams)
        if not min_gram_length <= n <= max_gram_length or len(grams) == 0:
            continue
        for skip in range(max_skip_count + 1 if n > 1 else 1):
            step = skip + 1
            n_starts = C - (n - 1) * step
            if n_starts <= 0:
                break
            positions = np.arange(n_starts)[:, None] + step * np.arange(n)[None, :]  # (P, n)
            windows = x[:, positions]  # (B, P, n)
            hits = (windows[:, :, None, :] == grams[None, None, :, :]).all(axis=3)  # (B, P, K)
            np.add.at(counts.T, columns, hits.sum(axis=1).T)  # columns may repeat
    w = np.asarray(weights, dtype=np.float32) if weights else None
    if w is not None and w.shape != (output_size,):
        raise ValueError(
            f"TfIdfVectorizer weights need one value per output column ({output_size}), "
            f"got {w.size}"
        )
    if mode == "TF":
        y = counts.astype(np.float32)
    elif mode == "IDF":
        present = (counts > 0).astype(np.float32)
        y = present * w if w is not None else present
    else:
        y = counts * w if w is not None else counts.astype(np.float32)
    y = y.astype(np.float32)
    return y.reshape(-1) if squeeze else y
