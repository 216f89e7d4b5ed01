"""proxy.tuning: the hook cache dispatches exactly like mitmproxy's own AddonManager, only cheaper."""

from __future__ import annotations

import asyncio
import logging
import types
from collections.abc import Sequence
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from mitmproxy import addonmanager, connection, exceptions, http, options
from mitmproxy.master import Master

from proxy.tuning import HookCache, handlers_of, skip_message_typechecks, use_hook_cache


def a_flow() -> http.HTTPFlow:
    client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0)
    f = http.HTTPFlow(client, connection.Server(address=("127.0.0.1", 3)))
    f.request = http.Request.make("POST", "http://127.0.0.1:3/v1/chat/completions", b"{}")
    f.response = http.Response.make(200, b"{}")
    return f


class Recorder:
    """An addon that logs every flow hook it gets (and can fail, halt or await on demand)."""

    def __init__(self, name: str, log: list[tuple[str, str]], children: list[Any] | None = None,
                 fail: bool = False, halt: bool = False, is_async: bool = False) -> None:
        self.name = name
        self.log = log
        self.fail, self.halt, self.is_async = fail, halt, is_async
        if children is not None:
            self.addons = children

    def _note(self, hook: str) -> None:
        self.log.append((self.name, hook))
        if self.fail:
            raise ValueError(f"{self.name} failed")
        if self.halt:
            raise exceptions.AddonHalt()

    def requestheaders(self, flow: http.HTTPFlow) -> Any:
        if self.is_async:
            async def later() -> None:
                await asyncio.sleep(0)
                self._note("requestheaders")
            return later()
        self._note("requestheaders")
        return None

    def response(self, flow: http.HTTPFlow) -> None:
        self._note("response")


class UpdateListener:
    def __init__(self, log: list[tuple[str, str]]) -> None:
        self.log = log

    def update(self, flows: list[Any]) -> None:
        self.log.append(("updates", ",".join(f.id for f in flows)))


def run_with(manager_cls: type[addonmanager.AddonManager] | None, script: Any) -> list[tuple[str, str]]:
    """Run `script(master, log)` on a fresh Master using the stock manager (None) or `manager_cls`."""
    log: list[tuple[str, str]] = []

    async def main() -> None:
        master = Master(options.Options(), event_loop=asyncio.get_running_loop())
        if manager_cls is not None:
            use_hook_cache(master)
        try:
            await script(master, log)
        finally:
            await master.done()  # uninstalls the log handler bound to this loop

    asyncio.run(main())
    return log


async def scenario(master: Master, log: list[tuple[str, str]]) -> None:
    from mitmproxy.proxy.layers.http import HttpRequestHeadersHook, HttpResponseHook

    f = a_flow()
    a = Recorder("a", log)
    b = Recorder("b", log, children=[Recorder("b.child", log), Recorder("b.child2", log)])
    master.addons.add(a, Recorder("failing", log, fail=True), b)
    await master.addons.handle_lifecycle(HttpRequestHeadersHook(f))
    c = Recorder("c", log, is_async=True)
    master.addons.add(c)  # the cache must see addons added later
    await master.addons.handle_lifecycle(HttpRequestHeadersHook(f))
    master.addons.remove(a)  # ... and removed ones
    await master.addons.handle_lifecycle(HttpResponseHook(f))
    master.addons.add(Recorder("halt", log, halt=True), Recorder("after-halt", log))
    await master.addons.handle_lifecycle(HttpResponseHook(f))
    master.addons.add(UpdateListener(log))  # an `update` listener gets one update per flow hook
    await master.addons.handle_lifecycle(HttpRequestHeadersHook(f))
    log.append(("flow", f.id))


def test_hook_cache_calls_the_same_handlers_in_the_same_order_as_mitmproxy(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        stock = run_with(None, scenario)
        cached = run_with(HookCache, scenario)
    flow_id = cached[-1][1]
    stock = [(n, h.replace(stock[-1][1], flow_id)) for n, h in stock]
    assert cached == stock
    assert ("after-halt", "response") not in cached  # AddonHalt stops the event
    assert ("c", "requestheaders") in cached  # an async hook is awaited
    assert ("updates", flow_id) in cached
    assert ("b.child2", "requestheaders") in cached  # children run after their parent
    assert "failing failed" in caplog.text  # a failing handler is logged, not raised, and the next runs


def test_a_failing_child_does_not_skip_its_siblings() -> None:
    """Stock mitmproxy wraps a parent and all its children in one `safecall`; the cache runs each
    handler on its own, so a sibling after a failing child still runs (strictly more robust)."""
    async def script(master: Master, log: list[tuple[str, str]]) -> None:
        from mitmproxy.proxy.layers.http import HttpResponseHook

        parent = Recorder("p", log, children=[Recorder("bad", log, fail=True), Recorder("good", log)])
        master.addons.add(parent)
        await master.addons.handle_lifecycle(HttpResponseHook(a_flow()))

    assert ("good", "response") in run_with(HookCache, script)


def test_no_update_hook_is_built_when_nobody_listens(monkeypatch: pytest.MonkeyPatch) -> None:
    from mitmproxy import hooks

    built: list[object] = []
    real = hooks.UpdateHook.__init__

    def spy(self: Any, flows: Any) -> None:
        built.append(flows)
        real(self, flows)

    monkeypatch.setattr(hooks.UpdateHook, "__init__", spy)

    async def script(master: Master, log: list[tuple[str, str]]) -> None:
        from mitmproxy.proxy.layers.http import HttpResponseHook

        master.addons.add(Recorder("a", log))
        await master.addons.handle_lifecycle(HttpResponseHook(a_flow()))

    assert run_with(HookCache, script) == [("a", "response")]
    assert built == []
    run_with(None, script)
    assert len(built) == 1  # stock mitmproxy builds (and dispatches) one per flow hook


def test_handlers_of_skips_modules_and_rejects_non_callables() -> None:
    class WithModule:
        response = types.ModuleType("response")

    class Broken:
        response = 42

    class Disabled:
        response = None
        request = 0  # falsy: not a handler, as in stock mitmproxy

    assert handlers_of([WithModule(), Disabled()], "response") == []
    assert handlers_of([Disabled()], "request") == []
    with pytest.raises(exceptions.AddonManagerError, match="not callable"):
        handlers_of([Broken()], "response")


def test_use_hook_cache_refuses_a_master_that_already_has_addons() -> None:
    async def main() -> None:
        master = Master(options.Options(), event_loop=asyncio.get_running_loop())
        master.addons.add(Recorder("a", []))
        with pytest.raises(RuntimeError, match="before addons are added"):
            use_hook_cache(master)
        await master.done()

    asyncio.run(main())


def test_options_still_reach_addons_through_the_cache() -> None:
    """`configure` goes through the new manager (the old one is disconnected from option changes)."""
    seen: list[set[str]] = []

    class Configurable:
        def load(self, loader: Any) -> None:
            loader.add_option("tuning_test_opt", int, 1, "test option")

        def configure(self, updated: set[str]) -> None:
            seen.append(set(updated))

    async def main() -> None:
        master = Master(options.Options(), event_loop=asyncio.get_running_loop())
        use_hook_cache(master)
        master.addons.add(Configurable())
        master.options.update(tuning_test_opt=5)
        await master.done()

    asyncio.run(main())
    assert {"tuning_test_opt"} in seen


def test_skip_message_typechecks_is_what_python_O_does() -> None:
    skip_message_typechecks()
    skip_message_typechecks()  # idempotent
    # Under `python -O` mitmproxy never defines the check; with it skipped, a message is built without
    # walking its fields (a wrong type is no longer caught here, exactly as under -O).
    req = http.Request.make("GET", "http://example.com/")
    req.data.__post_init__()
    http.Request("example.com", 80, b"GET", b"http", b"", b"/", b"HTTP/1.1", http.Headers(), b"", None,
                 "not-a-float", None)  # type: ignore[arg-type]


def test_eager_task_factory_takes_what_uvloop_passes_and_starts_tasks_eagerly() -> None:
    """uvloop on Python 3.13 calls the task factory with `eager_start`, which asyncio's own factory
    (3.13) refuses: the proxy died at startup. Ours takes it, with or without, and starts eagerly."""
    import uvloop

    from proxy.tuning import eager_task_factory

    steps: list[str] = []

    async def coro() -> str:
        steps.append("ran before create_task returned")
        await asyncio.sleep(0)
        return "done"

    async def main() -> None:
        loop = asyncio.get_running_loop()
        for kwargs in ({}, {"eager_start": None}, {"eager_start": True, "name": "t", "context": None}):
            steps.clear()
            task = eager_task_factory(loop, coro(), **kwargs)  # type: ignore[arg-type]
            assert steps == ["ran before create_task returned"]
            assert await task == "done"
        loop.set_task_factory(eager_task_factory)  # type: ignore[arg-type]
        steps.clear()
        task = loop.create_task(coro(), name="through the loop")
        assert steps == ["ran before create_task returned"] and await task == "done"
        assert task.get_name() == "through the loop"

    uvloop.run(main())


def test_mitmproxy_installs_the_compatible_factory_while_it_runs() -> None:
    from mitmproxy.utils import asyncio_utils

    from proxy.tuning import eager_task_factory, use_compatible_eager_tasks

    use_compatible_eager_tasks()
    use_compatible_eager_tasks()  # idempotent

    async def main() -> None:
        loop = asyncio.get_running_loop()
        before = loop.get_task_factory()
        with asyncio_utils.set_eager_task_factory():
            assert loop.get_task_factory() is eager_task_factory
        assert loop.get_task_factory() is before

    asyncio.run(main())


# --- option reads and header lookups: same answers as stock mitmproxy --------------------------------

_names = st.sampled_from([b"Content-Length", b"content-length", b"HOST", b"x-\xc3\xa9", b"Transfer-Encoding", b"a"])
_fields = st.lists(st.tuples(st.one_of(_names, st.binary(min_size=1, max_size=8)), st.binary(max_size=12)),
                   max_size=8)


def stock_get_all(h: http.Headers, name: str | bytes) -> list[str]:
    """mitmproxy's own `Headers.get_all`, spelled out (the class method may already be tuned)."""
    from mitmproxy.coretypes import multidict

    return [http._native(x) for x in multidict._MultiDict.get_all(h, http._always_bytes(name))]


@settings(max_examples=300, deadline=None)
@given(_fields, st.one_of(_names, st.binary(max_size=8)), st.booleans())
def test_fast_header_lookups_answer_as_stock_mitmproxy(fields: list[tuple[bytes, bytes]], name: bytes,
                                                       as_text: bool) -> None:
    from proxy.tuning import fast_header_lookups

    fast_header_lookups()
    fast_header_lookups()  # idempotent
    h = http.Headers(fields)
    key: str | bytes = name.decode("utf-8", "surrogateescape") if as_text else name
    assert h.get_all(key) == stock_get_all(h, key)
    assert (key in h) == bool(stock_get_all(h, key))
    assert h.get(key) == (", ".join(stock_get_all(h, key)) if stock_get_all(h, key) else None)
    with pytest.raises(TypeError):
        _ = 3 in h  # as stock: only str and bytes are header names


def test_fast_option_reads_still_copy_mutable_values() -> None:
    from proxy.tuning import fast_option_reads

    fast_option_reads()
    fast_option_reads()  # idempotent
    opts = options.Options()
    opts.add_option("tuning_list", Sequence[str], ["a"], "a mutable option")
    opts.add_option("tuning_int", int, 7, "an immutable option")
    first = opts.tuning_list
    first.append("changed by a caller")
    assert opts.tuning_list == ["a"]  # callers still get a copy they may change
    assert opts.tuning_int == 7
    opts.update(tuning_list=["b", "c"], tuning_int=8)
    assert opts.tuning_list == ["b", "c"] and opts.tuning_list is not opts.tuning_list
    assert opts.tuning_int == 8
    opts.reset()
    assert opts.tuning_list == ["a"] and opts.tuning_int == 7


def test_fast_context_fork_builds_what_mitmproxy_builds() -> None:
    from mitmproxy.proxy.context import Context

    from proxy.tuning import fast_context_fork

    client = connection.Client(peername=("127.0.0.1", 1), sockname=("127.0.0.1", 2), timestamp_start=0)
    parent = Context(client, options.Options())
    parent.server = connection.Server(address=("127.0.0.1", 3))
    parent.layers = ["outer", "inner"]  # type: ignore[list-item]
    stock = Context(parent.client, parent.options)  # what mitmproxy's fork does, spelled out
    stock.server = parent.server
    stock.layers = parent.layers.copy()
    fast_context_fork()
    fast_context_fork()  # idempotent
    forked = parent.fork()
    assert type(forked) is Context and vars(forked).keys() == vars(stock).keys()  # no attribute missed
    assert forked.client is client and forked.options is parent.options and forked.server is parent.server
    assert forked.layers == ["outer", "inner"] and forked.layers is not parent.layers
    forked.layers.append("child")
    assert parent.layers == ["outer", "inner"]
