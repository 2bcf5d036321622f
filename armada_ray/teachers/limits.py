"""Job-wide request limits for a black-box teacher API: requests/s, tokens/min, requests in flight.

An API's limits belong to the account, not to one client process, so every actor of an embed job must
draw on the *same* budget. :class:`Limiter` is the protocol the http teacher talks to:

- ``await acquire(tokens)``: wait for an in-flight slot, the request-rate slot and the token budget;
- ``await release()``: give the in-flight slot back (after every attempt, success or not);
- ``await report_retry_after(seconds)``: the server said "slow down" (429 + Retry-After): every client
  sharing this limiter pauses, not just the one that was told.

:class:`LocalLimiter` implements it in-process (thread-safe, usable from several event loops).
``armada_ray.embed`` wraps the same class in one async Ray actor so that all actors of a job share it;
this package stays Ray-free.

Rate pacing is GCRA (a "virtual scheduling" token bucket): request *k* may start at
``max(now, tat - (burst-1)/rate)``, so requests are spread evenly at ``rate`` with an optional burst.
The token budget is a bucket of ``tokens_per_min`` refilled continuously, allowed to go into debt by
one request (the wait pays the debt back), which is how per-minute token limits behave.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections import deque
from typing import Any, Callable, Protocol, runtime_checkable


@runtime_checkable
class Limiter(Protocol):
    async def acquire(self, tokens: int = 0) -> None: ...

    async def release(self) -> None: ...

    async def report_retry_after(self, seconds: float) -> None: ...


class RateState:
    """Request-rate and token-budget bookkeeping (not thread-safe; callers hold a lock)."""

    def __init__(
        self,
        requests_per_s: float | None,
        tokens_per_min: float | None = None,
        burst: float = 1.0,
        now: float | None = None,
    ):
        now = time.monotonic() if now is None else now
        self.interval = 1.0 / requests_per_s if requests_per_s else 0.0
        self.tolerance = max(0.0, burst - 1.0) * self.interval
        self.tat = now  # theoretical arrival time of the next request
        self.token_rate = tokens_per_min / 60.0 if tokens_per_min else None
        self.token_cap = float(tokens_per_min) if tokens_per_min else 0.0
        self.token_level = self.token_cap
        self.token_t = now
        self.paused_until = now

    def reserve(self, tokens: int, now: float) -> float:
        """Commit one request of ``tokens`` tokens; return how long to wait before sending it."""
        wait = 0.0
        if self.interval:
            tat = max(self.tat, now, self.paused_until)
            wait = max(0.0, tat - self.tolerance - now)
            self.tat = tat + self.interval
        if self.token_rate:
            self.token_level = min(self.token_cap, self.token_level + (now - self.token_t) * self.token_rate)
            self.token_t = now
            self.token_level -= tokens
            if self.token_level < 0:
                wait = max(wait, -self.token_level / self.token_rate)
        return max(wait, self.paused_until - now)

    def pause(self, seconds: float, now: float) -> None:
        until = now + max(0.0, seconds)
        if until > self.paused_until:
            self.paused_until = until
            self.tat = max(self.tat, until)

    def pause_remaining(self, now: float) -> float:
        return max(0.0, self.paused_until - now)


class LocalLimiter:
    """In-process :class:`Limiter`: one budget shared by every coroutine and thread that holds it.

    In-flight slots are handed from a releasing client directly to the oldest waiter (on its own event
    loop), so waiting costs no polling.
    """

    def __init__(
        self,
        requests_per_s: float | None = None,
        tokens_per_min: float | None = None,
        max_in_flight: int | None = None,
        burst: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.requests_per_s = requests_per_s
        self.tokens_per_min = tokens_per_min
        self.max_in_flight = max_in_flight
        self.clock = clock
        self._lock = threading.Lock()
        self._state = RateState(requests_per_s, tokens_per_min, burst, now=clock())
        self._in_flight = 0
        self._waiters: deque[tuple[asyncio.AbstractEventLoop, asyncio.Future[None]]] = deque()
        self.counters = {"acquired": 0, "waited_s": 0.0, "pauses": 0, "max_in_flight_seen": 0}

    # -------------------------------------------------------------------------------- slots
    async def _take_slot(self) -> None:
        if self.max_in_flight is None:
            with self._lock:
                self._in_flight += 1
            return
        loop = asyncio.get_running_loop()
        with self._lock:
            if self._in_flight < self.max_in_flight and not self._waiters:
                self._in_flight += 1
                return
            fut: asyncio.Future[None] = loop.create_future()
            self._waiters.append((loop, fut))
        try:
            await fut  # the releaser transfers its slot to us
        except asyncio.CancelledError:
            with self._lock:
                try:
                    self._waiters.remove((loop, fut))
                    removed = True
                except ValueError:
                    removed = False
            # Popped by a releaser: if the slot already reached us, pass it on; if our future was
            # cancelled first, _hand_over sees that and passes it on itself.
            if not removed and fut.done() and not fut.cancelled():
                self._release_sync()
            raise

    def _release_sync(self) -> None:
        with self._lock:
            while self._waiters:
                loop, fut = self._waiters.popleft()
                if fut.done():
                    continue
                try:
                    loop.call_soon_threadsafe(self._hand_over, fut)
                    return
                except RuntimeError:  # that loop is closed: try the next waiter
                    continue
            self._in_flight = max(0, self._in_flight - 1)

    def _hand_over(self, fut: asyncio.Future[None]) -> None:
        if fut.done():  # cancelled meanwhile: pass the slot on
            self._release_sync()
        else:
            fut.set_result(None)

    # ----------------------------------------------------------------------------- protocol
    async def acquire(self, tokens: int = 0) -> None:
        await self._take_slot()
        try:
            t0 = self.clock()
            with self._lock:
                wait = self._state.reserve(int(tokens), t0)
                self.counters["acquired"] += 1
                self.counters["max_in_flight_seen"] = max(self.counters["max_in_flight_seen"], self._in_flight)
            while wait > 0:
                await asyncio.sleep(wait)
                with self._lock:  # a 429 elsewhere may have paused everyone meanwhile
                    wait = self._state.pause_remaining(self.clock())
            with self._lock:
                self.counters["waited_s"] += self.clock() - t0
        except BaseException:
            self._release_sync()
            raise

    async def release(self) -> None:
        self._release_sync()

    async def report_retry_after(self, seconds: float) -> None:
        with self._lock:
            self._state.pause(float(seconds), self.clock())
            self.counters["pauses"] += 1

    # ---------------------------------------------------------------------------- introspection
    @property
    def in_flight(self) -> int:
        return self._in_flight

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {**self.counters, "in_flight": self._in_flight, "requests_per_s": self.requests_per_s,
                    "tokens_per_min": self.tokens_per_min, "max_in_flight": self.max_in_flight}


def limiter_for(cfg_teacher: Any) -> LocalLimiter:
    """A local limiter with an http teacher config's job-wide limits."""
    return LocalLimiter(cfg_teacher.requests_per_s, cfg_teacher.tokens_per_min, cfg_teacher.max_in_flight)
