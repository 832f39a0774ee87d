"""429 against a real pyrovm with one execution slot and no queue: while a slow job
holds the slot, a request is refused with 429 `at_capacity` + `Retry-After`; the client
retries after it and succeeds once the slot is free, or raises RateLimited when its
retries are exhausted. The transports below are httpx's real network transports that
also note each answer's status."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import List

import httpx
import pytest
from conftest import PyrovmServer

from tvm_client import AsyncClient, Client, ExecuteResult, ExecutionState, RateLimited

pytestmark = pytest.mark.integration


class CountingTransport(httpx.HTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.statuses: List[int] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        self.statuses.append(response.status_code)
        return response


class AsyncCountingTransport(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.statuses: List[int] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        self.statuses.append(response.status_code)
        return response


def test_429_is_retried_until_the_slot_frees_or_the_retries_run_out(
    one_slot_server: PyrovmServer,
) -> None:
    url = one_slot_server.url
    admin = Client(url, "", timeout=120)
    holder = admin.submit("bash", "sleep 30", limits={"timeout_ms": 40000})
    end = time.monotonic() + 60
    while True:  # the slow job holds the only slot
        s = admin.get(holder)
        assert isinstance(s, ExecutionState), s
        if s.status == "running":
            break
        assert time.monotonic() < end
        time.sleep(0.1)

    # no retries: one 429
    t = CountingTransport()
    with Client(url, "", max_retries=0, transport=t) as c:
        with pytest.raises(RateLimited) as e:
            c.execute("bash", "echo hi")
    assert t.statuses == [429]
    assert e.value.code == "at_capacity" and e.value.status == 429
    assert e.value.retry_after is not None and e.value.retry_after > 0

    # a stream is refused the same way, before any event
    t = CountingTransport()
    with Client(url, "", max_retries=0, transport=t) as c:
        with pytest.raises(RateLimited):
            next(c.stream("bash", "echo hi"))
    assert t.statuses == [429]

    # one retry, after Retry-After, still refused: exhausted
    t = CountingTransport()
    with Client(url, "", max_retries=1, max_retry_wait=130, transport=t) as c:
        t0 = time.monotonic()
        with pytest.raises(RateLimited) as e:
            c.execute("bash", "echo hi")
        waited = time.monotonic() - t0
    assert t.statuses == [429, 429]
    print(f"exhausted: statuses {t.statuses}, Retry-After {e.value.retry_after} s, {waited:.1f} s")
    first_retry_after = e.value.retry_after
    assert first_retry_after is not None and waited >= min(first_retry_after, 1) * 0.9

    # the async client, no retries
    async def refused() -> List[int]:
        at = AsyncCountingTransport()
        async with AsyncClient(url, "", max_retries=0, transport=at) as ac:
            with pytest.raises(RateLimited):
                await ac.execute("bash", "echo hi")
        return at.statuses

    assert asyncio.run(refused()) == [429]

    # the slot frees while the client waits: its retry succeeds
    freer = threading.Timer(0.5, lambda: admin.cancel(holder))
    t = CountingTransport()
    with Client(url, "", max_retries=5, max_retry_wait=130, transport=t) as c:
        freer.start()
        r = c.execute("bash", "echo ok")
    freer.join()
    print(f"retried: statuses {t.statuses}, {r.timings_ms}")
    assert t.statuses[0] == 429 and t.statuses[-1] == 200 and set(t.statuses[:-1]) == {429}
    assert isinstance(r, ExecuteResult) and r.ok and r.stdout == "ok\n"
    admin.close()
