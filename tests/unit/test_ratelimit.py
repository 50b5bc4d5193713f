"""The client-side rate limiter: which requests each rate counts, how long a request holds its
slot, and that threads sharing it never exceed a rate. No timing is asserted."""

from __future__ import annotations

import math
import threading

from function.ratelimit import BIGQUERY_RATES, Rate, RateLimiter

TABLES = "/bigquery/v2/projects/p/datasets/d/tables"


class Clock:
    """A clock that moves only when the test moves it, and counts how often it was read."""

    def __init__(self) -> None:
        self.now = 0.0
        self.reads = 0
        self.read = threading.Condition()

    def __call__(self) -> float:
        with self.read:
            self.reads += 1
            self.read.notify_all()
            return self.now


def waited_for(
    limiter: RateLimiter, clock: Clock, method: str, path: str, *, free_at: float, answered_at: float
) -> float:
    """Send one `method` request to `path` through the limiter at `clock.now`; once the limiter has looked at
    the clock (its start and its first check of the windows), move the clock to `free_at`. The
    request is answered at `answered_at`. Returns how long the limiter held it back: 0 if it went
    through at once, `free_at` minus the start if it waited until then. (The limiter's own wait is
    in real seconds, as many as the clock's: keep `free_at` close.)"""
    before, start = limiter.waited, clock.reads

    def send() -> None:
        with limiter.slot(method, path):
            clock.now = answered_at

    thread = threading.Thread(target=send, daemon=True)  # one stuck in the limiter must not keep pytest alive
    thread.start()
    with clock.read:
        assert clock.read.wait_for(lambda: clock.reads >= start + 2, timeout=10)
        if thread.is_alive():
            clock.now = max(clock.now, free_at)
    thread.join(timeout=10)
    assert not thread.is_alive(), f"{path} still waits at {free_at}"
    return limiter.waited - before


def test_tables_insert_is_a_post_to_the_tables_collection_and_every_request_is_an_api_request():
    api, insert = BIGQUERY_RATES
    assert (api.requests, api.window, insert.requests, insert.window) == (100, 1.0, 10, 1.0)
    assert insert.applies_to("POST", TABLES)
    assert not insert.applies_to("GET", TABLES)
    assert not insert.applies_to("PATCH", TABLES + "/t")
    assert not insert.applies_to("POST", "/bigquery/v2/projects/p/datasets")
    assert not insert.applies_to("POST", "/bigquery/v2/projects/p/jobs")
    assert all(api.applies_to(m, p) for m in ("GET", "POST") for p in (TABLES, TABLES + "/t"))


def test_a_request_is_dated_by_its_answer_less_the_fastest_round_trip():
    clock = Clock()
    limiter = RateLimiter([Rate("r", 2, window=1.0)], margin=0.0, clock=clock)
    with limiter.slot("GET", "/a"):  # sent at 0, answered at 0.2: the fastest round trip
        clock.now = 0.2
    clock.now = 0.3
    with limiter.slot("GET", "/b"):  # sent at 0.3, answered at 0.9 (a slow one, say a new connection)
        clock.now = 0.9

    clock.now = 0.99
    # /a is dated 0.0 (not 0.2, its answer): out of the window at 1.0, not at 0.99.
    assert math.isclose(waited_for(limiter, clock, "GET", "/c", free_at=1.01, answered_at=1.25), 0.02)
    clock.now = 1.69
    # /b is dated 0.9 - 0.2 = 0.7 (not 0.3, its sending): out at 1.7, not at 1.69.
    assert math.isclose(waited_for(limiter, clock, "GET", "/d", free_at=1.71, answered_at=1.8), 0.02)


def test_a_full_window_of_requests_in_flight_waits_for_an_answer():
    limiter = RateLimiter([Rate("r", 2, window=0.01)], margin=0.0)
    release = threading.Event()
    holding = threading.Barrier(3)
    through = threading.Event()

    def hold() -> None:
        with limiter.slot("GET", "/a"):
            holding.wait()
            release.wait()

    def third() -> None:
        with limiter.slot("GET", "/a"):
            through.set()

    holders = [threading.Thread(target=hold) for _ in range(2)]
    for thread in holders:
        thread.start()
    holding.wait()
    waiting = threading.Thread(target=third)
    waiting.start()
    assert not through.wait(0.2)  # however long the window has passed, no answer came back
    release.set()
    waiting.join()
    for thread in holders:
        thread.join()
    assert through.is_set()


def test_threads_sharing_the_limiter_never_exceed_a_rate():
    window, allowed = 0.05, 4
    limiter = RateLimiter([Rate("r", allowed, window=window)], margin=0.0)
    granted: list[float] = []
    lock = threading.Lock()

    def send(count: int) -> None:
        for _ in range(count):
            with limiter.slot("POST", TABLES), lock:
                granted.append(limiter._clock())

    threads = [threading.Thread(target=send, args=(5,)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    granted.sort()
    assert len(granted) == 20
    for index, start in enumerate(granted):
        in_window = [t for t in granted[index:] if t < start + window]
        assert len(in_window) <= allowed
    assert limiter.waited > 0


def test_a_rate_that_does_not_apply_never_delays():
    clock = Clock()
    inserts = Rate("inserts", 1, window=60.0, method="POST", path=r"/tables$")
    limiter = RateLimiter([inserts], margin=0.0, clock=clock)
    with limiter.slot("POST", TABLES):
        pass
    for _ in range(5):  # the clock does not move: any wait would never end
        with limiter.slot("GET", TABLES + "/t"):
            pass
    assert limiter.waited == 0.0

    clock.now = 59.99  # the first insert leaves the window at 60
    assert math.isclose(waited_for(limiter, clock, "POST", TABLES, free_at=60.01, answered_at=60.01), 0.02)
