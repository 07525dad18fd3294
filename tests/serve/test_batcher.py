"""The dynamic batcher: concatenation and split, grouping by shape, and backpressure."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from ember.serve.batcher import Batcher, QueueFullError


def _rows(n, width=4, value=0.0):
    return {"x": np.full((n, width), value, np.float32)}


def test_requests_are_batched_and_split_back():
    calls = []

    async def run(feeds):
        calls.append(feeds["x"].shape)
        return {"y": feeds["x"] * 2, "s": feeds["x"].sum(axis=1)}

    async def main():
        b = Batcher(run, slots=1, max_batch=4, max_delay_s=10.0, queue_limit=16, batchable=True)
        b.start()
        outs = await asyncio.gather(
            b.submit(_rows(1, value=1)), b.submit(_rows(2, value=2)), b.submit(_rows(1, value=3))
        )
        await b.stop()
        return outs

    outs = asyncio.run(main())
    assert calls == [(4, 4)]  # one run of 1 + 2 + 1 rows; max_batch reached, so no waiting
    assert [o["y"].shape[0] for o in outs] == [1, 2, 1]
    np.testing.assert_array_equal(outs[1]["y"], np.full((2, 4), 4, np.float32))
    np.testing.assert_array_equal(outs[2]["s"], [12.0])


def test_only_matching_shapes_share_a_batch():
    calls = []

    async def run(feeds):
        calls.append(feeds["x"].shape)
        return {"y": feeds["x"]}

    async def main():
        b = Batcher(run, slots=1, max_batch=2, max_delay_s=10.0, queue_limit=16, batchable=True)
        b.start()
        await asyncio.gather(
            b.submit(_rows(1, 4)),
            b.submit(_rows(1, 5)),
            b.submit(_rows(1, 4)),
            b.submit(_rows(1, 5)),
        )
        await b.stop()

    asyncio.run(main())
    assert sorted(calls) == [(2, 4), (2, 5)]


def test_full_queue_refuses_at_once_and_errors_reach_every_waiter():
    async def main():
        gate = asyncio.Event()

        async def run(feeds):
            await gate.wait()
            if feeds["x"][0, 0] < 0:
                raise ValueError("bad batch")
            return {"y": feeds["x"]}

        b = Batcher(run, slots=1, max_batch=1, max_delay_s=0.0, queue_limit=1, batchable=True)
        b.start()
        running = asyncio.ensure_future(b.submit(_rows(1)))
        while b.in_flight == 0:  # the first request holds the only slot
            await asyncio.sleep(0)
        queued = asyncio.ensure_future(b.submit(_rows(1, value=-1)))
        await asyncio.sleep(0)
        assert b.depth == 1
        with pytest.raises(QueueFullError, match="queue is full"):
            await b.submit(_rows(1))
        gate.set()
        assert (await running)["y"].shape == (1, 4)
        with pytest.raises(ValueError, match="bad batch"):
            await queued
        await b.stop()

    asyncio.run(main())


def test_unbatchable_models_run_one_request_at_a_time():
    calls = []

    async def run(feeds):
        calls.append(feeds["x"].shape)
        return {"y": feeds["x"]}

    async def main():
        b = Batcher(run, slots=1, max_batch=8, max_delay_s=10.0, queue_limit=16, batchable=False)
        b.start()
        await asyncio.gather(*(b.submit(_rows(2)) for _ in range(3)))
        await b.stop()

    asyncio.run(main())
    assert calls == [(2, 4)] * 3
