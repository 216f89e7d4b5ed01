"""mitmproxy tuned for one fixed set of addons: the same behaviour, less work per request.

Measured on the request path of a routed call (bench/README.md, "Where the time goes"):

- Stock `AddonManager` walks every addon and its children with `getattr` for each hook of each
  flow, then fires an `update` hook after every flow hook, walking them all again: eight walks per
  request, and no addon here listens to `update`. `HookCache` looks each hook's handlers up once.
- `MessageData.__post_init__` type-checks every field of every `Request`/`Response` (about 7 % of
  the event loop's time). mitmproxy itself drops that check under `python -O`
  (it is defined inside `if __debug__:`); `skip_message_typechecks` drops it the same way without
  also stripping every `assert`.

And one compatibility fix: `use_compatible_eager_tasks` (uvloop on Python 3.13).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Callable, Iterator
from typing import Any

from mitmproxy import addonmanager, exceptions, flow, hooks, http
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
        super().__init__(master)

    def handlers(self, name: str) -> list[Handler]:
        found = self._handlers.get(name)
        if found is None:
            found = self._handlers[name] = handlers_of(self.chain, name)
        return found

    def register(self, addon: Any) -> Any:
        self._handlers.clear()
        try:
            return super().register(addon)
        finally:
            self._handlers.clear()

    def add(self, *addons: Any) -> None:
        try:
            super().add(*addons)
        finally:
            self._handlers.clear()

    def remove(self, addon: Any) -> None:
        try:
            super().remove(addon)
        finally:
            self._handlers.clear()

    def clear(self) -> None:
        try:
            super().clear()
        finally:
            self._handlers.clear()

    async def trigger_event(self, event: hooks.Hook) -> None:
        handlers = self.handlers(event.name)
        if not handlers:
            return
        args = event.args()
        for _addon, func in handlers:
            try:
                with addonmanager.safecall():
                    res = func(*args)
                    if res is not None and inspect.isawaitable(res):
                        await res
            except exceptions.AddonHalt:
                return

    async def handle_lifecycle(self, event: hooks.Hook) -> None:
        await self.trigger_event(event)
        if self.handlers(hooks.UpdateHook.name):
            message = event.args()[0]
            if isinstance(message, flow.Flow):
                await self.trigger_event(hooks.UpdateHook([message]))


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
