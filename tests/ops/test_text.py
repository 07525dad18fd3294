"""String ops against Python's str methods; TfIdfVectorizer against a counting twin."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ember.ops.text import (
    RegexFullMatch_20,
    StringConcat_20,
    StringNormalizer_10,
    StringSplit_20,
    TfIdfVectorizer_9,
)


def strings(*values):
    return np.array(values, dtype=object)


# ----------------------------------------------------------------------------------------------
# StringNormalizer
# ----------------------------------------------------------------------------------------------


def test_normalizer_stopwords_and_case():
    x = strings("Monday", "tuesday", "MONDAY", "wednesday")
    assert StringNormalizer_10(x, stopwords=["monday"]).tolist() == ["tuesday", "wednesday"]
    assert StringNormalizer_10(x, stopwords=["monday"], is_case_sensitive=1).tolist() == [
        "Monday",
        "tuesday",
        "MONDAY",
        "wednesday",
    ]
    assert StringNormalizer_10(x, case_change_action="UPPER").tolist() == [
        "MONDAY",
        "TUESDAY",
        "MONDAY",
        "WEDNESDAY",
    ]
    assert StringNormalizer_10(x, case_change_action="LOWER", stopwords=["Tuesday"]).tolist() == [
        "monday",
        "monday",
        "wednesday",
    ]


def test_normalizer_keeps_the_2d_shape_and_empties_to_one_blank():
    x = strings("a", "b").reshape(1, 2)
    assert StringNormalizer_10(x, stopwords=["a"]).tolist() == [["b"]]
    assert StringNormalizer_10(x, stopwords=["a", "b"]).tolist() == [[""]]
    assert StringNormalizer_10(strings("a"), stopwords=["a"]).tolist() == [""]
    assert StringNormalizer_10(x).dtype == object


def test_normalizer_bad_values():
    with pytest.raises(ValueError, match=r"shape \[C\] or \[1, C\]"):
        StringNormalizer_10(strings("a", "b", "c", "d").reshape(2, 2))
    with pytest.raises(ValueError, match="case_change_action must be NONE, LOWER or UPPER"):
        StringNormalizer_10(strings("a"), case_change_action="TITLE")
    with pytest.raises(TypeError, match="needs a string tensor"):
        StringNormalizer_10(np.zeros(2))


# ----------------------------------------------------------------------------------------------
# StringSplit / StringConcat / RegexFullMatch
# ----------------------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(alphabet=" ab,", max_size=8), min_size=1, max_size=5),
    st.sampled_from([None, "", ",", "ab"]),
    st.sampled_from([None, 0, 1, 3]),
)
def test_split_matches_str_split(values, delimiter, maxsplit):
    x = np.array(values, dtype=object)
    substrings, lengths = StringSplit_20(x, delimiter=delimiter, maxsplit=maxsplit)
    expected = [s.split(delimiter or None, -1 if maxsplit is None else maxsplit) for s in values]
    assert lengths.tolist() == [len(e) for e in expected] and lengths.dtype == np.int64
    width = max(len(e) for e in expected)
    assert substrings.shape == (len(values), width)
    assert substrings.tolist() == [e + [""] * (width - len(e)) for e in expected]


def test_split_shapes():
    sub, n = StringSplit_20(np.array([], dtype=object).reshape(0, 3))
    assert sub.shape == (0, 3, 0) and n.shape == (0, 3)
    sub, n = StringSplit_20(np.array("a b", dtype=object))
    assert sub.tolist() == ["a", "b"] and n.shape == ()
    sub, _ = StringSplit_20(strings(b"x-y"), delimiter="-")  # bytes elements are decoded
    assert sub.tolist() == [["x", "y"]]


def test_concat_broadcasts():
    got = StringConcat_20(strings("a", "b").reshape(2, 1), strings("x", "y", "z"))
    assert got.tolist() == [["ax", "ay", "az"], ["bx", "by", "bz"]] and got.dtype == object
    got = StringConcat_20(np.array("é", dtype=object), np.array("中", dtype=object))
    assert got.shape == () and got[()] == "é中"
    with pytest.raises(TypeError, match="StringConcat needs a string tensor"):
        StringConcat_20(strings("a"), np.int64([1]))


def test_regex_full_match():
    x = strings("abc", "abcd", "", "ABC").reshape(2, 2)
    got = RegexFullMatch_20(x, pattern="[a-c]+")
    assert got.dtype == np.bool_ and got.tolist() == [[True, False], [False, False]]
    assert RegexFullMatch_20(np.array([], dtype=object), pattern="a").shape == (0,)
    with pytest.raises(ValueError, match="invalid pattern"):
        RegexFullMatch_20(x, pattern="(")


# ----------------------------------------------------------------------------------------------
# TfIdfVectorizer
# ----------------------------------------------------------------------------------------------


def twin_tfidf(x, *, min_n, max_n, max_skip, ngrams, indexes, mode, weights=None):
    """ngrams: list of tuples in pool order; counts every skip-gram occurrence directly."""
    rows = np.atleast_2d(x).tolist()
    size = max(indexes) + 1
    out = np.zeros((len(rows), size))
    for r, row in enumerate(rows):
        for k, gram in enumerate(ngrams):
            n = len(gram)
            if not min_n <= n <= max_n:
                continue
            for skip in range(max_skip + 1 if n > 1 else 1):
                step = skip + 1
                for start in range(len(row)):
                    picks = [start + j * step for j in range(n)]
                    if picks[-1] < len(row) and tuple(row[p] for p in picks) == gram:
                        out[r, indexes[k]] += 1
    w = np.ones(size) if weights is None else np.asarray(weights)
    if mode == "IDF":
        out = (out > 0) * w
    elif mode == "TFIDF":
        out = out * w
    return out.reshape(-1) if np.ndim(x) == 1 else out


POOL = [2, 3, 5, 4, 5, 6, 7, 8, 6, 7]  # unigrams 2 3 5 4, bigrams (5,6) (7,8) (6,7)
NGRAMS = [(2,), (3,), (5,), (4,), (5, 6), (7, 8), (6, 7)]


@pytest.mark.parametrize("mode", ["TF", "IDF", "TFIDF"])
@pytest.mark.parametrize(
    ("min_n", "max_n", "skip"), [(1, 1, 0), (2, 2, 0), (1, 2, 0), (1, 2, 3), (2, 2, 5)]
)
@pytest.mark.parametrize("batched", [False, True])
def test_tfidf_matches_twin(mode, min_n, max_n, skip, batched):
    x = np.array(
        [[1, 1, 3, 3, 3, 7, 8, 6, 7, 5, 6, 8], [5, 6, 7, 2, 2, 4, 8, 5, 7, 6, 6, 7]], dtype=np.int32
    )
    x = x if batched else x[0]
    indexes = [0, 1, 2, 3, 4, 5, 6]
    weights = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5] if mode != "TF" else None
    got = TfIdfVectorizer_9(
        x,
        min_gram_length=min_n,
        max_gram_length=max_n,
        max_skip_count=skip,
        mode=mode,
        ngram_counts=[0, 4],
        ngram_indexes=indexes,
        pool_int64s=POOL,
        weights=weights,
    )
    expected = twin_tfidf(
        x,
        min_n=min_n,
        max_n=max_n,
        max_skip=skip,
        ngrams=NGRAMS,
        indexes=indexes,
        mode=mode,
        weights=weights,
    )
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, expected)


def test_tfidf_strings_and_permuted_indexes():
    x = strings("a", "b", "a", "c", "a", "b")
    pool = ["a", "c", "a", "b", "b", "a"]
    indexes = [3, 0, 1, 2]  # a, c, (a b), (b a)
    got = TfIdfVectorizer_9(
        x,
        min_gram_length=1,
        max_gram_length=2,
        max_skip_count=0,
        mode="TF",
        ngram_counts=[0, 2],
        ngram_indexes=indexes,
        pool_strings=pool,
    )
    ngrams = [("a",), ("c",), ("a", "b"), ("b", "a")]
    expected = twin_tfidf(
        list(x), min_n=1, max_n=2, max_skip=0, ngrams=ngrams, indexes=indexes, mode="TF"
    )
    np.testing.assert_array_equal(got, expected)
    assert got.tolist() == [1, 2, 1, 3]


def test_tfidf_bad_values():
    common = dict(
        min_gram_length=1, max_gram_length=1, max_skip_count=0, ngram_counts=[0], ngram_indexes=[0]
    )
    with pytest.raises(ValueError, match="mode must be TF, IDF or TFIDF"):
        TfIdfVectorizer_9(np.int64([1]), mode="BM25", pool_int64s=[1], **common)
    with pytest.raises(ValueError, match="exactly one of pool_int64s and pool_strings"):
        TfIdfVectorizer_9(np.int64([1]), mode="TF", **common)
    with pytest.raises(ValueError, match="weights need one value per output column"):
        TfIdfVectorizer_9(np.int64([1]), mode="IDF", pool_int64s=[1], weights=[1.0, 2.0], **common)
    with pytest.raises(ValueError, match=r"\[C\] or \[B, C\]"):
        TfIdfVectorizer_9(np.zeros((1, 1, 1), np.int64), mode="TF", pool_int64s=[1], **common)
