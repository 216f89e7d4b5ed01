// neatlogs-opencode-proxy-plugin: reports to the Neatlogs proxy what the wire cannot show
// (prompts, agents, tool runs, opencode's own token/cost accounting, session tree and turn ends).
// Contract: docs/design.md, "Plugin → proxy event API (v1)". No runtime dependencies.
//
// Only the default export may be a value: opencode calls every exported function as a plugin.
import type { Hooks, Plugin } from "@opencode-ai/plugin";

const VERSION = "0.1.0";
const FLUSH_DELAY_MS = 20; // batch window: small enough that nothing waits noticeably
const FLUSH_AT = 50; // queued events that trigger an immediate flush
const FETCH_TIMEOUT_MS = 1500;
const RETRY_DELAY_MS = 100;
const DISPOSE_DEADLINE_MS = 2000; // `opencode run` must never hang on a dead proxy
const MAX_BODY_BYTES = 1024 * 1024 - 4096; // proxy answers 413 above 1 MiB; keep slack for the envelope
const MAX_EVENT_BYTES = 256 * 1024; // one huge tool output must not starve a batch
const MAX_REMEMBERED = 10_000; // bound for the dedupe sets in long TUI sessions

type OcEvent = Parameters<NonNullable<Hooks["event"]>>[0]["event"];
type OcPart = Parameters<NonNullable<Hooks["chat.message"]>>[1]["parts"][number];
type Json = null | boolean | number | string | Json[] | { [key: string]: Json };
type ProxyEvent = { type: string; session_id: string; ts: number; [field: string]: unknown };

type Config = { url: string; gatewayToken?: string; apiKey?: string; debug: boolean };

function readConfig(env: Record<string, string | undefined>): Config {
  const flag = (env.NEATLOGS_DEBUG ?? "").toLowerCase();
  return {
    url: (env.NEATLOGS_PROXY_URL || "http://127.0.0.1:8787").replace(/\/+$/, ""),
    gatewayToken: env.NEATLOGS_GATEWAY_TOKEN || undefined,
    apiKey: env.NEATLOGS_API_KEY || undefined,
    debug: flag === "true" || flag === "1",
  };
}

/** Headers that identify the user/gateway to the proxy, on both event posts and LLM requests. */
function authHeaders(cfg: Config): Record<string, string> {
  const h: Record<string, string> = {};
  if (cfg.gatewayToken) h["x-neatlogs-gateway-token"] = cfg.gatewayToken;
  if (cfg.apiKey) h["x-neatlogs-api-key"] = cfg.apiKey;
  return h;
}

const encoder = new TextEncoder();
const byteLength = (s: string) => encoder.encode(s).length;

/** JSON-safe copy of arbitrary tool args/metadata (drops functions, cycles, bigints). */
function toJson(value: unknown): Json {
  if (value === undefined) return null;
  try {
    const seen = new WeakSet<object>();
    return JSON.parse(
      JSON.stringify(value, (_k, v) => {
        if (typeof v === "bigint") return v.toString();
        if (typeof v === "object" && v !== null) {
          if (seen.has(v)) return "[circular]";
          seen.add(v);
        }
        return v;
      }) ?? "null",
    );
  } catch {
    return String(value);
  }
}

function truncate(s: string, maxBytes: number): string {
  if (byteLength(s) <= maxBytes) return s;
  // chars ≤ bytes, so slicing by chars first is a safe upper bound; then trim until it fits
  let out = s.slice(0, maxBytes);
  while (byteLength(out) > maxBytes) out = out.slice(0, Math.floor(out.length * 0.9));
  return out + "…[truncated by neatlogs plugin]";
}

/** Keep one event under MAX_EVENT_BYTES by shortening its bulky fields (the proxy caps them anyway). */
function clip(ev: ProxyEvent): ProxyEvent {
  if (byteLength(JSON.stringify(ev)) <= MAX_EVENT_BYTES) return ev;
  const out: ProxyEvent = { ...ev };
  const budget = MAX_EVENT_BYTES / 4;
  for (const key of ["output", "text", "title"]) {
    if (typeof out[key] === "string") out[key] = truncate(out[key] as string, budget);
  }
  for (const key of ["args", "metadata"]) {
    if (key in out && byteLength(JSON.stringify(out[key])) > budget) {
      out[key] = truncate(JSON.stringify(out[key]), budget); // still valid: "any JSON"
    }
  }
  return out;
}

/** Split events into request bodies that each stay under the proxy's size limit. */
function packBodies(events: ProxyEvent[]): string[] {
  const envelope = (items: string[]) =>
    `{"source":"opencode-plugin","plugin_version":"${VERSION}","events":[${items.join(",")}]}`;
  const bodies: string[] = [];
  let items: string[] = [];
  let size = 0;
  for (const ev of events) {
    const item = JSON.stringify(clip(ev));
    const n = byteLength(item) + 1;
    if (items.length > 0 && size + n > MAX_BODY_BYTES) {
      bodies.push(envelope(items));
      items = [];
      size = 0;
    }
    items.push(item);
    size += n;
  }
  if (items.length > 0) bodies.push(envelope(items));
  return bodies;
}

/** One batch per session, in order: each POST can be routed by its session. */
function bySession(events: ProxyEvent[]): Map<string, ProxyEvent[]> {
  const out = new Map<string, ProxyEvent[]>();
  for (const ev of events) {
    const list = out.get(ev.session_id);
    if (list) list.push(ev);
    else out.set(ev.session_id, [ev]);
  }
  return out;
}

const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** Wait for `p`, but never longer than `ms`. */
async function within(p: Promise<void>, ms: number): Promise<void> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  await Promise.race([p, new Promise<void>((resolve) => (timer = setTimeout(resolve, ms)))]);
  clearTimeout(timer);
}

/** Insert into a bounded set; returns false when the key was already there (i.e. a duplicate). */
function remember(set: Set<string>, key: string): boolean {
  if (set.has(key)) return false;
  set.add(key);
  if (set.size > MAX_REMEMBERED) set.delete(set.values().next().value as string);
  return true;
}

/** Queue + short timer batching; every send is tracked so dispose can wait for it. */
function createSender(cfg: Config, log: (...args: unknown[]) => void) {
  const endpoint = `${cfg.url}/_neatlogs/v1/events`;
  const headers = { "content-type": "application/json", ...authHeaders(cfg) };
  const inflight = new Set<Promise<void>>();
  let queue: ProxyEvent[] = [];
  let timer: ReturnType<typeof setTimeout> | undefined;
  let failing = false; // last attempt failed: stop retrying and stop stalling opencode's hooks

  async function post(body: string, sessionID: string): Promise<void> {
    const attempts = failing ? 1 : 2;
    for (let attempt = 1; attempt <= attempts; attempt++) {
      try {
        const res = await fetch(endpoint, {
          method: "POST",
          // x-session-id lets a gateway's consistent hashing send the events to the replica that
          // serves this session's LLM traffic.
          headers: { ...headers, "x-session-id": sessionID },
          body,
          signal: AbortSignal.timeout(FETCH_TIMEOUT_MS),
        });
        await res.body?.cancel().catch(() => {});
        if (res.ok) {
          failing = false;
          return;
        }
        // 4xx other than 429 will fail the same way again: drop instead of retrying
        const retryable = res.status === 429 || res.status >= 500;
        log(`proxy answered ${res.status} (attempt ${attempt})`);
        if (!retryable) return; // the proxy is up; the batch itself is bad
      } catch (err) {
        log(`send failed (attempt ${attempt}):`, String(err));
      }
      failing = true;
      if (attempt < attempts) await sleep(RETRY_DELAY_MS);
    }
    log("dropping batch");
  }

  /** Send everything queued; resolves when it (and every earlier send) has settled. */
  function flush(): Promise<void> {
    if (timer) clearTimeout(timer);
    timer = undefined;
    const batch = queue;
    queue = [];
    if (batch.length > 0) {
      log(`sending ${batch.length} event(s):`, batch.map((e) => e.type).join(", "));
      for (const [sessionID, events] of bySession(batch)) {
        for (const body of packBodies(events)) {
          const p: Promise<void> = post(body, sessionID).finally(() => inflight.delete(p));
          inflight.add(p);
        }
      }
    }
    return Promise.allSettled([...inflight]).then(() => undefined);
  }

  /**
   * For hooks opencode awaits: deliver before the next LLM request. A failing or hanging proxy
   * must not stall opencode, so wait at most one fetch timeout (dispose still waits for the rest).
   */
  function sync(): Promise<void> {
    const sent = flush();
    return failing ? Promise.resolve() : within(sent, FETCH_TIMEOUT_MS);
  }

  function push(ev: ProxyEvent): void {
    queue.push(ev);
    if (queue.length >= FLUSH_AT) void flush();
    else if (!timer) timer = setTimeout(() => void flush(), FLUSH_DELAY_MS);
  }

  return { push, flush, sync };
}

/** The user's prompt: the typed text parts, without synthetic ones (e.g. attached file contents). */
function promptText(parts: OcPart[]): string {
  const texts = parts.filter((p) => p.type === "text") as Extract<OcPart, { type: "text" }>[];
  const typed = texts.filter((p) => !p.synthetic);
  return (typed.length > 0 ? typed : texts).map((p) => p.text).join("\n");
}

function errorText(err: unknown): string | null {
  if (!err) return null;
  if (typeof err === "string") return err;
  const e = err as { name?: string; message?: string; data?: { message?: string } };
  const message = e.data?.message ?? e.message;
  if (e.name && message) return `${e.name}: ${message}`;
  return e.name ?? message ?? JSON.stringify(toJson(err));
}

const NeatlogsProxyPlugin: Plugin = async () => {
  const cfg = readConfig(process.env);
  const log = cfg.debug
    ? (...args: unknown[]) => console.error("[neatlogs-plugin]", ...args)
    : () => {};
  const sender = createSender(cfg, log);
  const toolStarts = new Map<string, { tool: string; args: Json; start: number }>();
  const toolsReported = new Set<string>(); // call ids that already got a tool.end
  const messagesReported = new Set<string>(); // assistant message ids already reported
  const sessionInfo = new Map<string, string>(); // last reported parent/title per session

  const emit = (type: string, sessionID: string, fields: Record<string, unknown> = {}) =>
    sender.push({ type, session_id: sessionID, ts: Date.now(), ...fields });

  /** Run a hook body; a bug or a dead proxy must never break opencode. */
  const guard = async (name: string, body: () => void | Promise<void>) => {
    try {
      await body();
    } catch (err) {
      log(`${name} hook failed:`, err);
    }
  };

  function onEvent(event: OcEvent): void {
    switch (event.type) {
      case "message.updated": {
        const info = event.properties.info;
        if (info.role !== "assistant" || !info.time.completed) return;
        if (!remember(messagesReported, info.id)) return;
        const agent = (info as { agent?: string }).agent ?? info.mode; // newer opencode adds `agent`
        emit("message.completed", info.sessionID, {
          message_id: info.id,
          parent_id: info.parentID ?? null,
          provider_id: info.providerID,
          model_id: info.modelID,
          agent,
          tokens: {
            input: info.tokens?.input ?? 0,
            output: info.tokens?.output ?? 0,
            reasoning: info.tokens?.reasoning ?? 0,
            cache: { read: info.tokens?.cache?.read ?? 0, write: info.tokens?.cache?.write ?? 0 },
          },
          cost: info.cost ?? 0,
          finish: info.finish ?? null,
          time_created: info.time.created,
          time_completed: info.time.completed,
          error: errorText(info.error),
        });
        return;
      }
      case "message.part.updated": {
        // tool.execute.after does not run when a tool throws; the failed part is the only trace of it
        const part = event.properties.part;
        if (part.type !== "tool" || part.state.status !== "error") return;
        if (!remember(toolsReported, part.callID)) return;
        const started = toolStarts.get(part.callID);
        toolStarts.delete(part.callID);
        emit("tool.end", part.sessionID, {
          call_id: part.callID,
          tool: part.tool,
          args: toJson(part.state.input ?? started?.args),
          title: "",
          output: "",
          metadata: toJson(part.state.metadata ?? null),
          error: part.state.error || "tool failed",
          start_ts: part.state.time?.start ?? started?.start ?? null,
          end_ts: part.state.time?.end ?? Date.now(),
        });
        return;
      }
      case "session.created":
      case "session.updated": {
        const s = event.properties.info;
        const fields = { parent_id: s.parentID ?? null, title: s.title ?? "" };
        const key = JSON.stringify(fields);
        if (sessionInfo.get(s.id) === key) return; // session.updated fires on every change
        sessionInfo.set(s.id, key);
        emit("session.info", s.id, fields);
        return;
      }
      case "session.idle":
        emit("session.idle", event.properties.sessionID);
        void sender.flush(); // turn end: `opencode run` exits right after this
        return;
      case "session.deleted":
        sessionInfo.delete(event.properties.info.id);
        emit("session.deleted", event.properties.info.id);
        return;
    }
  }

  return {
    // opencode does not await `event`, but awaits `dispose` at exit: wait here for pending sends.
    dispose: () => guard("dispose", () => within(sender.flush(), DISPOSE_DEADLINE_MS)),

    event: ({ event }) => guard("event", () => onEvent(event)),

    "chat.message": (input, output) =>
      guard("chat.message", async () => {
        const model = input.model ?? output.message.model;
        emit("chat.message", input.sessionID, {
          message_id: output.message.id ?? input.messageID,
          agent: input.agent ?? output.message.agent,
          provider_id: model?.providerID ?? null,
          model_id: model?.modelID ?? null,
          text: promptText(output.parts),
        });
        await sender.sync(); // before the LLM request this prompt triggers
      }),

    "chat.params": (input) =>
      guard("chat.params", async () => {
        emit("chat.params", input.sessionID, {
          agent: input.agent,
          provider_id: input.model.providerID,
          model_id: input.model.id,
          message_id: input.message.id,
        });
        await sender.sync();
      }),

    "chat.headers": (input, output) =>
      guard("chat.headers", () => {
        // lets the proxy attribute the request even where opencode sends no x-session-id
        output.headers["x-neatlogs-session-id"] = input.sessionID;
        output.headers["x-neatlogs-agent"] = input.agent;
        Object.assign(output.headers, authHeaders(cfg));
      }),

    "tool.execute.before": (input, output) =>
      guard("tool.execute.before", () => {
        const args = toJson(output.args);
        toolStarts.set(input.callID, { tool: input.tool, args, start: Date.now() });
        emit("tool.start", input.sessionID, { call_id: input.callID, tool: input.tool, args });
      }),

    "tool.execute.after": (input, output) =>
      guard("tool.execute.after", async () => {
        const started = toolStarts.get(input.callID);
        toolStarts.delete(input.callID);
        if (!remember(toolsReported, input.callID)) return;
        emit("tool.end", input.sessionID, {
          call_id: input.callID,
          tool: input.tool,
          args: toJson(input.args ?? started?.args),
          title: output?.title ?? "",
          output: typeof output?.output === "string" ? output.output : JSON.stringify(toJson(output?.output)),
          metadata: toJson(output?.metadata ?? null),
          error: null,
          start_ts: started?.start ?? null,
          end_ts: Date.now(),
        });
        await sender.sync(); // the tool result goes into the next LLM request
      }),
  };
};

export default NeatlogsProxyPlugin;
