"""The pipeline thread yields to requests waiting for their first byte; Capture counts them exactly.

Waiting for something that must NOT happen needs a window: those checks wait on an event with a
timeout (the event firing early is the failure), never sleep and then look.
"""

from __future__ import annotations

import threading
import time
from typing import Any

from mitmproxy.test import tflow

from addon.capture import WAITING, Capture
from addon.model import Exchange
from addon.pipeline import Pipeline, Traffic
from proxy.routes import build_routes
from tests.fakes.util import wait_until


class Correlator:
    """Stands in for the real one: notes when each exchange reaches it."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, float]] = []
        self.got = threading.Event()

    def on_exchange(self, ex: Exchange) -> None:
        self.seen.append((ex.flow_id, time.monotonic()))
        self.got.set()

    def on_events(self, events: Any, key: Any) -> None:
        pass

    def tick(self, now_ns: int | None = None) -> None:
        pass

    def flush(self) -> None:
        pass


def exchange(flow_id: str = "f1") -> Exchange:
    return Exchange(flow_id=flow_id, route="fake", upstream="http://u", method="POST", path="/v1/chat/completions",
                    query="", request_headers={}, request_body=b"{}", request_body_truncated=False, start_ns=1)


def run_pipeline(traffic: Traffic) -> tuple[Pipeline, Correlator]:
    c = Correlator()
    p = Pipeline(c, {}, traffic)  # type: ignore[arg-type]
    p.start()
    return p, c


def test_an_exchange_settles_before_the_thread_starts_it() -> None:
    p, c = run_pipeline(Traffic(settle=0.05, max_hold=5))
    submitted = time.monotonic()
    p.submit_exchange(exchange())
    assert c.got.wait(5)
    assert c.seen[0][1] - submitted >= 0.05
    p.stop(5)


def test_capture_work_waits_while_a_request_waits_for_its_first_byte() -> None:
    traffic = Traffic(settle=0, max_hold=30)
    p, c = run_pipeline(traffic)
    traffic.started()  # a request went upstream
    p.submit_exchange(exchange())
    assert not c.got.wait(0.3)  # held while the request waits
    answered = time.monotonic()
    traffic.answered()  # its first byte went to the client
    assert c.got.wait(5)
    assert c.seen[0][1] >= answered
    assert traffic.waiting == 0 and traffic.clear.is_set()
    p.stop(5)


def test_the_hold_is_bounded() -> None:
    """A request whose upstream takes minutes to answer does not stall capture for everyone."""
    traffic = Traffic(settle=0, max_hold=0.2)
    p, c = run_pipeline(traffic)
    traffic.started()
    submitted = time.monotonic()
    p.submit_exchange(exchange())
    assert c.got.wait(5)
    # held for its whole bound (a timed wait may wake a clock tick early), then processed anyway
    assert c.seen[0][1] - submitted >= 0.2 - 0.005 and traffic.waiting == 1
    p.stop(5)


def test_items_held_together_are_released_together_not_one_hold_after_another() -> None:
    traffic = Traffic(settle=0, max_hold=0.3)
    p, c = run_pipeline(traffic)
    traffic.started()
    submitted = time.monotonic()
    for i in range(5):
        p.submit_exchange(exchange(f"f{i}"))
    wait_until(lambda: len(c.seen) == 5, timeout=5, message="all five processed")
    assert c.seen[-1][1] - submitted < 5 * 0.3  # each waited for its own deadline, not one after another
    p.stop(5)


def test_two_waiting_requests_both_have_to_be_answered() -> None:
    traffic = Traffic()
    traffic.started()
    traffic.started()
    traffic.answered()
    assert not traffic.clear.is_set() and traffic.waiting == 1
    traffic.answered()
    assert traffic.clear.is_set() and traffic.waiting == 0
    traffic.answered()  # never below zero: a stray call cannot block capture later
    traffic.started()
    assert traffic.waiting == 1 and not traffic.clear.is_set()


# --- Capture counts each routed request once, whatever way it ends ----------------------------------


class FakePipeline:
    def __init__(self) -> None:
        self.traffic = Traffic()
        self.exchanges: list[Exchange] = []

    def submit_exchange(self, ex: Exchange) -> None:
        self.exchanges.append(ex)


def routed_flow() -> Any:
    f = tflow.tflow(resp=False)
    f.metadata["neatlogs.route"] = build_routes(["fake=http://127.0.0.1:9"], False)["fake"]
    return f


def test_a_streamed_answer_counts_as_answered_at_its_first_bytes() -> None:
    pipe = FakePipeline()
    cap = Capture(pipe)  # type: ignore[arg-type]
    f = routed_flow()
    cap.requestheaders(f)
    assert pipe.traffic.waiting == 1 and f.metadata[WAITING]
    f.response = tflow.tresp()
    cap.responseheaders(f)
    assert pipe.traffic.waiting == 1  # headers are not the first byte of the answer
    tap = f.response.stream
    assert tap(b"data: 1\n\n") == b"data: 1\n\n"
    assert pipe.traffic.waiting == 0
    tap(b"data: 2\n\n")
    cap.response(f)
    assert pipe.traffic.waiting == 0 and pipe.traffic.clear.is_set()  # counted once
    assert len(pipe.exchanges) == 1


def test_an_answer_without_a_body_or_a_failed_request_still_counts_as_answered() -> None:
    pipe = FakePipeline()
    cap = Capture(pipe)  # type: ignore[arg-type]
    f = routed_flow()
    cap.requestheaders(f)
    f.response = tflow.tresp(content=b"")
    cap.responseheaders(f)
    cap.response(f)
    assert pipe.traffic.waiting == 0
    g = routed_flow()
    cap.requestheaders(g)
    g.error = tflow.terr()
    cap.error(g)
    assert pipe.traffic.waiting == 0 and pipe.traffic.clear.is_set()


def test_unrouted_requests_are_not_counted() -> None:
    pipe = FakePipeline()
    cap = Capture(pipe)  # type: ignore[arg-type]
    f = tflow.tflow(resp=False)
    cap.requestheaders(f)
    assert pipe.traffic.waiting == 0 and WAITING not in f.metadata
