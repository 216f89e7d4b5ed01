"""mitmproxy tuned for one fixed set of addons: the same behaviour, less work per request.

Measured on the request path of a routed call (bench/README.md, "Where the time goes"):

- Stock `AddonManager` walks every addon and its children with `getattr` for each hook of each
  flow, then fires an `update` hook after every flow hook, walking them all again: eight walks per
  request, and no addon here listens to `update`. `HookCache` looks each hook's handlers up once.
- `MessageData.__post_init__` type-checks every field of every `Request`/`Response` (about 7 % of
  the event loop's time). mitmproxy itself drops that check under `python -O`
  (it is defined inside `if __debug__:`); `skip_message_typechecks` drops it the same way without
  also stripping every `assert`.

- Stock mitmproxy answers every blocking hook a layer asks for with a task that runs the handlers,
  then feeds `HookCompleted` back through `server_event`, which first has to wait for the
  connection's event lock the current event still holds: one more trip through the event loop per
  hook, three on the way to an SSE stream's first byte (`requestheaders`, `request`,
  `responseheaders`). `InlineHooks` runs hooks whose handlers are all plain functions where the layer
  asks for them and feeds `HookCompleted` right after the current event's commands.
- Every read of a mitmproxy option deep-copies its value twice; the HTTP layer reads one for each
  streamed chunk and about ten per request. `fast_option_reads` returns immutable values as they are
  (which is what `deepcopy` returns for them anyway).
- `Headers.get_all` (behind every header lookup, about forty per request) calls a method per field per
  lookup; `fast_header_lookups` does the same comparison inline, and `in` no longer raises and catches
  a `KeyError` for every absent header.
- `Context.fork` (once per request, for its HTTP stream) built a whole `Server` connection object (a
  uuid4, two dozen validated attribute writes: ~9 µs warm) only to replace it with the parent's on the
  next line; `fast_context_fork` builds the same context without it.

And one compatibility fix: `use_compatible_eager_tasks` (uvloop on Python 3.13).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import inspect
from collections import deque
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks, http, optmanager
from mitmproxy.proxy import commands, events, mode_servers
from mitmproxy.proxy import server as proxy_server
from mitmproxy.proxy.context import Context
from mitmproxy.utils import asyncio_utils

Handler = tuple[Any, Callable[..., Any]]


def handlers_of(chain: list[Any], name: str) -> list[Handler]:
    """Every (addon, callable) answering hook `name`, in chain order, children after their parent,
    as `AddonManager._iter_hooks` finds them (a module imported under a hook's name is not one)."""
    found: list[Handler] = []
    for addon in addonmanager.traverse(chain):
        func = getattr(addon, name, None)
        if not func or inspect.ismodule(func):  # as stock mitmproxy: falsy attributes are not handlers
            continue
        if not callable(func):
            raise exceptions.AddonManagerError(f"Addon handler {name} ({addon}) not callable")
        found.append((addon, func))
    return found


class HookCache(addonmanager.AddonManager):
    """An `AddonManager` that resolves each hook's handlers once per addon set.

    The cache is dropped whenever the chain changes (`add`, `register`, `remove`, `clear`). Each handler
    runs under its own `safecall`, so one failing handler is logged and the others still run, and
    `AddonHalt` stops the event as in stock mitmproxy.
    """

    def __init__(self, master: Any) -> None:
        self._handlers: dict[str, list[Handler]] = {}
        self._inlinable: dict[str, bool] = {}
        super().__init__(master)

    def _forget(self) -> None:
        self._handlers.clear()
        self._inlinable.clear()

    def handlers(self, name: str) -> list[Handler]:
        found = self._handlers.get(name)
        if found is None:
            found = self._handlers[name] = handlers_of(self.chain, name)
        return found

    def register(self, addon: Any) -> Any:
        self._forget()
        try:
            return super().register(addon)
        finally:
            self._forget()

    def add(self, *addons: Any) -> None:
        try:
            super().add(*addons)
        finally:
            self._forget()

    def remove(self, addon: Any) -> None:
        try:
            super().remove(addon)
        finally:
            self._forget()

    def clear(self) -> None:
        try:
            super().clear()
        finally:
            self._forget()

    def inlinable(self, name: str) -> bool:
        """Whether hook `name` can run without the event loop: every handler is a plain function
        and nobody listens to `update` (which would follow it)."""
        ok = self._inlinable.get(name)
        if ok is None:
            ok = self._inlinable[name] = not self.handlers(hooks.UpdateHook.name) and not any(
                inspect.iscoroutinefunction(func) for _addon, func in self.handlers(name))
        return ok

    def run_now(self, event: hooks.Hook) -> Coroutine[Any, Any, None] | None:
        """Run `event`'s handlers now, as `trigger_event` would. None once all have run; if one
        returns an awaitable (a plain function may), a coroutine that awaits it and runs the rest."""
        args = event.args()
        handlers = self.handlers(event.name)
        for i, (_addon, func) in enumerate(handlers):
            try:
                with addonmanager.safecall():
                    res = func(*args)
            except exceptions.AddonHalt:
                return None
            if res is not None and inspect.isawaitable(res):
                return self._finish(args, handlers, i, res)
        return None

    async def _finish(self, args: Any, handlers: list[Handler], i: int, pending: Any) -> None:
        try:
            with addonmanager.safecall():
                await pending
        except exceptions.AddonHalt:
            return
        await self._trigger(args, handlers, i + 1)

    async def _trigger(self, args: Any, handlers: list[Handler], start: int) -> None:
        for _addon, func in handlers[start:]:
            try:
                with addonmanager.safecall():
                    res = func(*args)
                    if res is not None and inspect.isawaitable(res):
                        await res
            except exceptions.AddonHalt:
                return

    async def trigger_event(self, event: hooks.Hook) -> None:
        handlers = self.handlers(event.name)
        if handlers:
            await self._trigger(event.args(), handlers, 0)

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        if self.handlers(hooks.UpdateHook.name):
            message = event.args()[0]
            if isinstance(message, flow.Flow):
                await self.trigger_event(hooks.UpdateHook([message]))


class InlineHooks:
    """The top of one connection's layer stack: blocking hooks run where the layer asks for them.

    Same handlers, same order, same `safecall`; the layer gets `HookCompleted` once the commands of
    the event being handled are done, as it would from stock mitmproxy's hook task, minus that task's
    wait for the connection's event lock. Whatever needs the event loop (a coroutine handler, an
    awaitable returned, an intercepted flow) finishes in a task the stock way.
    """

    def __init__(self, layer: Any, handler: Any, addons: HookCache) -> None:
        self.layer = layer
        self.handler = handler
        self.addons = addons

    def __getattr__(self, name: str) -> Any:  # the wrapped layer's context, debug, ...
        return getattr(self.layer, name)

    def handle_event(self, event: events.Event) -> Iterator[commands.Command]:
        todo = deque((event,))
        while todo:
            for command in self.layer.handle_event(todo.popleft()):
                if (isinstance(command, commands.StartHook) and command.blocking
                        and self.addons.inlinable(command.name)):
                    rest = self.addons.run_now(command)
                    (data,) = command.args()
                    if rest is None and not (isinstance(data, flow.Flow) and data.intercepted):
                        todo.append(events.HookCompleted(command))
                    else:
                        asyncio_utils.create_task(self._complete(command, rest), name=f"handle_hook({command.name})",
                                                  keep_ref=True, client=self.handler.client.peername)
                    continue
                yield command

    async def _complete(self, hook: commands.StartHook, rest: Coroutine[Any, Any, None] | None) -> None:
        """The stock hook task's tail: finish the handlers, wait for an intercepted flow, report."""
        with self.handler.timeout_watchdog.disarm():
            if rest is not None:
                await rest
            (data,) = hook.args()
            if isinstance(data, flow.Flow):
                await data.wait_for_resume()
        await self.handler.server_event(events.HookCompleted(hook))


def skip_message_typechecks() -> None:
    """What `python -O` does to mitmproxy's HTTP messages: no runtime type check per field."""
    if "__post_init__" in vars(http.MessageData):
        http.MessageData.__post_init__ = _no_check  # type: ignore[method-assign]


def _no_check(self: http.MessageData) -> None:
    return None


def use_hook_cache(master: Any) -> HookCache:
    """Swap a fresh `Master`'s addon manager (before any addon is added) for a `HookCache`."""
    if master.addons.chain:
        raise RuntimeError("use_hook_cache must run before addons are added")
    master.options.changed.disconnect(master.addons._configure_all)
    master.addons = HookCache(master)
    return master.addons


_IMMUTABLE = frozenset({type(None), bool, int, float, complex, str, bytes})


def _option_current(self: optmanager._Option) -> Any:
    value = self._default if self.value is optmanager.unset else self.value
    return value if type(value) in _IMMUTABLE else copy.deepcopy(value)


def fast_option_reads() -> None:
    """`_Option.current` without deep-copying immutable values (mutable ones are still copied)."""
    if optmanager._Option.current is not _option_current:
        optmanager._Option.current = _option_current  # type: ignore[method-assign]


def _headers_get_all(self: http.Headers, name: str | bytes) -> list[str]:
    key = http._always_bytes(name).lower()
    return [v.decode("utf-8", "surrogateescape") for k, v in self.fields if k.lower() == key]


def _headers_contains(self: http.Headers, name: object) -> bool:
    key = http._always_bytes(name).lower()  # type: ignore[arg-type]
    return any(k.lower() == key for k, _ in self.fields)


def fast_header_lookups() -> None:
    """`Headers.get_all` and `in` with the same results, minus a method call per field."""
    if http.Headers.get_all is not _headers_get_all:
        http.Headers.get_all = _headers_get_all  # type: ignore[method-assign]
        http.Headers.__contains__ = _headers_contains  # type: ignore[method-assign,assignment]


def _context_fork(self: Context) -> Context:
    ret = Context.__new__(Context)
    ret.client = self.client
    ret.options = self.options
    ret.server = self.server
    ret.layers = self.layers.copy()
    return ret


def fast_context_fork() -> None:
    """`Context.fork` with the same result (client, options and server shared, layers copied)."""
    if Context.fork is not _context_fork:
        Context.fork = _context_fork  # type: ignore[method-assign]


def use_inline_hooks() -> None:
    """Give every connection of a master whose addon manager is a `HookCache` an `InlineHooks` top
    layer. Installed when the client handler starts, after the mode server has set its top layer."""
    handler_cls = mode_servers.ProxyConnectionHandler
    if getattr(handler_cls, "_neatlogs_inline_hooks", False):
        return
    original = handler_cls.handle_client

    async def handle_client(self: proxy_server.ConnectionHandler) -> None:
        addons = getattr(getattr(self, "master", None), "addons", None)
        if isinstance(addons, HookCache) and not isinstance(self.layer, InlineHooks):
            self.layer = InlineHooks(self.layer, self, addons)  # type: ignore[assignment]
        await original(self)

    handler_cls.handle_client = handle_client  # type: ignore[method-assign]
    handler_cls._neatlogs_inline_hooks = True  # type: ignore[attr-defined]


def eager_task_factory(loop: asyncio.AbstractEventLoop, coro: Any, *, name: str | None = None,
                       context: Any = None, eager_start: bool | None = None) -> asyncio.Task[Any]:
    """mitmproxy's eager task factory, callable by every loop we run on.

    mitmproxy installs `asyncio.eager_task_factory` while it runs. On Python 3.13, uvloop passes the
    factory an `eager_start` argument that CPython's own factory does not take (it does from 3.14), so
    the proxy died at startup ("unexpected keyword argument 'eager_start'"). This one takes it, and
    starts tasks eagerly as mitmproxy expects.
    """
    return asyncio.Task(coro, loop=loop, name=name, context=context, eager_start=True)


def use_compatible_eager_tasks() -> None:
    """Make mitmproxy install `eager_task_factory` above instead of asyncio's."""
    if getattr(asyncio_utils, "_neatlogs_eager_tasks", False):
        return

    @contextlib.contextmanager
    def set_eager_task_factory() -> Iterator[None]:
        loop = asyncio.get_running_loop()
        existing = loop.get_task_factory()
        loop.set_task_factory(eager_task_factory)  # type: ignore[arg-type]
        try:
            yield
        finally:
            loop.set_task_factory(existing)

    asyncio_utils.set_eager_task_factory = set_eager_task_factory
    asyncio_utils._neatlogs_eager_tasks = True  # type: ignore[attr-defined]


def tune_mitmproxy() -> None:
    """Every process-wide patch above, as neatlogs-proxy runs mitmproxy (the bench's bare-mitmproxy
    floor uses the same set, so the two differ only by our addons). Idempotent; `use_hook_cache` is
    per master and stays separate."""
    skip_message_typechecks()
    use_compatible_eager_tasks()
    use_inline_hooks()
    fast_option_reads()
    fast_header_lookups()
    fast_context_fork()
