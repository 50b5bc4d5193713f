"""A client-side limiter that keeps this process under BigQuery's per-user request rates; why
it is shaped as it is, and the measurements that chose it: README, Performance."""

from __future__ import annotations

import contextlib
import math
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import requests.adapters

API_REQUESTS_PER_SECOND = 100  # per user, all methods
TABLE_INSERTS_PER_SECOND = 10  # per user
MARGIN = 0.05  # seconds: chosen by measurement (see the README's Performance section)


@dataclass(frozen=True)
class Rate:
    """At most `requests` in any `window` seconds, of the requests whose HTTP method fullmatches
    `method` and whose path matches `path` (re.search); None matches everything."""

    name: str
    requests: int
    window: float = 1.0
    method: str | None = None
    path: str | None = None

    def applies_to(self, method: str, path: str) -> bool:
        if self.method is not None and not re.fullmatch(self.method, method):
            return False
        return self.path is None or re.search(self.path, path) is not None


def bigquery_rates(
    api: int = API_REQUESTS_PER_SECOND, inserts: int = TABLE_INSERTS_PER_SECOND
) -> tuple[Rate, ...]:
    """BigQuery's per-user rates (raised quotas: pass the raised ones; 0 leaves that rate to the
    server's 403s)."""
    rates = [
        Rate("api", api),
        # tables.insert is POST .../datasets/D/tables (jobs, inserts of rows and the like differ).
        Rate("tables.insert", inserts, method="POST", path=r"/datasets/[^/]+/tables$"),
    ]
    return tuple(rate for rate in rates if rate.requests > 0)


BIGQUERY_RATES = bigquery_rates()


class _Slot:
    __slots__ = ("answered", "sent")

    def __init__(self, sent: float) -> None:
        self.sent = sent
        self.answered: float | None = None  # None while in flight


class RateLimiter:
    """Blocks a request until every rate that applies to it has room, then counts it in all of
    them at once (taking one slot and then waiting for another would misdate the first).
    Shared by threads; `waited` sums the seconds they spent waiting."""

    def __init__(
        self,
        rates: Iterable[Rate] = BIGQUERY_RATES,
        *,
        margin: float = MARGIN,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.rates = tuple(rates)
        self.margin = margin
        self._clock = clock
        self._changed = threading.Condition()
        self._slots: dict[str, list[_Slot]] = {rate.name: [] for rate in self.rates}
        self._fastest = math.inf  # the shortest round trip seen
        self.waited = 0.0

    @contextlib.contextmanager
    def slot(self, method: str, path: str) -> Iterator[None]:
        """Hold a slot for one `method` request to `path` while the block sends it."""
        taken = self._acquire(method, path)
        try:
            yield
        finally:
            with self._changed:
                taken.answered = self._clock()
                self._fastest = min(self._fastest, taken.answered - taken.sent)
                self._changed.notify_all()

    def _acquire(self, method: str, path: str) -> _Slot:
        rates = [rate for rate in self.rates if rate.applies_to(method, path)]
        started = self._clock()
        with self._changed:
            while True:
                now = self._clock()
                delay = self._delay(rates, now)
                if delay <= 0:
                    break
                # A window full of requests in flight frees only when an answer comes back.
                self._changed.wait(None if delay == math.inf else delay)
            taken = _Slot(now)
            for rate in rates:
                self._slots[rate.name].append(taken)
            self.waited += now - started
        return taken

    def _delay(self, rates: list[Rate], now: float) -> float:
        return max((self._full_for(rate, now) for rate in rates), default=0.0)

    def _expires(self, slot: _Slot, rate: Rate) -> float:
        """When `slot` leaves `rate`'s window; inf while in flight. Computed afresh each time,
        as the fastest round trip seen can only shrink, which only moves this later."""
        if slot.answered is None:
            return math.inf
        return slot.answered - self._fastest + self.margin + rate.window

    def _full_for(self, rate: Rate, now: float) -> float:
        """0 when `rate` has room now, else the seconds until a slot frees (inf: an answer)."""
        slots = self._slots[rate.name]
        slots[:] = [s for s in slots if self._expires(s, rate) > now]
        if len(slots) < rate.requests:
            return 0.0
        return min(self._expires(s, rate) for s in slots) - now


class RateLimitedAdapter(requests.adapters.HTTPAdapter):
    """A requests transport adapter that takes a slot from `limiter` before every request."""

    def __init__(self, limiter: RateLimiter, **kwargs: Any) -> None:
        self.limiter = limiter
        super().__init__(**kwargs)

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        with self.limiter.slot(request.method or "GET", urlsplit(request.url or "").path):
            return super().send(request, *args, **kwargs)


_shared: dict[tuple[Rate, ...], RateLimiter] = {}
_shared_lock = threading.Lock()


def shared_limiter(rates: tuple[Rate, ...] = BIGQUERY_RATES) -> RateLimiter:
    """The process's limiter for `rates`: the quotas are per user, so all clients in the process
    share one."""
    with _shared_lock:
        if rates not in _shared:
            _shared[rates] = RateLimiter(rates)
        return _shared[rates]
