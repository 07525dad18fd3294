"""Helpers for the serving tests: a stdlib HTTP client and request builders."""

from __future__ import annotations

import asyncio
import http.client
import json
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

KEY = "test-key-0123456789"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    url: str,
    method: str,
    path: str,
    body: Any = None,
    headers: dict[str, str] | None = None,
    key: str | None = KEY,
) -> Reply:
    """One HTTP request with the stdlib client; `body`: bytes, a dict (as JSON) or an iterator."""
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=60)
    hdrs = dict(headers or {})
    if key is not None:
        hdrs.setdefault("Authorization", f"Bearer {key}")
    if isinstance(body, dict | list):
        body = json.dumps(body).encode()
        hdrs.setdefault("Content-Type", "application/json")
    try:
        conn.request(method, path, body=body, headers=hdrs)
        resp = conn.getresponse()
        return Reply(resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read())
    finally:
        conn.close()


def infer_body(x: np.ndarray, name: str = "input", datatype: str = "FP32") -> dict[str, Any]:
    return {
        "inputs": [
            {"name": name, "shape": list(x.shape), "datatype": datatype, "data": x.ravel().tolist()}
        ]
    }


def digits(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, 8, 8)).astype(np.float32)


def hold_batches(batcher: Any) -> threading.Event:
    """Make `batcher` hold every batch until the returned event is set (bounded: 30 s at most), so
    a test can fill its queue. The original runner is restored on `batcher._unheld_run`."""
    gate = threading.Event()
    run = batcher._run

    async def held(feeds: Any) -> Any:
        for _ in range(3000):
            if gate.is_set():
                break
            await asyncio.sleep(0.01)
        return await run(feeds)

    batcher._unheld_run = run
    batcher._run = held
    return gate
