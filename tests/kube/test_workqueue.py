"""The work queue's contract: per-key dedup, requeue after processing, delayed adds that coalesce."""

from __future__ import annotations

import asyncio

from localmodel.kube.workqueue import WorkQueue


def test_a_key_is_queued_once_and_requeued_when_added_while_processing() -> None:
    async def scenario() -> list[str]:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("a")
        queue.add("a")
        queue.add("b")
        first = await queue.get()
        queue.add(first)  # changed again while a worker holds it
        second = await queue.get()
        queue.done(first)
        third = await queue.get()
        return [first, second, third]

    assert asyncio.run(scenario()) == ["a", "b", "a"]


def test_delayed_adds_coalesce_into_one_run() -> None:
    async def scenario() -> tuple[int, int, str, int]:
        queue: WorkQueue[str] = WorkQueue()
        for _ in range(50):  # a burst of reports about one group
            queue.add_after("g", 0.05)
        scheduled, queued_now = queue.waiting, len(queue)
        key = await asyncio.wait_for(queue.get(), 5)
        queue.done(key)
        await asyncio.sleep(0.1)
        return scheduled, queued_now, key, queue.waiting

    scheduled, queued_now, key, left = asyncio.run(scenario())
    assert (scheduled, queued_now, key, left) == (1, 0, "g", 0)


def test_delayed_add_of_a_queued_key_adds_nothing() -> None:
    async def scenario() -> tuple[int, int]:
        queue: WorkQueue[str] = WorkQueue()
        queue.add("g")
        queue.add_after("g", 0.01)
        waiting = queue.waiting
        key = await queue.get()
        queue.done(key)
        await asyncio.sleep(0.05)
        return waiting, queue.waiting

    assert asyncio.run(scenario()) == (1, 0)


def test_spaced_adds_run_at_once_when_idle_then_once_per_interval() -> None:
    async def scenario() -> tuple[float, int, float]:
        queue: WorkQueue[str] = WorkQueue()
        loop = asyncio.get_running_loop()
        start = loop.time()
        queue.add_spaced("c", 0.3)
        key = await queue.get()  # idle key: queued at once
        first = loop.time() - start
        queue.done(key)
        for _ in range(20):  # a burst right after that run
            queue.add_spaced("c", 0.3)
        scheduled = queue.waiting
        key = await asyncio.wait_for(queue.get(), 5)
        second = loop.time() - start
        queue.done(key)
        return first, scheduled, second

    first, scheduled, second = asyncio.run(scenario())
    assert first < 0.1
    assert scheduled == 1  # the burst shares one run...
    assert second >= 0.29  # ...an interval after the previous one started
