"""The embedded local trace store: every exported span, upserted by span id, in SQLite.

It is the default destination (no NEATLOGS_API_KEY) and always keeps a local copy, which the
`sessions` / `show` commands (and later a local viewer) read.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from addon import fastjson
from addon.spans import Span

_SCHEMA = """
CREATE TABLE IF NOT EXISTS spans (
  span_id TEXT PRIMARY KEY,
  trace_id TEXT NOT NULL,
  parent_span_id TEXT,
  session_id TEXT NOT NULL,
  name TEXT NOT NULL,
  kind TEXT,
  start_ns INTEGER NOT NULL,
  end_ns INTEGER NOT NULL,
  status_code INTEGER NOT NULL,
  status_message TEXT,
  attributes TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS spans_session ON spans(session_id);
CREATE INDEX IF NOT EXISTS spans_trace ON spans(trace_id);
"""


@dataclass(slots=True)
class SessionSummary:
    session_id: str
    title: str | None
    start_ns: int
    end_ns: int
    llm_calls: int
    tool_calls: int
    tokens: int
    cost_usd: float | None
    parent_id: str | None


class LocalStore:
    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.lock = threading.Lock()
        self.db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(_SCHEMA)

    def upsert(self, spans: list[Span]) -> None:
        rows = [(s.span_id, s.trace_id, s.parent_span_id, s.session_id, s.name,
                 str(s.attributes.get("neatlogs.span.kind", "")), s.start_ns, s.end_ns, s.status_code,
                 s.status_message, fastjson.dumps(s.attributes)) for s in spans]
        with self.lock:
            self.db.execute("BEGIN")
            self.db.executemany("INSERT OR REPLACE INTO spans VALUES (?,?,?,?,?,?,?,?,?,?,?)", rows)
            self.db.execute("COMMIT")

    def sessions(self, limit: int = 50) -> list[SessionSummary]:
        q = """
        SELECT session_id,
          MAX(CASE WHEN kind='AGENT' THEN json_extract(attributes,'$."neatlogs.session.title"') END),
          MIN(start_ns), MAX(end_ns),
          SUM(kind='LLM'), SUM(kind='TOOL'),
          COALESCE(SUM(CASE WHEN kind='LLM' THEN json_extract(attributes,'$."neatlogs.llm.token_count.total"') END),0),
          SUM(CASE WHEN kind='LLM' THEN json_extract(attributes,'$."neatlogs.llm.cost_usd"') END),
          MAX(CASE WHEN kind='AGENT' THEN json_extract(attributes,'$."neatlogs.parent_conversation.id"') END)
        FROM spans GROUP BY session_id ORDER BY MIN(start_ns) DESC LIMIT ?"""
        with self.lock:
            rows = self.db.execute(q, (limit,)).fetchall()
        return [SessionSummary(r[0], r[1], r[2], r[3], int(r[4] or 0), int(r[5] or 0), int(r[6] or 0), r[7], r[8])
                for r in rows]

    def session_history(self, session_id: str) -> dict[str, Any] | None:
        """What earlier runs of this proxy exported for a session, so a restart continues its totals."""
        q = """
        SELECT COUNT(*) FILTER (WHERE kind='LLM'), COUNT(*) FILTER (WHERE kind='TOOL'),
          COUNT(*) FILTER (WHERE name='neatlogs.trace.complete'), MIN(start_ns), MAX(end_ns),
          SUM(CASE WHEN kind='LLM' THEN json_extract(attributes,'$."gen_ai.usage.input_tokens"') END),
          SUM(CASE WHEN kind='LLM' THEN json_extract(attributes,'$."gen_ai.usage.output_tokens"') END),
          SUM(CASE WHEN kind='LLM' THEN json_extract(attributes,'$."gen_ai.usage.cache_read.input_tokens"') END),
          SUM(CASE WHEN kind='LLM' THEN json_extract(attributes,'$."gen_ai.usage.cache_creation.input_tokens"') END),
          SUM(CASE WHEN kind='LLM' THEN json_extract(attributes,'$."neatlogs.llm.token_count.reasoning"') END),
          SUM(CASE WHEN kind='LLM' THEN json_extract(attributes,'$."neatlogs.llm.cost_usd"') END)
        FROM spans WHERE session_id=?"""
        with self.lock:
            row = self.db.execute(q, (session_id,)).fetchone()
            root = self.db.execute("SELECT attributes FROM spans WHERE session_id=? AND kind='AGENT'",
                                   (session_id,)).fetchone()
        if not row or not row[3]:
            return None
        attrs = json.loads(root[0]) if root else {}
        tools = max(int(row[1] or 0), int(attrs.get("neatlogs.session.tool_calls", 0)))
        return {"llm_calls": int(row[0] or 0), "tool_calls": tools, "turns": int(row[2] or 0),
                "start_ns": int(row[3]), "end_ns": int(row[4]), "input": int(row[5] or 0),
                "output": int(row[6] or 0), "cache_read": int(row[7] or 0), "cache_write": int(row[8] or 0),
                "reasoning": int(row[9] or 0), "cost": row[10], "title": attrs.get("neatlogs.session.title"),
                "first_prompt": attrs.get("input.value"), "agent": attrs.get("neatlogs.agent.name")}

    def trace_spans(self, session_id: str) -> list[Span]:
        """All spans of the trace that holds this session (subagents included)."""
        with self.lock:
            row = self.db.execute("SELECT trace_id FROM spans WHERE session_id=? LIMIT 1", (session_id,)).fetchone()
            if row is None:
                return []
            rows = self.db.execute(
                "SELECT span_id, trace_id, parent_span_id, session_id, name, start_ns, end_ns, status_code, "
                "status_message, attributes FROM spans WHERE trace_id=? ORDER BY start_ns", (row[0],)).fetchall()
        return [Span(span_id=r[0], trace_id=r[1], parent_span_id=r[2], session_id=r[3], name=r[4], start_ns=r[5],
                     end_ns=r[6], status_code=r[7], status_message=r[8] or "", attributes=json.loads(r[9]))
                for r in rows]

    def close(self) -> None:
        with self.lock:
            self.db.close()
