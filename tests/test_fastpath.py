"""The tensor server's micro-batcher, on a real event loop with a counting model."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from modelyard.bentos.pod.batcher import MicroBatcher


class Doubler:
    def __init__(self) -> None:
        self.batches: list[int] = []

    def __call__(self, array: np.ndarray) -> np.ndarray:
        self.batches.append(len(array))
        if (array < 0).any():
            raise ValueError("negative input")
        return array * 2


def test_concurrent_requests_share_forward_passes_and_get_their_own_rows() -> None:
    model = Doubler()

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(model, max_batch=8, max_wait_s=0.05)
        return await asyncio.gather(*(batcher.submit(np.full((1, 2), float(i))) for i in range(20)))

    results = asyncio.run(main())
    for i, result in enumerate(results):
        np.testing.assert_array_equal(result, np.full((1, 2), 2.0 * i))
    assert sum(model.batches) == 20 and max(model.batches) <= 8 and len(model.batches) < 20


def test_a_request_larger_than_the_room_left_starts_the_next_batch() -> None:
    model = Doubler()

    async def main() -> list[np.ndarray]:
        batcher = MicroBatcher(model, max_batch=4, max_wait_s=0.05)
        return await asyncio.gather(batcher.submit(np.ones((3, 1))), batcher.submit(np.ones((3, 1))))

    first, second = asyncio.run(main())
    assert first.shape == second.shape == (3, 1) and model.batches == [3, 3]


def test_a_failing_forward_fails_every_request_in_its_batch_only() -> None:
    model = Doubler()

    async def main() -> tuple[list[object], np.ndarray]:
        batcher = MicroBatcher(model, max_batch=8, max_wait_s=0.05)
        failed = await asyncio.gather(batcher.submit(np.ones((1, 1))), batcher.submit(-np.ones((1, 1))),
                                      return_exceptions=True)
        return failed, await batcher.submit(np.ones((1, 1)))

    failed, later = asyncio.run(main())
    assert all(isinstance(item, ValueError) for item in failed)
    np.testing.assert_array_equal(later, [[2.0]])  # the batcher keeps working


@pytest.mark.parametrize("max_wait", [0.0, 0.01])
def test_a_lone_request_runs_without_waiting_for_company(max_wait: float) -> None:
    model = Doubler()

    async def main() -> float:
        batcher = MicroBatcher(model, max_batch=64, max_wait_s=max_wait)
        loop = asyncio.get_running_loop()
        started = loop.time()
        await batcher.submit(np.ones((1, 1)))
        return loop.time() - started

    assert asyncio.run(main()) < 0.5


def _timeout_middleware(app, timeout: float):  # noqa: ANN001, ANN202
    from bentoml._internal.server.http.traffic import TimeoutMiddleware

    from modelyard.bentos.pod.timeouts import cancel_request_timers

    cancel_request_timers()
    return TimeoutMiddleware(app, timeout=timeout)


def test_bentomls_request_timeout_leaves_no_live_timer_behind_a_request() -> None:
    """BentoML's middleware left one timer per request alive for the whole timeout: millions of objects
    for every full garbage collection to walk, the tensor server's p99 at concurrency 32."""
    import httpx
    from starlette.responses import PlainTextResponse

    async def run() -> int:
        middleware = _timeout_middleware(PlainTextResponse("ok"), 60)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=middleware), base_url="http://t") as client:
            for _ in range(200):
                assert (await client.get("/")).status_code == 200
        loop = asyncio.get_running_loop()
        return sum(not handle.cancelled() for handle in loop._scheduled)  # type: ignore[attr-defined]

    assert asyncio.run(run()) == 0


def test_the_request_timeout_still_answers_504_and_an_app_that_fails_is_not_held() -> None:
    import httpx

    async def slow(scope, receive, send) -> None:  # noqa: ANN001
        await asyncio.sleep(5)

    async def broken(scope, receive, send) -> None:  # noqa: ANN001
        raise RuntimeError("boom")

    async def run() -> None:
        transport = httpx.ASGITransport(app=_timeout_middleware(slow, 0.05))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/")).status_code == 504
        transport = httpx.ASGITransport(app=_timeout_middleware(broken, 60))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            with pytest.raises(RuntimeError, match="boom"):
                await asyncio.wait_for(client.get("/"), 10)  # raised at once, not after the 60 s timeout

    asyncio.run(run())
