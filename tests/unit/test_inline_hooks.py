"""proxy.tuning.InlineHooks: blocking hooks run where the layer asks, with stock mitmproxy's results.

The layer here is a scripted stand-in; tests/unit/test_inline_hooks_live.py runs real connections.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from typing import Any

from mitmproxy import exceptions, options
from mitmproxy.master import Master
from mitmproxy.proxy import commands, events
from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpResponseHook

from proxy.tuning import HookCache, InlineHooks, use_hook_cache
from tests.unit.test_tuning import Recorder, UpdateListener, a_flow, run_with


class ScriptedLayer:
    """Yields `Log` markers around one blocking hook per event, and notes what it is fed."""

    def __init__(self, hooks: list[commands.StartHook], log: list[tuple[str, str]]) -> None:
        self.hooks = hooks
        self.log = log
        self.context = "the wrapped layer's context"

    def handle_event(self, event: events.Event) -> Iterator[commands.Command]:
        if isinstance(event, events.HookCompleted):
            self.log.append(("layer", f"completed {event.command.name}"))
            yield commands.Log(f"after {event.command.name}")
            return
        self.log.append(("layer", type(event).__name__))
        yield commands.Log("before")
        yield from self.hooks
        yield commands.Log("rest of the event")


class Handler:
    """What InlineHooks needs of mitmproxy's ConnectionHandler."""

    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log
        self.client = type("C", (), {"peername": ("127.0.0.1", 1)})()
        self.disarmed = 0

        handler = self

        class Watchdog:
            @contextlib.contextmanager
            def disarm(self) -> Iterator[None]:
                handler.disarmed += 1
                yield

        self.timeout_watchdog = Watchdog()
        self.completed: asyncio.Event = asyncio.Event()

    async def server_event(self, event: events.Event) -> None:
        self.log.append(("server_event", type(event).__name__))
        self.completed.set()


def drive(inline: InlineHooks, log: list[tuple[str, str]]) -> None:
    for command in inline.handle_event(events.Start()):
        log.append(("command", command.message if isinstance(command, commands.Log) else type(command).__name__))


async def make(addons: list[Any], hooks: list[commands.StartHook]) -> tuple[InlineHooks, list[tuple[str, str]],
                                                                            Handler, Master]:
    log: list[tuple[str, str]] = []
    master = Master(options.Options(), event_loop=asyncio.get_running_loop())
    cache = use_hook_cache(master)
    for a in addons:
        a.log = log
        for child in getattr(a, "addons", []):
            child.log = log
    master.addons.add(*addons)
    handler = Handler(log)
    return InlineHooks(ScriptedLayer(hooks, log), handler, cache), log, handler, master


def test_handlers_run_at_the_hook_and_the_layer_hears_back_after_the_rest_of_the_event() -> None:
    async def main() -> list[tuple[str, str]]:
        f = a_flow()
        inline, log, handler, master = await make(
            [Recorder("a", []), Recorder("b", [], children=[Recorder("b.child", [])])], [HttpResponseHook(f)])
        drive(inline, log)
        await master.done()
        assert handler.disarmed == 0 and not handler.completed.is_set()  # no task, no trip through server_event
        return log

    assert asyncio.run(main()) == [
        ("layer", "Start"), ("command", "before"),
        ("a", "response"), ("b", "response"), ("b.child", "response"),  # where the layer asked
        ("command", "rest of the event"),  # the event's remaining commands first, as with stock mitmproxy
        ("layer", "completed response"), ("command", "after response"),
    ]


def test_a_hook_with_a_coroutine_handler_goes_the_stock_way() -> None:
    class AsyncAddon:
        log: list[tuple[str, str]]

        async def response(self, flow: Any) -> None:
            self.log.append(("async", "response"))

    async def main() -> None:
        f = a_flow()
        hook = HttpResponseHook(f)
        inline, log, _handler, master = await make([Recorder("a", []), AsyncAddon()], [hook])
        assert not inline.addons.inlinable("response")
        drive(inline, log)
        await master.done()
        # The StartHook goes up to mitmproxy's server_event unchanged (its hook task runs it).
        assert log == [("layer", "Start"), ("command", "before"), ("command", "HttpResponseHook"),
                       ("command", "rest of the event")]

    asyncio.run(main())


def test_an_update_listener_keeps_hooks_on_the_stock_path() -> None:
    async def main() -> None:
        inline, _log, _handler, master = await make([Recorder("a", [])], [])
        assert inline.addons.inlinable("response")
        master.addons.add(UpdateListener([]))  # the cache's answers are dropped when the chain changes
        assert not inline.addons.inlinable("response")
        await master.done()

    asyncio.run(main())


def test_an_awaitable_returned_by_a_plain_handler_is_finished_in_a_task() -> None:
    """Recorder(is_async=True) is a plain function returning a coroutine: the handlers before it ran
    inline, it and the ones after it finish in a task, then the layer hears back via server_event."""
    async def main() -> list[tuple[str, str]]:
        f = a_flow()
        inline, log, handler, master = await make(
            [Recorder("a", []), Recorder("slow", [], is_async=True), Recorder("c", [])], [HttpRequestHeadersHook(f)])
        assert inline.addons.inlinable("requestheaders")  # decided per handler kind, not per result
        drive(inline, log)
        log.append(("test", "handle_event returned"))
        await asyncio.wait_for(handler.completed.wait(), 5)
        assert handler.disarmed == 1
        await master.done()
        return log

    assert asyncio.run(main()) == [
        ("layer", "Start"), ("command", "before"), ("a", "requestheaders"),
        ("command", "rest of the event"), ("test", "handle_event returned"),
        ("slow", "requestheaders"), ("c", "requestheaders"), ("server_event", "HookCompleted"),
    ]


def test_an_intercepted_flow_is_reported_only_once_resumed() -> None:
    class Interceptor:
        log: list[tuple[str, str]]

        def response(self, flow: Any) -> None:
            self.log.append(("interceptor", "response"))
            flow.intercept()

    async def main() -> None:
        f = a_flow()
        inline, log, handler, master = await make([Interceptor()], [HttpResponseHook(f)])
        drive(inline, log)
        assert ("layer", "completed response") not in log
        await asyncio.sleep(0)  # the task is parked on wait_for_resume, however long it runs
        assert not handler.completed.is_set()
        f.resume()
        await asyncio.wait_for(handler.completed.wait(), 5)
        assert log[-1] == ("server_event", "HookCompleted")
        await master.done()

    asyncio.run(main())


def test_a_halting_or_failing_handler_behaves_as_in_stock_mitmproxy() -> None:
    async def run(fire: str, master: Master, log: list[tuple[str, str]]) -> None:
        f = a_flow()
        master.addons.add(Recorder("a", log), Recorder("failing", log, fail=True), Recorder("halt", log, halt=True),
                          Recorder("after-halt", log))
        hook = HttpResponseHook(f)
        if fire == "stock":
            await master.addons.trigger_event(hook)
        else:
            assert isinstance(master.addons, HookCache)
            assert master.addons.run_now(hook) is None

    async def inline(master: Master, log: list[tuple[str, str]]) -> None:
        await run("inline", master, log)

    async def stock(master: Master, log: list[tuple[str, str]]) -> None:
        await run("stock", master, log)

    assert run_with(HookCache, inline) == run_with(None, stock) == [("a", "response"), ("failing", "response"),
                                                                   ("halt", "response")]


def test_inline_hooks_forwards_everything_else_to_the_wrapped_layer() -> None:
    async def main() -> None:
        inline, _log, _handler, master = await make([], [])
        assert inline.context == "the wrapped layer's context"
        await master.done()

    asyncio.run(main())


def test_a_non_blocking_hook_is_left_to_mitmproxy() -> None:
    async def main() -> None:
        hook = HttpResponseHook(a_flow())
        hook.blocking = False
        inline, log, _handler, master = await make([Recorder("a", [])], [hook])
        drive(inline, log)
        assert ("command", "HttpResponseHook") in log and ("a", "response") not in log
        await master.done()

    asyncio.run(main())


def test_an_exception_escaping_a_handler_is_not_swallowed_silently() -> None:
    """`safecall` logs handler errors; an `OptionsError` is re-raised by mitmproxy itself, and so here."""
    class Bad:
        log: list[tuple[str, str]]

        def response(self, flow: Any) -> None:
            raise exceptions.OptionsError("bad option")

    async def main() -> None:
        inline, log, _handler, master = await make([Bad()], [HttpResponseHook(a_flow())])
        try:
            drive(inline, log)
        except exceptions.OptionsError:
            pass
        else:
            raise AssertionError("OptionsError was swallowed")
        finally:
            await master.done()

    asyncio.run(main())
