"""The capture pipeline thread: everything between the tap and the spool happens here.

The event loop only enqueues (`submit_*` are O(1) and never block), so capture work can't delay
LLM traffic. A failure while processing one item is logged and counted, never propagated.
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


class Pipeline:
    def __init__(self, correlator: Correlator, stats: dict[str, int] | None = None) -> None:
        self.correlator = correlator
        self.stats = stats if stats is not None else {}
        self.q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="neatlogs-pipeline", daemon=True)

    def start(self) -> None:
        self._thread.start()

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit_exchange(self, ex: Exchange) -> None:
        self.q.put(("exchange", ex, None))

    def submit_events(self, events: list[Any], api_key: str | None) -> None:
        self.q.put(("events", events, api_key))

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
                kind, payload, key = item
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
