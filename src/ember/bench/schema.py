"""The layout of `ember bench --json`, as a JSON Schema with a description on every field.

`python -m ember.bench.schema` prints it. `validate(doc)` checks a document against it (the subset
of JSON Schema used here: type, properties, required, items, enum, minimum, additionalProperties)
and returns the problems found, so no jsonschema dependency is needed. Times are in seconds unless
the name says `_ms`; memory in bytes. What could not be measured is null, never a made-up number.
"""

from __future__ import annotations

import json
from typing import Any

NUM = {"type": "number"}
NUM_OR_NULL = {"type": ["number", "null"]}
STR_OR_NULL = {"type": ["string", "null"]}


def _obj(
    props: dict[str, Any],
    description: str,
    *,
    required: list[str] | None = None,
    extra: bool = False,
) -> dict[str, Any]:
    return {
        "type": "object",
        "description": description,
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": extra,
    }


def _d(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "description": description}


TENSOR = _obj(
    {
        "name": _d({"type": "string"}, "input or output name"),
        "dtype": _d(STR_OR_NULL, "NumPy dtype name; null when not a tensor"),
        "shape": _d({"type": ["array", "null"]}, "dims: ints, or strings for symbolic dims"),
    },
    "one model input or output",
)

LATENCY = _obj(
    {
        "n": _d({"type": "integer", "minimum": 1}, "timed calls"),
        "median_ms": _d(NUM, "median latency of one call"),
        "p90_ms": _d(NUM, "90th percentile"),
        "p99_ms": _d(NUM, "99th percentile (with few calls, close to the max)"),
        "mean_ms": _d(NUM, "mean"),
        "std_ms": _d(NUM, "standard deviation"),
        "min_ms": _d(NUM, "fastest call"),
        "max_ms": _d(NUM, "slowest call"),
        "throughput_sps": _d(
            NUM, "samples per second over all timed calls: samples_per_call * n / total seconds"
        ),
        "throughput_median_sps": _d(
            NUM, "samples per second of a median call: samples_per_call / median (what ratios use)"
        ),
    },
    "per-call latency of the timed calls (warm-up excluded)",
)

MEMORY = _obj(
    {
        "peak_rss_bytes": _d(
            {"type": ["integer", "null"]},
            "peak resident set of the engine's process during this batch (VmHWM)",
        ),
        "baseline_rss_bytes": _d(
            {"type": ["integer", "null"]},
            "its resident set after importing the engine's library, before loading the model",
        ),
        "peak_delta_bytes": _d(
            {"type": ["integer", "null"]},
            "peak_rss_bytes - baseline_rss_bytes: what the model, its arenas and workspaces cost",
        ),
        "scope": _d(
            {"enum": ["batch", "process", "unmeasured"]},
            "batch: the peak was reset before this batch; process: peak since the process started",
        ),
    },
    "peak memory; null when the engine ran in the benchmark's own process",
)

AGREEMENT = _obj(
    {
        "max_abs_err": _d(NUM, "max |engine - exact| over all elements of all outputs"),
        "max_rel_err": _d(
            NUM, "max_abs_err of an output divided by max |exact| of that output (max over outputs)"
        ),
        "top1_agreement": _d(
            NUM, "classify: fraction of samples whose argmax matches exact mode's"
        ),
        "cosine_min": _d(
            NUM, "embed: smallest cosine similarity between a sample's output and exact mode's"
        ),
        "cosine_mean": _d(NUM, "embed: mean of those cosine similarities"),
    },
    "outputs against ember's exact mode on the same inputs",
    required=["max_abs_err", "max_rel_err"],
)

RESULT = _obj(
    {
        "engine": _d({"type": "string"}, "an engines[].name"),
        "batch": _d({"type": "integer", "minimum": 1}, "batch size of one request"),
        "status": _d(
            {"enum": ["ok", "error"]}, "error: the engine failed to load or run at this batch"
        ),
        "error": _d(STR_OR_NULL, "what failed, when status is error"),
        "load_s": _d(
            NUM,
            "load + compile time; engines that compile per batch (OpenVINO) count it each batch",
        ),
        "first_call_s": _d(
            NUM, "the first call after loading, timed apart (lazy initialization shows here)"
        ),
        "warmup_calls": _d({"type": "integer"}, "untimed calls, the first one included"),
        "samples_per_call": _d(
            {"type": "integer", "minimum": 1},
            "batch, times the parallel requests of one OpenVINO THROUGHPUT call",
        ),
        "latency": _d({**LATENCY, "type": ["object", "null"]}, LATENCY["description"]),
        "samples_ms": _d(
            {"type": "array", "items": NUM}, "every timed call in ms, in the order run"
        ),
        "memory": _d({**MEMORY, "type": ["object", "null"]}, MEMORY["description"]),
        "agreement": _d({**AGREEMENT, "type": ["object", "null"]}, AGREEMENT["description"]),
        "agreement_error": _d({"type": "string"}, "why agreement is null for an ok row"),
        "settings": _d(
            {"type": "object"},
            "the engine's settings as it reported them (threads, hints, precision read back)",
        ),
    },
    "one engine at one batch size",
    required=["engine", "batch", "status", "error", "latency", "memory", "agreement"],
)

ENGINE = _obj(
    {
        "name": _d(
            {"type": "string"},
            "row id: ember, ort, openvino-f32, openvino, openvino-bf16, openvino-int8, torch, "
            "torch-bf16, torch-int8",
        ),
        "label": _d({"type": "string"}, "display name"),
        "peer": _d({"enum": ["ember", "ort", "openvino", "torch"]}, "which engine"),
        "library": _d({"type": "string"}, "distribution name"),
        "version": _d(STR_OR_NULL, "installed version"),
        "precision": _d(
            {"enum": ["fp32", "f32", "bf16", "int8", "default"]},
            "what it was asked to run (default: OpenVINO's own choice)",
        ),
        "precision_ran": _d(
            STR_OR_NULL, "what it ran, read back from the engine where it can say (OpenVINO)"
        ),
        "quantized": _d(
            {"type": "boolean"}, "runs the int8 QDQ model made by ONNX Runtime's quantizer"
        ),
        "notes": _d({"type": "array", "items": {"type": "string"}}, "caveats, in words"),
        "isolation": _d(
            {"type": ["string", "null"], "enum": ["process", "in-process", None]},
            "process: its own worker process",
        ),
        "status": _d({"enum": ["ok", "error"]}, "error: failed to start"),
        "error": _d(STR_OR_NULL, "why it failed to start"),
        "settings": _d({"type": "object"}, "settings of its first successful batch"),
    },
    "one row of the comparison",
)

RATIO = _obj(
    {
        "peer": _d({"type": "string"}, "an engines[].name"),
        "batch": _d({"type": "integer", "minimum": 1}, "batch size"),
        "value": _d(
            NUM,
            "ember speed / peer speed = peer median time per sample / ember median time per "
            "sample; >1: ember faster",
        ),
        "low": _d(NUM, "2.5th percentile of a bootstrap over the timed calls"),
        "high": _d(NUM, "97.5th percentile"),
    },
    "ember against one peer at one batch size",
)

SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "ember bench report",
    **_obj(
        {
            "schema": _d({"enum": ["ember.bench/1"]}, "this layout's id and version"),
            "model": _obj(
                {
                    "name": _d({"type": "string"}, "model name"),
                    "path": _d(
                        {"type": "string"},
                        "the ONNX file benchmarked (a temporary file for in-memory models)",
                    ),
                    "inputs": _d({"type": "array", "items": TENSOR}, "inputs"),
                    "outputs": _d({"type": "array", "items": TENSOR}, "outputs"),
                    "task": _d({"enum": ["classify", "embed"]}, "how agreement is measured"),
                    "input_data": _d({"type": "string"}, "'given' or 'random (seed N)'"),
                },
                "the model",
            ),
            "config": _obj(
                {
                    "batches": _d(
                        {"type": "array", "items": {"type": "integer", "minimum": 1}}, "batch sizes"
                    ),
                    "peers": _d({"type": "array", "items": {"type": "string"}}, "peers asked for"),
                    "threads": _d({"type": "integer", "minimum": 1}, "threads every engine got"),
                    "precision": _d({"enum": ["fp32", "bf16", "int8"]}, "precision asked for"),
                    "min_time_s": _d(NUM, "seconds of timed calls per engine and batch"),
                    "max_iters": _d(
                        {"type": "integer", "minimum": 1},
                        "timed calls per engine and batch, at most",
                    ),
                    "rounds": _d({"type": "integer", "minimum": 1}, "interleaved rounds"),
                    "warmup": _d({"type": "integer", "minimum": 1}, "untimed calls, at least"),
                    "task": _d({"enum": ["auto", "classify", "embed"]}, "task asked for"),
                    "dims": _d({"type": "object"}, "sizes given to symbolic dims"),
                    "seed": _d({"type": "integer"}, "seed of random inputs"),
                },
                "what was asked",
            ),
            "machine": _obj(
                {
                    "cpu_model": _d(STR_OR_NULL, "CPU name"),
                    "cpu_flags": _d(
                        {"type": "object"}, "features: avx2, avx512f, avx512vnni, avx512bf16, ..."
                    ),
                    "cpu_count": _d({"type": ["integer", "null"]}, "logical CPUs"),
                    "cpu_affinity": _d({"type": ["integer", "null"]}, "CPUs this process may use"),
                    "platform": _d({"type": "string"}, "OS"),
                    "machine": _d({"type": "string"}, "architecture"),
                    "python": _d({"type": "string"}, "Python version"),
                    "load_average": _d(
                        {"type": ["array", "null"]}, "1/5/15-minute load when the run started"
                    ),
                    "load_average_end": _d({"type": ["array", "null"]}, "and when it ended"),
                    "versions": _d(
                        {"type": "object"}, "versions of ember, Python and the libraries involved"
                    ),
                    "time": _d({"type": "string"}, "UTC start time, ISO 8601"),
                },
                "where it ran",
            ),
            "engines": _d({"type": "array", "items": ENGINE}, "the rows compared, ember first"),
            "skipped": _d(
                {
                    "type": "array",
                    "items": _obj(
                        {
                            "peer": _d({"type": "string"}, "peer name"),
                            "reason": _d({"type": "string"}, "why"),
                            "install": _d({"type": "string"}, "how to install it"),
                            "message": _d({"type": "string"}, "the line printed"),
                        },
                        "a peer that was asked for and not run",
                    ),
                },
                "skipped peers",
            ),
            "results": _d({"type": "array", "items": RESULT}, "one per engine and batch"),
            "ratios": _d(
                {"type": "array", "items": RATIO}, "one per peer and batch where both ran"
            ),
            "fairness": _d(
                {"type": "array", "items": {"type": "string"}},
                "how every engine was set up and measured, in words",
            ),
        },
        "the report",
    ),
}

_TYPES: dict[str, Any] = {
    "object": dict,
    "array": list,
    "string": str,
    "boolean": bool,
    "null": type(None),
    "integer": int,
    "number": (int, float),
}


def validate(doc: Any, schema: dict[str, Any] | None = None, where: str = "$") -> list[str]:
    """Problems in `doc` against `schema` (default: SCHEMA), as "path: what" strings; [] when valid.

    >>> validate({"schema": "ember.bench/1"})[:1]
    ["$: missing required field 'model'"]
    """
    schema = SCHEMA if schema is None else schema
    problems: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = types if isinstance(types, list) else [types]
        ok = any(
            isinstance(doc, _TYPES[t])
            and not (t in ("integer", "number") and isinstance(doc, bool))
            for t in names
        )
        if not ok:
            return [f"{where}: expected {' or '.join(names)}, got {type(doc).__name__}"]
    if "enum" in schema and doc not in schema["enum"]:
        problems.append(f"{where}: {doc!r} is not one of {schema['enum']}")
    if "minimum" in schema and isinstance(doc, int | float) and doc < schema["minimum"]:
        problems.append(f"{where}: {doc} < minimum {schema['minimum']}")
    if isinstance(doc, dict) and "properties" in schema:
        props = schema["properties"]
        problems += [
            f"{where}: missing required field {k!r}"
            for k in schema.get("required", [])
            if k not in doc
        ]
        for key, value in doc.items():
            if key in props:
                problems += validate(value, props[key], f"{where}.{key}")
            elif schema.get("additionalProperties") is False:
                problems.append(f"{where}: unexpected field {key!r}")
    if isinstance(doc, list) and "items" in schema:
        for i, item in enumerate(doc):
            problems += validate(item, schema["items"], f"{where}[{i}]")
    return problems


if __name__ == "__main__":
    print(json.dumps(SCHEMA, indent=2))
