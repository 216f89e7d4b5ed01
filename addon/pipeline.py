"""The capture pipeline thread: everything between the tap and the spool happens here.

The event loop only enqueues (`submit_*` are O(1) and never block), so capture work can't delay
LLM traffic. A failure while processing one item is logged and counted, never propagated.

The thread also stays out of the way of requests in flight: it starts an item only once the item has
settled (`SETTLE`) and no routed request is waiting for its first response byte (`Traffic`), or once
the item has waited `MAX_HOLD`. On a machine with few cores, capture work that starts the instant a
stream ends competes for the CPU (and the GIL) with the agent's next request.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from typing import Any

from addon.correlate import Correlator
from addon.model import Exchange

log = logging.getLogger(__name__)

_STOP = object()
TICK = 0.25
SETTLE = 0.001  # seconds an item waits before the thread starts it: a request right behind it goes first
MAX_HOLD = 0.025  # seconds an item may be held back for requests waiting for their first byte


class Traffic:
    """Routed requests waiting for their first response byte, counted on the event loop thread."""

    __slots__ = ("clear", "max_hold", "settle", "waiting")

    def __init__(self, settle: float = SETTLE, max_hold: float = MAX_HOLD) -> None:
        self.settle = settle
        self.max_hold = max_hold
        self.waiting = 0
        self.clear = threading.Event()  # set while no request is waiting
        self.clear.set()

    def started(self) -> None:
        self.waiting += 1
        if self.waiting == 1:
            self.clear.clear()

    def answered(self) -> None:
        self.waiting -= 1
        if self.waiting <= 0:
            self.waiting = 0
            self.clear.set()

    def hold(self, since: float) -> None:
        """Block until `settle` after `since` (a `time.monotonic()` instant), then until no request is
        waiting or `max_hold` after `since`, whichever comes first."""
        now = time.monotonic()
        if now < since + self.settle:
            time.sleep(since + self.settle - now)
            now = time.monotonic()
        if now < since + self.max_hold:
            self.clear.wait(since + self.max_hold - now)


class Pipeline:
    def __init__(self, correlator: Correlator, stats: dict[str, int] | None = None,
                 traffic: Traffic | None = None) -> None:
        self.correlator = correlator
        self.stats = stats if stats is not None else {}
        self.q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.traffic = traffic if traffic is not None else Traffic()
        self._thread = threading.Thread(target=self._run, name="neatlogs-pipeline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit_exchange(self, ex: Exchange) -> None:
        self.q.put(("exchange", ex, None, time.monotonic()))

    def submit_events(self, events: list[Any], api_key: str | None) -> None:
        self.q.put(("events", events, api_key, time.monotonic()))

    def _run(self) -> None:
        last_tick = time.monotonic()
        while True:
            try:
                item = self.q.get(timeout=TICK)
            except queue.Empty:
                item = None
            if item is _STOP:
                break
            if item is not None:
                kind, payload, key, since = item
                self.traffic.hold(since)
                try:
                    if kind == "exchange":
                        self.correlator.on_exchange(payload)
                    else:
                        self.correlator.on_events(payload, key)
                except Exception:
                    self.stats["capture_errors"] = self.stats.get("capture_errors", 0) + 1
                    log.exception("capture failed for one %s (traffic was not affected)", kind)
            now = time.monotonic()
            if now - last_tick >= TICK:
                last_tick = now
                try:
                    self.correlator.tick()
                except Exception:
                    log.exception("turn timer failed")
        try:
            # Shutdown: turns whose final answer was seen and only wait for their quiet period end now
            # (root span + turn marker ship), then everything else shippable is shipped.
            self.correlator.tick(now_ns=2**62)
        except Exception:
            log.exception("closing finished turns at shutdown failed")
        try:
            self.correlator.flush()
        except Exception:
            log.exception("final flush of open sessions failed")

    def stop(self, timeout: float) -> None:
        self.q.put(_STOP)
        self._thread.join(timeout)
