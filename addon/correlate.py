"""Joins wire captures and plugin events into per-session traces, and decides when spans ship.

Single-threaded by design: only the pipeline thread calls it, so there are no locks. Every join is
order-independent: a plugin event may arrive before or after the LLM call it belongs to, and spans
that gain information after they shipped are re-shipped with the same span id (an upsert).

Memory stays bounded: a call keeps its built attributes only until its turn ends, and sessions that
have been quiet for `session_ttl` are forgotten (their trace ids are derived, so a later turn still
lands in the same trace).
"""

from __future__ import annotations

import hashlib
import heapq
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from addon import events as ev
from addon.headers import unpack
from addon.model import Exchange, LLMRequest, LLMResponse, Usage
from addon.parsers import parse_exchange
from addon.spans import (
    STATUS_ERROR,
    STATUS_OK,
    AttrValue,
    Content,
    Span,
    base_attrs,
    llm_attrs,
    marker_attrs,
    marker_span_id_for,
    new_span_id,
    put_io,
    root_span_id_for,
    to_json,
    token_attrs,
    tool_attrs,
    tool_span_id_for,
    trace_id_for,
)

log = logging.getLogger(__name__)

Emit = Callable[[list[Span], str | None], None]
CostFn = Callable[[str | None, str | None, Usage], float | None]
History = Callable[[str], "dict[str, Any] | None"]
Observe = Callable[[str, str, int | None, float, float | None, Usage | None, float | None, str | None], None]

TITLE_AGENT = "title"
# Calls the plugin has not priced yet when their turn ends: opencode reports a message's cost right after
# the call, so a short window and a small count suffice; without the plugin nothing is kept.
UNMATCHED_KEEP_NS = 60 * 10**9
SWEEP_EVERY_NS = 60 * 10**9
UNMATCHED_KEEP_MAX = 16


@dataclass
class LLMCall:
    span: Span
    usage: Usage | None
    model: str | None
    is_title: bool
    end_ns: int
    cost: float | None = None
    message_id: str | None = None  # the opencode assistant message it was joined to
    shipped: bool = False
    dirty: bool = False


@dataclass
class ToolRun:
    call_id: str
    name: str = "tool"
    args: str = ""
    wire_start_ns: int | None = None  # the tool call arrived (end of the response that asked for it)
    wire_end_ns: int | None = None  # the next request carried its result
    wire_output: str | None = None
    wire_error: bool = False
    plugin_start_ns: int | None = None
    plugin: ev.ToolEnd | None = None
    shipped_source: str | None = None
    child_session: str | None = None  # for `task`: the subagent session it started

    @property
    def done(self) -> bool:
        return self.plugin is not None or self.wire_end_ns is not None


@dataclass
class Session:
    id: str
    trace_id: str
    root_span_id: str
    api_key: str | None
    parent_id: str | None = None
    parent_span_id: str | None = None
    title: str | None = None
    agent: str | None = None
    provider_id: str | None = None
    first_prompt: str | None = None
    turn_prompt: str | None = None
    last_output: str | None = None
    start_ns: int = 0
    last_ns: int = 0
    turns: int = 0
    turn_open: bool = False
    quiet_deadline_ns: int | None = None
    plugin: bool = False
    calls: list[LLMCall] = field(default_factory=list)
    tools: dict[str, ToolRun] = field(default_factory=dict)
    pending_costs: list[ev.MessageCompleted] = field(default_factory=list)
    errored: bool = False
    tools_counted: set[str] = field(default_factory=set)
    # running totals, so attributes of finished turns can be dropped
    n_calls: int = 0
    tokens: Usage = field(default_factory=Usage)
    cost: float = 0.0
    has_cost: bool = False


def ms_to_ns(ms: float | None) -> int | None:
    return None if ms is None else int(ms * 1_000_000)


class Correlator:
    def __init__(
        self,
        emit: Emit,
        content: Content,
        *,
        capture_system_prompt: bool = False,
        idle_timeout: float = 5.0,
        cost_fn: CostFn | None = None,
        session_ttl: float = 3600.0,
        default_api_key: str | None = None,
        observe: Observe | None = None,
        history: History | None = None,
    ) -> None:
        self.emit = emit
        self.content = content
        self.capture_system = capture_system_prompt
        self.idle_ns = int(idle_timeout * 1e9)
        self.cost_fn = cost_fn
        self.ttl_ns = int(session_ttl * 1e9)
        self.default_api_key = default_api_key
        self.observe = observe
        self.history = history
        self.sessions: dict[str, Session] = {}
        self._deadlines: list[tuple[int, str]] = []  # (quiet deadline, session id); stale entries skipped
        self._last_sweep_ns = 0

    # ---- sessions -------------------------------------------------------------------------------

    def session(self, sid: str, *, parent_id: str | None = None, api_key: str | None = None) -> Session:
        s = self.sessions.get(sid)
        if s is None:
            parent = self.sessions.get(parent_id) if parent_id else None
            trace = parent.trace_id if parent else trace_id_for(parent_id or sid)
            s = Session(sid, trace, root_span_id_for(sid), api_key or self.default_api_key)
            s.parent_id = parent_id
            if parent_id:
                s.parent_span_id = self._subagent_parent_span(parent, parent_id, sid)
            self._resume(s)
            self.sessions[sid] = s
        elif api_key and s.api_key != api_key:
            s.api_key = api_key
        if parent_id and not s.parent_id:
            self._adopt(s, parent_id)
        return s

    def _adopt(self, s: Session, parent_id: str) -> None:
        """The parent became known after the session was created (a plugin event came first): move the
        session into the parent's trace, and re-ship what already went out under the old trace id."""
        parent = self.sessions.get(parent_id)
        s.parent_id = parent_id
        s.trace_id = parent.trace_id if parent else trace_id_for(parent_id)
        s.parent_span_id = self._subagent_parent_span(parent, parent_id, s.id)
        for call in s.calls:
            call.span.trace_id = s.trace_id
            call.dirty = call.shipped
        for run in s.tools.values():
            if run.shipped_source is not None:
                run.shipped_source = "stale"

    def _resume(self, s: Session) -> None:
        """A session this process has not seen (restart, forgotten after its TTL): continue its totals."""
        if self.history is None:
            return
        try:
            h = self.history(s.id)
        except Exception as exc:
            log.debug("no history for %s: %s", s.id, exc)
            return
        if not h:
            return
        s.start_ns, s.last_ns = h["start_ns"], h["end_ns"]
        s.n_calls, s.turns = h["llm_calls"], h["turns"]
        s.tokens = Usage(h["input"], h["output"], h["cache_read"], h["cache_write"], h["reasoning"])
        if h["cost"] is not None:
            s.cost, s.has_cost = float(h["cost"]), True
        s.title, s.first_prompt, s.agent = h["title"], h["first_prompt"], h["agent"]
        s.tools_counted = {f"earlier-{i}" for i in range(h["tool_calls"])}

    def _subagent_parent_span(self, parent: Session | None, parent_id: str, child: str) -> str:
        """The parent's `task` tool span that started this subagent, else the parent's root."""
        if parent is not None:
            for run in parent.tools.values():
                if run.name == "task" and run.child_session in (None, child):
                    run.child_session = child
                    return tool_span_id_for(parent.id, run.call_id)
        return root_span_id_for(parent_id)

    # ---- wire -----------------------------------------------------------------------------------

    def on_exchange(self, ex: Exchange) -> None:
        unpack(ex)
        fmt, req, res = parse_exchange(ex)
        sid = ex.session_id or anonymous_session_id(req)
        s = self.session(sid, parent_id=ex.parent_session_id, api_key=ex.neatlogs_api_key)
        start, end = ex.start_ns, ex.end_ns or time.time_ns()
        s.start_ns = min(s.start_ns or start, start)
        s.last_ns = max(s.last_ns, end)
        is_title = ex.agent == TITLE_AGENT or (ex.agent is None and looks_like_title(req))

        if not is_title:
            self._wire_tool_results(s, req, start)
            if req.messages and req.messages[-1].role == "user":
                self._start_turn(s, req.messages[-1].content, sum(m.role == "user" for m in req.messages))
            elif not s.turn_open:
                self._start_turn(s, None)  # continuation seen first (e.g. after a proxy restart)
            if ex.agent:
                s.agent = ex.agent

        usage = res.usage
        cost, cost_source = self._wire_cost(fmt.provider, req, res)
        error = res.error is not None or (ex.status or 0) >= 400 or res.truncated
        attrs = llm_attrs(
            self.content,
            session_id=s.id,
            req=req,
            res=res,
            provider=s.provider_id or ex.route,
            gen_ai_provider=fmt.provider if fmt.provider != "unknown" else ex.route,
            turn_prompt=None if is_title else _last_user(req) or s.turn_prompt,
            capture_system=self.capture_system,
            purpose=TITLE_AGENT if is_title else ex.agent or s.agent,
            status=ex.status,
            start_ns=start,
            cost=cost,
            cost_source=cost_source,
            method=ex.method,
            path=ex.path,
            request_headers=ex.request_headers,
        )
        model = req.model or res.model or "unknown"
        span = Span(
            trace_id=s.trace_id, span_id=new_span_id(), parent_span_id=s.root_span_id,
            name=f"opencode.llm.{model}", start_ns=start, end_ns=max(end, start), attributes=attrs,
            status_code=STATUS_ERROR if error else STATUS_OK,
            status_message=_error_message(res, ex) if error else "", session_id=s.id,
        )
        if self.observe is not None:
            ttft = (res.first_token_ns - start) / 1e9 if res.first_token_ns else None
            etype = res.error.type if res.error else ("truncated" if res.truncated else None)
            self.observe(ex.route, model, ex.status, (end - start) / 1e9, ttft, usage, cost, etype)
        call = LLMCall(span, usage, model, is_title, end, cost=cost)
        s.calls.append(call)
        s.n_calls += 1
        if usage is not None:
            _add_usage(s.tokens, usage)
        if cost is not None:
            s.cost += cost
            s.has_cost = True
        self._join_pending_costs(s)

        if is_title:
            if res.text.strip() and not s.title:
                s.title = res.text.strip().splitlines()[0][:200]
        else:
            for tc in res.tool_calls:
                run = s.tools.setdefault(tc.id, ToolRun(tc.id))
                run.name, run.args, run.wire_start_ns = tc.name, tc.arguments, end
            if res.text:
                s.last_output = res.text
            final = not res.tool_calls
            s.errored = error
            s.quiet_deadline_ns = None
            if final:
                s.quiet_deadline_ns = deadline = end + self.idle_ns
                heapq.heappush(self._deadlines, (deadline, s.id))
        self._ship(s)

    def _wire_cost(self, provider: str, req: LLMRequest, res: LLMResponse) -> tuple[float | None, str | None]:
        u = res.usage
        if u is None:
            return None, None
        if u.provider_cost_usd is not None:
            return u.provider_cost_usd, "provider"
        if self.cost_fn is not None:
            # The model that answered is what was billed (e.g. a dated snapshot, OpenRouter's pick);
            # the requested name is the fallback when the price table does not know it.
            for model in dict.fromkeys(m for m in (res.model, req.model) if m):
                try:
                    cost = self.cost_fn(provider, model, u)
                except Exception as exc:  # pricing must never break capture
                    log.debug("cost lookup failed for %s: %s", model, exc)
                    cost = None
                if cost is not None:
                    return cost, "price_table"
        return None, None

    def _wire_tool_results(self, s: Session, req: LLMRequest, start_ns: int) -> None:
        for m in req.messages:
            if m.role != "tool" or not m.tool_call_id:
                continue
            run = s.tools.get(m.tool_call_id)
            if run is None or run.wire_end_ns is not None or run.wire_start_ns is None:
                continue  # unknown (an older turn) or already closed
            run.wire_end_ns = max(start_ns, run.wire_start_ns)
            run.wire_output = m.content
            run.wire_error = m.is_error

    def _start_turn(self, s: Session, prompt: str | None, user_messages: int = 0) -> None:
        if s.turn_open and s.calls and any(not c.is_title for c in s.calls):
            self._end_turn(s)  # a new prompt while the previous turn was never closed
        s.turn_open = True
        # The request's own history numbers the turn, so a replica that never saw the earlier turns
        # (failover, restart without a local store) still gives this turn's marker its own id.
        s.turns = max(s.turns + 1, user_messages)
        s.quiet_deadline_ns = None
        if prompt:
            s.turn_prompt = prompt
            s.first_prompt = s.first_prompt or prompt

    # ---- plugin ---------------------------------------------------------------------------------

    def on_events(self, events: list[Any], api_key: str | None = None) -> None:
        for e in events:
            try:
                self._on_event(e, api_key)
            except Exception as exc:  # one bad event must not lose the rest
                log.warning("plugin event %s failed: %s", getattr(e, "type", "?"), exc)

    def _on_event(self, e: Any, api_key: str | None) -> None:
        parent = e.parent_id if isinstance(e, ev.SessionInfo) else None
        s = self.session(e.session_id, parent_id=parent, api_key=api_key)
        s.plugin = True
        s.last_ns = s.last_ns or time.time_ns()  # seen now: `tick` must not forget a plugin-first session
        if e.ts:
            ts = int(e.ts * 1_000_000)
            s.start_ns = min(s.start_ns or ts, ts)
        match e:
            case ev.ChatMessage():
                if e.agent:
                    s.agent = e.agent
                s.provider_id = e.provider_id or s.provider_id
                if e.text:
                    s.turn_prompt = e.text
                    s.first_prompt = s.first_prompt or e.text
            case ev.ChatParams():
                if e.agent and e.agent != TITLE_AGENT:
                    s.agent = e.agent
                s.provider_id = e.provider_id or s.provider_id
            case ev.ToolStart():
                run = s.tools.setdefault(e.call_id, ToolRun(e.call_id))
                run.name = e.tool
                run.plugin_start_ns = ms_to_ns(e.ts)
            case ev.ToolEnd():
                run = s.tools.setdefault(e.call_id, ToolRun(e.call_id))
                run.name = e.tool
                run.plugin = e
                run.plugin_start_ns = ms_to_ns(e.start_ts) or run.plugin_start_ns
                if e.tool == "task" and isinstance(e.metadata, dict):
                    child = e.metadata.get("sessionId") or e.metadata.get("sessionID")
                    if isinstance(child, str):
                        self._link_child(s, run, child)
                if run.shipped_source is not None:
                    run.shipped_source = "stale"  # re-ship with the plugin's data
            case ev.MessageCompleted():
                if e.agent and e.agent != TITLE_AGENT:
                    s.agent = s.agent or e.agent
                s.provider_id = e.provider_id or s.provider_id
                s.pending_costs.append(e)
                self._join_pending_costs(s)
            case ev.SessionInfo():
                if e.title:
                    s.title = e.title
            case ev.SessionIdle():
                self._end_turn(s)
            case ev.SessionDeleted():
                self._end_turn(s)
                self.sessions.pop(s.id, None)

    def _link_child(self, s: Session, run: ToolRun, child: str) -> None:
        run.child_session = child
        c = self.sessions.get(child)
        if c is not None:
            c.parent_span_id = tool_span_id_for(s.id, run.call_id)

    def _join_pending_costs(self, s: Session) -> None:
        """Match opencode's per-message cost to the wire call with the same token counts."""
        if not s.pending_costs:
            return
        left: list[ev.MessageCompleted] = []
        for mc in s.pending_costs:
            call = _find_call(s, mc)
            if call is None:
                left.append(mc)
                continue
            call.message_id = mc.message_id
            if mc.cost is not None:
                old = call.cost
                call.cost = mc.cost
                s.cost += mc.cost - (old or 0.0)
                s.has_cost = True
                call.span.attributes["neatlogs.llm.cost_usd"] = float(mc.cost)
                call.span.attributes["neatlogs.llm.cost_source"] = "opencode"
            if mc.provider_id:
                call.span.attributes["neatlogs.llm.provider"] = mc.provider_id
            if mc.agent and "neatlogs.llm.purpose" not in call.span.attributes:
                call.span.attributes["neatlogs.llm.purpose"] = mc.agent
            call.dirty = call.shipped
        s.pending_costs = left

    # ---- time -----------------------------------------------------------------------------------

    def tick(self, now_ns: int | None = None) -> None:
        """Called a few times a second: O(turns due) via a deadline heap, so thousands of idle sessions
        cost nothing; forgetting quiet sessions is a full scan, done once a minute."""
        now = now_ns or time.time_ns()
        while self._deadlines and self._deadlines[0][0] <= now:
            deadline, sid = heapq.heappop(self._deadlines)
            s = self.sessions.get(sid)
            if s is not None and s.turn_open and s.quiet_deadline_ns == deadline:
                self._end_turn(s)
        if now - self._last_sweep_ns >= SWEEP_EVERY_NS:
            self._last_sweep_ns = now
            for s in list(self.sessions.values()):
                if not s.turn_open and now - s.last_ns > self.ttl_ns:
                    del self.sessions[s.id]

    def flush(self) -> None:
        """Ship everything shippable (shutdown). Open turns stay open: a restart continues them."""
        for s in self.sessions.values():
            self._ship(s)

    # ---- shipping -------------------------------------------------------------------------------

    def _end_turn(self, s: Session) -> None:
        s.turn_open = False
        s.quiet_deadline_ns = None
        self._ship(s, end_turn=True)
        # Free the heavy attributes (totals live on the session). A call the plugin has not priced
        # yet stays a while: its cost may still arrive after the turn end.
        horizon = s.last_ns - UNMATCHED_KEEP_NS
        s.calls = [c for c in s.calls
                   if s.plugin and c.message_id is None and not c.is_title and c.end_ns > horizon][-UNMATCHED_KEEP_MAX:]
        s.tools = {k: r for k, r in s.tools.items() if not r.done or r.shipped_source in (None, "stale")
                   or (r.name == "task" and r.child_session is None)}

    def _ship(self, s: Session, end_turn: bool = False) -> None:
        out: list[Span] = []
        for call in s.calls:
            if not call.shipped or call.dirty:
                out.append(call.span.model_copy())
                call.shipped, call.dirty = True, False
        for run in s.tools.values():
            span = self._tool_span(s, run, end_turn)
            if span is not None:
                out.append(span)
        if end_turn:
            out.append(self._root_span(s))
            if s.parent_id is None:
                t = max(s.last_ns, s.start_ns)
                out.append(Span(trace_id=s.trace_id, span_id=marker_span_id_for(s.id, s.turns),
                                parent_span_id=s.root_span_id, name="neatlogs.trace.complete",
                                start_ns=t, end_ns=t, attributes=marker_attrs(s.id), session_id=s.id))
        if out:
            self.emit(out, s.api_key)

    def _tool_span(self, s: Session, run: ToolRun, end_turn: bool) -> Span | None:
        p = run.plugin
        if p is not None:
            if run.shipped_source == "plugin":
                return None
            run.shipped_source = "plugin"
            start = run.plugin_start_ns or ms_to_ns(p.ts) or s.last_ns
            end = ms_to_ns(p.end_ts) or ms_to_ns(p.ts) or start
            args = p.args if isinstance(p.args, str) else to_json(p.args) if p.args is not None else run.args
            output = p.output if isinstance(p.output, str) or p.output is None else to_json(p.output)
            attrs = tool_attrs(self.content, session_id=s.id, call_id=run.call_id, name=p.tool, args=args,
                               output=output, source="plugin", title=p.title, metadata=p.metadata,
                               error=p.error)
            failed = p.error is not None
        elif run.wire_end_ns is not None and run.shipped_source in (None, "stale") and (end_turn or not s.plugin):
            run.shipped_source = "wire"
            start, end = run.wire_start_ns or run.wire_end_ns, run.wire_end_ns
            attrs = tool_attrs(self.content, session_id=s.id, call_id=run.call_id, name=run.name,
                               args=run.args, output=run.wire_output, source="wire",
                               error="tool reported an error" if run.wire_error else None)
            failed = run.wire_error
        else:
            return None
        s.last_ns = max(s.last_ns, end)
        s.tools_counted.add(run.call_id)
        return Span(trace_id=s.trace_id, span_id=tool_span_id_for(s.id, run.call_id),
                    parent_span_id=s.root_span_id, name=f"opencode.tool.{attrs['neatlogs.tool.name']}",
                    start_ns=start, end_ns=max(end, start), attributes=attrs,
                    status_code=STATUS_ERROR if failed else STATUS_OK,
                    status_message=(p.error or "") if p is not None else "", session_id=s.id)

    def _root_span(self, s: Session) -> Span:
        a: dict[str, AttrValue] = base_attrs("AGENT", s.id)
        a["neatlogs.agent.framework"] = "opencode"
        a["gen_ai.operation.name"] = "invoke_agent"
        put_io(self.content, a, "agent", s.first_prompt, s.last_output)
        # The official plugin's root is a WORKFLOW span; keep its keys too (our spans are a superset).
        self.content.put(a, "neatlogs.workflow.input", s.first_prompt)
        self.content.put(a, "neatlogs.workflow.output", s.last_output)
        if s.title:
            a["neatlogs.session.title"] = s.title
        if s.agent:
            a["neatlogs.agent.name"] = s.agent
            a["gen_ai.agent.name"] = s.agent
        if s.parent_id:
            a["neatlogs.parent_conversation.id"] = s.parent_id
        a["neatlogs.session.llm_calls"] = s.n_calls
        a["neatlogs.session.tool_calls"] = len(s.tools_counted)
        a["neatlogs.session.turns"] = s.turns
        token_attrs(a, "neatlogs.session.token_count", s.tokens)
        if s.has_cost:
            a["neatlogs.session.cost_usd"] = round(s.cost, 10)
        return Span(trace_id=s.trace_id, span_id=s.root_span_id, parent_span_id=s.parent_span_id,
                    name="opencode.session", start_ns=s.start_ns or s.last_ns,
                    end_ns=max(s.last_ns, s.start_ns), attributes=a, status_code=STATUS_OK,
                    session_id=s.id)


# ---- helpers ------------------------------------------------------------------------------------

def looks_like_title(req: LLMRequest) -> bool:
    """opencode's title call: no tools offered and a system prompt asking for a title."""
    return not req.tools and any("title" in text.lower() for text in req.system)


def anonymous_session_id(req: LLMRequest) -> str:
    """Clients without a session header: group calls by their conversation's first user message."""
    first = next((m.content for m in req.messages if m.role == "user"), "")
    seed = "\n".join(req.system[:1]) + "\x1f" + first
    return "anon_" + hashlib.sha256(seed.encode("utf-8", "replace")).hexdigest()[:20]


def _last_user(req: LLMRequest) -> str | None:
    for m in reversed(req.messages):
        if m.role == "user":
            return m.content
    return None


def _find_call(s: Session, mc: ev.MessageCompleted) -> LLMCall | None:
    open_calls = [c for c in s.calls if not c.is_title and c.message_id is None]
    t = mc.tokens
    if t is not None:
        for c in open_calls:
            u = c.usage
            if (u is not None and u.prompt_tokens == t.input and u.completion_tokens == t.output
                    and u.cache_read_tokens == t.cache.read):
                return c
    # No usage on the wire (some providers omit it): the earliest unmatched call of that model.
    for c in open_calls:
        if c.usage is None and (mc.model_id is None or mc.model_id == c.model):
            return c
    return None


def _add_usage(total: Usage, u: Usage) -> None:
    total.input_tokens += u.input_tokens
    total.output_tokens += u.output_tokens
    total.cache_read_tokens += u.cache_read_tokens
    total.cache_write_tokens += u.cache_write_tokens
    total.reasoning_tokens += u.reasoning_tokens


def _error_message(res: LLMResponse, ex: Exchange) -> str:
    if res.error is not None:
        return f"{res.error.type}: {res.error.message}"[:1000]
    if res.truncated:
        return "stream ended without its terminal event"
    return f"HTTP {ex.status}"

