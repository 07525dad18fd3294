"""The harness's pure parts without running engines: config checks, statistics, the schema
validator, the rows a precision produces, the worker protocol."""

from __future__ import annotations

import io

import numpy as np
import pytest

from ember.bench import stats
from ember.bench.config import BenchConfig, parse_batches, parse_peers
from ember.bench.engines import engine_specs
from ember.bench.harness import make_inputs, take_batch
from ember.bench.schema import validate
from ember.bench.worker import recv, send
from ember.errors import ConfigError
from ember.runtime.model import TensorSpec


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"batches": ()}, "batch sizes must be positive integers, got []"),
        ({"batches": (1, -2)}, "batch sizes must be positive integers, got [1, -2]"),
        ({"batches": (4, 4)}, "batch sizes must be distinct"),
        ({"peers": ("ort", "mxnet")}, "unknown peer 'mxnet'; known peers: ort, openvino, torch"),
        ({"peers": "ort"}, "peers must be a list of names"),
        ({"precision": "fp16"}, "unknown precision 'fp16'; choose one of fp32, bf16, int8"),
        ({"task": "detect"}, "unknown task 'detect'"),
        ({"min_time": -1.0}, "min_time must be > 0 seconds"),
        ({"rounds": 0}, "rounds must be a positive integer"),
        ({"max_iters": 2.5}, "max_iters must be a positive integer"),
        ({"warmup": 0}, "warmup must be at least 1 call"),
        ({"threads": 0}, "threads must be a positive integer"),
        ({"dims": {"seq": 0}}, "dim 'seq' must be a positive integer"),
    ],
)
def test_config_rejects(kwargs, message) -> None:
    with pytest.raises(ConfigError) as e:
        BenchConfig(**kwargs)
    assert message in str(e.value)


def test_config_normalizes() -> None:
    c = BenchConfig(batches=(32, 1, 8), peers=("OnnxRuntime", "ov", "ort"), rounds=50, max_iters=7)
    assert c.batches == (1, 8, 32) and c.peers == ("ort", "openvino")
    assert c.rounds_effective == 7  # at least one call per round
    assert (
        parse_batches("8, 1") == (1, 8)
        and parse_peers("none") == ()
        and parse_peers("ov") == ("openvino",)
    )


def test_latency_summary_and_ratio() -> None:
    s = stats.latency_summary([0.004] * 9 + [0.1], samples_per_call=4)
    assert s["median_ms"] == pytest.approx(4.0) and s["max_ms"] == pytest.approx(100.0)
    assert s["throughput_median_sps"] == pytest.approx(1000.0)
    assert s["throughput_sps"] < s["throughput_median_sps"]  # the one stall drags the mean down
    rng = np.random.default_rng(0)
    ember_t = 0.010 * (1 + 0.05 * rng.random(200))
    peer_t = 0.005 * (1 + 0.05 * rng.random(200))
    r = stats.speed_ratio(ember_t, 1, peer_t, 1)
    assert r.low <= r.value <= r.high and r.value == pytest.approx(0.5, rel=0.03)
    # A peer that runs 2 requests of the batch per call is compared per sample.
    assert stats.speed_ratio([1.0], 8, [1.0], 16).value == pytest.approx(0.5)


def test_agreement() -> None:
    ref = [np.array([[0.1, 0.9], [0.8, 0.2]]), np.array([10.0, -20.0])]
    got = [np.array([[0.6, 0.4], [0.8, 0.2]]), np.array([10.0, -19.0])]
    a = stats.agreement(got, ref, "classify")
    assert a["top1_agreement"] == 0.5
    assert a["max_abs_err"] == pytest.approx(1.0)
    assert a["max_rel_err"] == pytest.approx(max(0.5 / 0.9, 1.0 / 20.0))
    e = stats.agreement(
        [np.array([[1.0, 0.0], [0.0, 2.0]])], [np.array([[1.0, 0.0], [1.0, 1.0]])], "embed"
    )
    assert e["cosine_min"] == pytest.approx(np.sqrt(0.5)) and "top1_agreement" not in e
    with pytest.raises(ValueError, match="output shape"):
        stats.agreement([np.zeros(3)], [np.zeros(4)], "embed")


def test_schema_validator_reports_problems() -> None:
    assert "$: missing required field 'results'" in validate({"schema": "ember.bench/1"})
    assert validate([]) == ["$: expected object, got list"]
    bad_ratio = {"peer": "ort", "batch": 0, "value": "fast", "low": 1.0, "high": 2.0}
    from ember.bench.schema import RATIO

    problems = validate(bad_ratio, RATIO, "$.ratios[0]")
    assert "$.ratios[0].batch: 0 < minimum 1" in problems
    assert "$.ratios[0].value: expected number, got str" in problems
    assert validate({**bad_ratio, "batch": 1, "value": 1.0, "extra": 1}, RATIO) == [
        "$: unexpected field 'extra'"
    ]


@pytest.mark.parametrize(
    ("precision", "module", "rows"),
    [
        ("fp32", False, ["ember", "ort", "openvino-f32", "openvino"]),
        ("fp32", True, ["ember", "ort", "openvino-f32", "openvino", "torch"]),
        ("bf16", True, ["ember", "ort", "openvino-f32", "openvino-bf16", "torch-bf16"]),
        ("int8", True, ["ember", "ort", "openvino-f32", "openvino-int8", "torch-int8"]),
    ],
)
def test_rows_per_precision(precision, module, rows) -> None:
    peers = ["ort", "openvino"] + (["torch"] if module else [])
    specs = engine_specs(peers, precision, has_module=module)
    assert [s.name for s in specs] == rows
    ember_row = specs[0]
    # ember runs what is asked; with int8, the same QDQ model as the peers, and the row says so.
    assert ember_row.precision == precision
    assert (ember_row.notes == ()) == (precision != "int8")
    if precision == "bf16":
        assert specs[1].precision == "fp32" and "no bf16 mode" in specs[1].notes[0]
    if precision == "int8":
        assert ember_row.quantized and specs[1].quantized and specs[3].quantized
        assert not specs[2].quantized


def test_inputs() -> None:
    specs = [
        TensorSpec("ids", np.dtype(np.int64), ("batch", "seq")),
        TensorSpec("x", np.dtype(np.float32), ("batch", 3)),
    ]
    feeds = make_inputs(specs, 2, {"seq": 5}, seed=0)
    assert (
        feeds["ids"].shape == (2, 5)
        and feeds["x"].shape == (2, 3)
        and feeds["x"].dtype == np.float32
    )
    with pytest.raises(ConfigError, match="fixed first dim 1"):
        make_inputs([TensorSpec("x", np.dtype(np.float32), (1, 3))], 4, {}, seed=0)
    cycled = take_batch({"x": np.arange(3)}, 7)["x"]
    assert cycled.tolist() == [0, 1, 2, 0, 1, 2, 0]


def test_worker_protocol_round_trip() -> None:
    buf = io.BytesIO()
    send(buf, {"op": "slice", "feeds": {"x": np.ones((2, 2), np.float32)}})
    send(buf, {"op": "exit"})
    buf.seek(0)
    first = recv(buf)
    assert first["op"] == "slice" and first["feeds"]["x"].sum() == 4
    assert recv(buf) == {"op": "exit"}
    with pytest.raises(EOFError):
        recv(buf)
