"""The harness end to end on a tiny model built in code: the JSON report against its schema, the
HTML report's plots, a missing peer's skip line, int8, torch modules. Never asserts a time."""

from __future__ import annotations

import contextlib
import html.parser
import importlib.util
import io
import json
import xml.etree.ElementTree as ET

import numpy as np
import onnx
import pytest
from tests.models import mlp

import ember.bench
from ember.bench import validate
from ember.bench.html import PLOTS

# The HTML report needs matplotlib (the `bench` extra); without it, only its test is skipped.
HAS_MATPLOTLIB = importlib.util.find_spec("matplotlib") is not None
# Tiny budgets: the tests check what is reported, not how fast anything is.
FAST = {"min_time": 0.03, "rounds": 2, "max_iters": 20, "warmup": 1}


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One run shared by the tests below: ember and ORT (when installed) at batches 1 and 3, with
    OpenVINO asked for but hidden, so that it must be skipped with one line."""
    tmp = tmp_path_factory.mktemp("bench")
    path = tmp / "mlp.onnx"
    onnx.save(mlp(), path)
    err = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stderr(err):
        mp.setitem(__import__("sys").modules, "openvino", None)  # as if not installed
        report = ember.bench(
            path,
            batches=[1, 3],
            peers=["ort", "openvino"],
            json=tmp / "r.json",
            html=tmp / "r.html" if HAS_MATPLOTLIB else None,
            show=False,
            **FAST,
        )
    return {
        "report": report,
        "stderr": err.getvalue(),
        "json": tmp / "r.json",
        "html": tmp / "r.html",
    }


def test_json_report_matches_its_schema(run) -> None:
    doc = json.loads(run["json"].read_text())
    assert validate(doc) == []
    assert doc == json.loads(run["report"].to_json())
    assert doc["schema"] == "ember.bench/1"
    assert doc["model"]["task"] == "classify" and doc["model"]["input_data"] == "random (seed 0)"
    assert doc["config"]["batches"] == [1, 3] and doc["config"]["threads"] >= 1
    assert doc["machine"]["cpu_flags"] == ember.kernels.cpu.cpu_info()
    assert "numpy" in doc["machine"]["versions"]
    assert doc["engines"][0]["name"] == "ember"
    for row in doc["results"]:
        assert row["status"] == "ok", row["error"]
        lat = row["latency"]
        assert 1 <= lat["n"] <= FAST["max_iters"] and len(row["samples_ms"]) == lat["n"]
        assert lat["min_ms"] <= lat["median_ms"] <= lat["p90_ms"] <= lat["p99_ms"] <= lat["max_ms"]
        assert row["samples_per_call"] == row["batch"]
        assert row["load_s"] >= 0 and row["first_call_s"] > 0 and row["warmup_calls"] >= 1
        mem = row["memory"]
        assert mem["scope"] in ("batch", "process")
        assert mem["peak_rss_bytes"] >= mem["baseline_rss_bytes"] > 0
        assert row["agreement"]["top1_agreement"] == 1.0
        assert row["agreement"]["max_abs_err"] < 1e-5
    assert {(r["engine"], r["batch"]) for r in doc["results"]} >= {("ember", 1), ("ember", 3)}
    assert any("every engine gets" in line for line in doc["fairness"])


def test_ratios_against_ort(run) -> None:
    pytest.importorskip("onnxruntime")
    doc = run["report"].data
    assert [e["name"] for e in doc["engines"]] == ["ember", "ort"]
    ort = doc["engines"][1]
    assert ort["settings"]["graph_optimization_level"] == "ORT_ENABLE_ALL"
    assert ort["settings"]["intra_op_num_threads"] == doc["config"]["threads"]
    assert [(r["peer"], r["batch"]) for r in doc["ratios"]] == [("ort", 1), ("ort", 3)]
    for r in doc["ratios"]:
        assert 0 < r["low"] <= r["value"] <= r["high"]
    assert run["report"].ratio("ort", 3) == doc["ratios"][1]["value"]


def test_missing_peer_is_skipped_with_one_line(run) -> None:
    lines = [line for line in run["stderr"].splitlines() if "OpenVINO" in line]
    assert lines == ["skipping OpenVINO: not installed (pip install openvino)"]
    doc = run["report"].data
    assert doc["skipped"] == [
        {
            "peer": "openvino",
            "reason": "not installed",
            "install": "pip install openvino",
            "message": lines[0],
        }
    ]
    assert not any(e["peer"] == "openvino" for e in doc["engines"])


class _Figures(html.parser.HTMLParser):
    """Collects each <figure id=...>'s raw inner markup, and any reference to an outside file."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.text, self.figures, self.external, self._open = text, {}, [], None
        self.feed(text)

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "figure":
            self._open = (a.get("id"), self.getpos())
        for key in ("src", "href"):
            if a.get(key) and not a[key].startswith(("data:", "#")):
                self.external.append(a[key])
        if tag in ("script", "link"):
            self.external.append(tag)

    def handle_endtag(self, tag):
        if tag == "figure" and self._open:
            (fid, (line, col)), end = self._open, self.getpos()
            lines = self.text.splitlines(keepends=True)
            start = sum(len(x) for x in lines[: line - 1]) + col
            stop = sum(len(x) for x in lines[: end[0] - 1]) + end[1]
            self.figures[fid] = self.text[start:stop]
            self._open = None


def test_html_report_is_self_contained_with_its_plots(run) -> None:
    if not HAS_MATPLOTLIB:
        pytest.skip("matplotlib is not installed (pip install -e '.[bench]'): no HTML report")
    page = run["html"].read_text()
    assert page.startswith("<!DOCTYPE html>")
    parsed = _Figures(page)
    assert parsed.external == []
    assert set(PLOTS) <= set(parsed.figures)
    for fid in PLOTS:
        inner = parsed.figures[fid]
        svg = inner[inner.index("<svg") : inner.rindex("</svg>") + len("</svg>")]
        root = ET.fromstring(svg)  # well-formed SVG, inline
        texts = " ".join(t.text or "" for t in root.iter() if t.tag.endswith("text"))
        assert "ember (fp32)" in texts, fid
        assert len(list(root.iter("{http://www.w3.org/2000/svg}path"))) > 3, fid
    assert "latency per call" in parsed.figures["plot-latency"]
    assert "throughput vs batch" in parsed.figures["plot-throughput"]
    assert "speed vs accuracy" in parsed.figures["plot-accuracy"]
    assert "skipping OpenVINO: not installed" in page


def test_int8_is_labelled_as_what_ran(tmp_path) -> None:
    pytest.importorskip("onnxruntime")
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), path)
    report = ember.bench(path, batches=[2], peers=["ort"], precision="int8", progress=False, **FAST)
    doc = report.data
    assert validate(doc) == []
    engines = {e["name"]: e for e in doc["engines"]}
    assert engines["ember"]["precision_ran"] == "int8 QDQ" and engines["ember"]["quantized"]
    assert engines["ember"]["notes"] == [
        "the same int8 QDQ model as ONNX Runtime, fused into ember's int8 kernels"
    ]
    assert engines["ort"]["precision_ran"] == "int8 QDQ" and engines["ort"]["quantized"]
    assert any("ember ran the same int8 QDQ model" in line for line in doc["fairness"])
    # both ran the same file: ember agrees with ORT to a few int8 steps
    ember_out = report.result("ember", 2)["agreement"]["max_abs_err"]
    assert ember_out < 0.1
    # int8 is not exact: the report measures how far off it is instead of hiding it.
    assert report.result("ort", 2)["agreement"]["max_abs_err"] > 0


def test_given_inputs_are_cycled_into_batches(tmp_path) -> None:
    x = np.random.default_rng(1).standard_normal((2, 4)).astype(np.float32)
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), path)
    report = ember.bench(str(path), inputs={"x": x}, batches=[5], peers=[], progress=False, **FAST)
    assert report.data["model"]["input_data"] == "given"
    assert report.result("ember", 5)["samples_per_call"] == 5
    with pytest.raises(ember.ConfigError, match=r"inputs give \['y'\], the model takes \['x'\]"):
        ember.bench(path, inputs={"y": x}, peers=[], progress=False)


@pytest.mark.slow
def test_torch_module_is_exported_and_run_as_a_peer() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")
    torch.manual_seed(0)
    module = torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.ReLU(), torch.nn.Linear(16, 4))
    x = np.random.default_rng(0).standard_normal((4, 6)).astype(np.float32)
    report = ember.bench(
        module, inputs=[x], batches=[1, 4], peers=["torch"], progress=False, **FAST
    )
    doc = report.data
    assert validate(doc) == []
    torch_engine = doc["engines"][1]
    assert torch_engine["name"] == "torch" and torch_engine["isolation"] == "process"
    assert torch_engine["settings"]["num_threads"] == doc["config"]["threads"]
    for b in (1, 4):
        row = report.result("torch", b)
        assert row["status"] == "ok" and row["agreement"]["top1_agreement"] == 1.0
        assert row["memory"]["peak_rss_bytes"] > 0
        assert report.ratio("torch", b) is not None


@pytest.mark.slow
def test_unpicklable_torch_module_runs_in_process() -> None:
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")

    class Local(torch.nn.Module):  # defined in a function: a worker process cannot import it
        def forward(self, x):
            return torch.tanh(x) * 2

    x = np.random.default_rng(0).standard_normal((3, 5)).astype(np.float32)
    report = ember.bench(
        Local(), inputs=[x], batches=[3], peers=["torch"], task="embed", progress=False, **FAST
    )
    engine = report.data["engines"][1]
    assert engine["isolation"] == "in-process"
    assert any("peak memory not measured" in n for n in engine["notes"])
    row = report.result("torch", 3)
    assert row["memory"] == {
        "peak_rss_bytes": None,
        "baseline_rss_bytes": None,
        "peak_delta_bytes": None,
        "scope": "unmeasured",
    }
    assert row["agreement"]["cosine_min"] > 0.99999


@pytest.mark.slow
def test_openvino_twice_with_its_hints(tmp_path) -> None:
    pytest.importorskip("openvino")
    path = tmp_path / "mlp.onnx"
    onnx.save(mlp(), path)
    report = ember.bench(path, batches=[1, 2], peers=["openvino"], progress=False, **FAST)
    doc = report.data
    assert validate(doc) == []
    assert [e["name"] for e in doc["engines"]] == ["ember", "openvino-f32", "openvino"]
    assert doc["engines"][1]["precision_ran"] == "f32"
    assert doc["engines"][2]["precision_ran"] in ("f32", "bf16", "f16")  # read back, not assumed
    for name in ("openvino-f32", "openvino"):
        one, two = report.result(name, 1), report.result(name, 2)
        assert one["settings"]["performance_hint"] == "LATENCY" and one["samples_per_call"] == 1
        assert two["settings"]["performance_hint"] == "THROUGHPUT"
        assert two["samples_per_call"] == 2 * two["settings"]["infer_requests_per_call"]
        assert two["settings"]["inference_num_threads"] == doc["config"]["threads"]
        assert one["agreement"]["top1_agreement"] == 1.0
    assert any("OpenVINO twice" in line for line in doc["fairness"])


def test_ember_can_run_a_compressed_model_against_the_peers_original(tmp_path) -> None:
    """What a user deploys: ember on its pruned/quantized file, the peers on the original (or
    their int8 of it); agreement is still measured against the original."""
    pytest.importorskip("onnxruntime")
    original, compressed = tmp_path / "mlp.onnx", tmp_path / "mlp.small.onnx"
    onnx.save(mlp(), original)
    smaller = mlp()
    w = onnx.numpy_helper.to_array(smaller.graph.initializer[0]).copy()
    w[np.abs(w) < 0.35] = 0.0  # "pruned": some outputs move
    smaller.graph.initializer[0].CopyFrom(onnx.numpy_helper.from_array(w, "W"))
    onnx.save(smaller, compressed)
    report = ember.bench(
        original, ember_model=compressed, batches=[2], peers=["ort"], progress=False, **FAST
    )
    engines = {e["name"]: e for e in report.data["engines"]}
    assert "ran mlp.small.onnx, not the model the peers ran" in engines["ember"]["notes"]
    assert report.result("ort", 2)["agreement"]["max_abs_err"] < 1e-5
    assert report.result("ember", 2)["agreement"]["max_abs_err"] > 1e-3  # the pruned weights show
    with pytest.raises(ember.ModelError, match="ember_model: no such model file"):
        ember.bench(original, ember_model=tmp_path / "nope.onnx", peers=[], progress=False)
