"""Secret scrubbing for captured LLM traffic.

Why this exists: a coding agent reads the user's files and runs their commands, so the prompts,
tool outputs and tool arguments the proxy captures routinely contain API keys, ``.env`` files,
private keys and database URLs. Those strings would otherwise be exported verbatim into a
third-party trace store, kept for months and shown to everyone who can open the dashboard. This
module removes the usual suspects before a span leaves the process, replacing each with a typed
placeholder such as ``[REDACTED:openai_api_key]`` so that a reader still understands what was there.

Design constraints:

* **Pure and fast.** No I/O, no state; all patterns are compiled once at import and applied in a
  single ``re.sub`` pass over one combined alternation (leftmost match wins, so a ``NAME=value`` line
  or an ``Authorization:`` header is handled as a whole before the token inside it is seen on its own).
  Every pattern is anchored on a literal prefix or a word start, so the scan stays linear on
  large, unstructured input such as base64 blobs.
* **Idempotent.** Redacting redacted text changes nothing: placeholders are never matched again.
* **Conservative on code.** Agents read ordinary source code all day; mangling it would make traces
  useless. So vendor token formats require their real prefixes and a minimum length, ``NAME=value``
  assignments must look like environment variables (UPPER_CASE, no spaces) unless the value is a
  quoted string literal, names such as ``token_count``/``max_tokens``/``secret_name`` are not secrets,
  and hex digests, git SHAs and UUIDs are left alone.

This is a best-effort filter for well-known shapes, not a guarantee: a password in free prose
(``my password is hunter2``) cannot be recognised.
"""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Mapping

__all__ = ["PLACEHOLDER", "redact", "redact_headers", "redact_url"]

#: The value that replaces a sensitive header or query parameter as a whole.
PLACEHOLDER = "[REDACTED]"
_PH_PREFIX = "[REDACTED"


def _ph(kind: str) -> str:
    return f"[REDACTED:{kind}]"


# --------------------------------------------------------------------------------------------
# Vendor token formats. Each is (type, regex); they are used inside the combined pattern and,
# anchored, to classify a value found after a secret-looking name.
# --------------------------------------------------------------------------------------------
_B = r"(?<![A-Za-z0-9_\-])"  # token start: not in the middle of a word / another token
_E = r"(?![A-Za-z0-9_\-])"  # token end
_HAS_DIGIT = r"(?=[A-Za-z0-9_\-]*[0-9])"

_TOKEN_FORMATS: list[tuple[str, str]] = [
    ("anthropic_api_key", r"sk-ant-[A-Za-z0-9_\-]{20,}"),
    ("openrouter_api_key", r"sk-or-v1-[A-Za-z0-9]{20,}"),
    ("openai_api_key", r"sk-" + _HAS_DIGIT + r"(?:proj-|svcacct-|admin-)?[A-Za-z0-9_\-]{20,}"),
    ("stripe_api_key", r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{16,}"),
    ("google_api_key", r"AIza[0-9A-Za-z_\-]{35}"),
    ("github_token", r"(?:gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{22,})"),
    ("gitlab_token", r"glpat-[A-Za-z0-9_\-]{20,}"),
    ("slack_token", r"xox[abprse]-[A-Za-z0-9\-]{10,}"),
    ("npm_token", r"npm_[A-Za-z0-9]{36}"),
    ("huggingface_token", r"hf_[A-Za-z0-9]{30,}"),
    ("aws_access_key_id", r"(?:AKIA|ASIA)[A-Z0-9]{16}"),
    ("jwt", r"eyJ[A-Za-z0-9_\-]{5,}\.eyJ[A-Za-z0-9_\-]{5,}\.[A-Za-z0-9_\-]*"),
]
_TOKEN_KINDS = {f"t{i}": kind for i, (kind, _) in enumerate(_TOKEN_FORMATS)}
_TOKEN_FULL = [(kind, re.compile(rx + r"\Z")) for kind, rx in _TOKEN_FORMATS]

# Words that make a variable / key name a secret, matched case-insensitively inside the name.
_KEYWORD = r"(?i:secret|token|passw(?:or)?d|api[_\-]?key|private[_\-]?key|access[_\-]?key|credential)"
_NAME_CHARS = r"[A-Za-z0-9_.\-]"

_PARTS: list[str] = [
    # PEM private keys, including truncated blocks (redacted to the end of the text).
    r"(?P<pem>-----BEGIN[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----(?s:.*?)"
    r"(?:-----END[A-Z0-9 ]{0,40}PRIVATE KEY(?: BLOCK)?-----|\Z))",
    # scheme://user:password@host (database URLs and any other URL with credentials).
    r"(?P<url>(?P<url_pre>\b[A-Za-z][A-Za-z0-9+.\-]{1,20}://[^\s:/@\"'<>]+:)"
    r"(?P<url_pw>[^\s@/\"'<>]+)(?=@))",
    # AWS secret access key next to its name (aws config files, env, JSON).
    r"(?P<awssk>(?P<awssk_pre>(?i:aws_?secret_?(?:access_?)?key)[\"']?[ \t]*[:=][ \t]*[\"']?)"
    r"(?P<awssk_val>[A-Za-z0-9/+]{40})(?![A-Za-z0-9/+]))",
    # Authorization-like headers: "Authorization: Bearer xyz", "x-api-key: xyz", JSON forms.
    r"(?P<hdr>(?P<hdr_pre>(?<![\w\-])(?i:(?:proxy-)?authorization|x-api-key|x-goog-api-key"
    r"|x-neatlogs-api-key|x-neatlogs-gateway-token)[\"']?[ \t]*[:=][ \t]*[\"']?"
    r"(?:(?i:bearer|basic|token|bot)[ \t]+)?)(?P<hdr_val>[^\s\"',;]{8,}))",
    # Bearer tokens anywhere.
    r"(?P<bearer>(?P<bearer_pre>\b(?i:bearer)[ \t]+)"
    r"(?P<bearer_val>(?=[A-Za-z0-9\-._~+/]*[0-9])[A-Za-z0-9\-._~+/]{16,}=*))",
    # "name": "value" / name = "value" / name: 'value' with a secret-looking name (any case).
    rf"(?P<kv>(?P<kv_pre>(?<![\w.\-])(?P<kv_q>[\"']?)(?P<kv_name>{_NAME_CHARS}*?{_KEYWORD}{_NAME_CHARS}*)"
    r"(?P=kv_q)[ \t]*[:=][ \t]*)"
    r"(?P<kv_val>\"(?:[^\"\\\n]|\\.)*\"|'(?:[^'\\\n]|\\.)*'))",
    # .env / shell: [export ]UPPER_NAME=value (no spaces around '=').
    r"(?P<env>(?P<env_pre>(?<![\w.\-])(?:export[ \t]+)?(?P<env_name>[A-Z0-9_]*?"
    r"(?:SECRET|TOKEN|PASSWORD|PASSWD|API_?KEY|PRIVATE_KEY|ACCESS_KEY|CREDENTIAL)[A-Z0-9_]*)=)"
    r"(?P<env_val>[^\s\"'`]+))",
]
_PARTS += [f"(?P<t{i}>{_B}{rx}{_E})" for i, (_, rx) in enumerate(_TOKEN_FORMATS)]
# Two shared guards first: no match starts in the middle of an alphanumeric run (nor right after a
# placeholder's "]", which keeps redaction idempotent) nor on whitespace or punctuation that opens none
# of the alternatives. The engine rejects most positions of long words,
# blobs and prose after these two checks instead of trying every alternative (about 10x faster).
_PATTERN = re.compile(r"(?<![A-Za-z0-9\]])(?=[A-Za-z0-9_.\"'\-])(?:" + "|".join(_PARTS) + ")")

# ---- name classification ------------------------------------------------------------------
_WORD_RE = re.compile(r"[A-Z]+(?=[A-Z][a-z])|[A-Z]?[a-z]+|[A-Z]+|[0-9]+")
_SECRET_WORDS = {
    "secret", "secrets", "token", "password", "passwd", "apikey", "credential", "credentials",
    "privatekey", "accesskey", "secretkey",
}  # fmt: skip
_SECRET_PAIRS = {("api", "key"), ("private", "key"), ("access", "key"), ("secret", "key")}
# Last word of names that *describe* a secret rather than hold one: token_count, secret_name ...
_NOT_SECRET_LAST = {
    "count", "counts", "type", "types", "url", "uri", "file", "path", "dir", "name", "names", "id",
    "ids", "limit", "limits", "ttl", "length", "len", "size", "header", "endpoint", "host", "port",
    "mode", "enabled", "enable", "format", "version", "expiry", "expires", "expiration", "at", "env",
    "var", "prefix", "field", "kind", "usage", "budget", "cost", "max", "min", "source", "ref",
    "location", "policy", "scope", "scopes", "hint", "label", "pattern", "regex", "required",
    "provided", "present", "valid", "set", "exists", "missing", "placeholder", "index", "rate",
}  # fmt: skip
_NOT_SECRET_FIRST = {"max", "min", "num", "total", "n", "existing", "is", "has", "use"}


def _is_secret_name(name: str) -> bool:
    words = [w.lower() for w in _WORD_RE.findall(name)]
    if not words or words[-1] in _NOT_SECRET_LAST or words[0] in _NOT_SECRET_FIRST:
        return False
    if any(w in _SECRET_WORDS for w in words):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(words))


def _name_kind(name: str) -> str:
    low = name.lower().replace("-", "_")
    if "aws" in low and "secret" in low:
        return "aws_secret_access_key"
    for needle, kind in (
        ("passw", "password"),
        ("private_key", "private_key"),
        ("privatekey", "private_key"),
        ("access_key", "access_key"),
        ("accesskey", "access_key"),
        ("api_key", "api_key"),
        ("apikey", "api_key"),
        ("token", "token"),
        ("credential", "credentials"),
    ):
        if needle in low:
            return kind
    return "secret"


def _classify(value: str, default: str) -> str:
    for kind, rx in _TOKEN_FULL:
        if rx.match(value):
            return kind
    return default


def _is_reference(value: str) -> bool:
    """Values that point at a secret instead of holding it: ${VAR}, $(cmd), {var}, <token>, %s."""
    return not value or value.startswith((_PH_PREFIX, "$", "{", "<", "%", "*****"))


def _replacer(counts: dict[str, int]) -> Callable[[re.Match[str]], str]:
    def hit(kind: str) -> str:
        counts[kind] = counts.get(kind, 0) + 1
        return _ph(kind)

    def sub_inner(text: str) -> str:
        return _PATTERN.sub(repl, text)

    def repl(m: re.Match[str]) -> str:
        g = m.lastgroup
        if g == "pem":
            return hit("private_key")
        if g == "url":
            if m["url_pw"].startswith(_PH_PREFIX):
                return m[0]
            return m["url_pre"] + hit("url_password")
        if g == "awssk":
            return m["awssk_pre"] + hit("aws_secret_access_key")
        if g == "hdr":
            val = m["hdr_val"]
            if _is_reference(val):
                return m["hdr_pre"] + sub_inner(val)
            return m["hdr_pre"] + hit(_classify(val, "authorization"))
        if g == "bearer":
            return m["bearer_pre"] + hit(_classify(m["bearer_val"], "bearer_token"))
        if g == "kv":
            quoted = m["kv_val"]
            inner = quoted[1:-1]
            if not _is_secret_name(m["kv_name"]) or _is_reference(inner):
                return m["kv_pre"] + quoted[0] + sub_inner(inner) + quoted[-1]
            return m["kv_pre"] + quoted[0] + hit(_classify(inner, _name_kind(m["kv_name"]))) + quoted[-1]
        if g == "env":
            val = m["env_val"]
            if not _is_secret_name(m["env_name"]) or _is_reference(val):
                return m["env_pre"] + sub_inner(val)
            return m["env_pre"] + hit(_classify(val, _name_kind(m["env_name"])))
        if g is not None and g in _TOKEN_KINDS:
            return hit(_TOKEN_KINDS[g])
        return m[0]  # pragma: no cover - every alternative is named

    return repl


_MAX_PASSES = 4


def redact(text: str) -> tuple[str, dict[str, int]]:
    """Replace well-known secrets in ``text`` with ``[REDACTED:<type>]``.

    Returns the scrubbed text and how many secrets of each type were replaced (empty when none).
    """
    counts: dict[str, int] = {}
    if not text:
        return text, counts
    repl = _replacer(counts)
    # A replacement can change the context of its neighbours (a multi-line PEM block becomes one
    # line, so a quoted value around it now fits on a line). Re-scan until nothing new is found so
    # that redaction stays idempotent; text without secrets is scanned exactly once.
    for _ in range(_MAX_PASSES):
        found = sum(counts.values())
        text = _PATTERN.sub(repl, text)
        if sum(counts.values()) == found:
            break
    return text, counts


# ---- headers ----------------------------------------------------------------------------------
_SENSITIVE_HEADERS = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "x-api-key",
        "api-key",
        "x-goog-api-key",
        "anthropic-api-key",
        "x-neatlogs-api-key",
        "x-neatlogs-gateway-token",
        "x-auth-token",
        "x-amz-security-token",
    }
)
_SENSITIVE_HEADER_RE = re.compile(r"(?i)api-?key|token|secret|password|credential|cookie")


def _is_sensitive_header(name: str) -> bool:
    low = name.lower()
    return low in _SENSITIVE_HEADERS or bool(_SENSITIVE_HEADER_RE.search(low))


def redact_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """Copy ``headers`` with credential headers masked as ``[REDACTED]``.

    Authorization, Proxy-Authorization, cookies, every ``*api-key*`` header (OpenAI-compatible
    ``api-key``, Anthropic ``x-api-key``, Google ``x-goog-api-key``...), token/secret headers and the
    proxy's own ``x-neatlogs-api-key`` / ``x-neatlogs-gateway-token`` lose their value entirely; other
    values go through :func:`redact`. Names keep their original spelling.
    """
    out: dict[str, str] = {}
    for name, value in headers.items():
        out[name] = PLACEHOLDER if _is_sensitive_header(name) else redact(str(value))[0]
    return out


# ---- URLs ------------------------------------------------------------------------------------
_QUERY_PARAM_RE = re.compile(r"(?P<pre>[?&;](?P<name>[^=&#;?]+)=)(?P<val>[^&#;]*)")
_SECRET_PARAMS = frozenset(
    {"key", "apikey", "api_key", "api-key", "token", "access_token", "auth", "auth_token", "sig",
     "signature", "secret", "client_secret", "password", "x-goog-api-key", "code"}
)  # fmt: skip


def redact_url(url: str) -> str:
    """Mask credentials in a URL: ``?key=`` / ``api_key=`` / ``token=`` (and similar) query values
    become ``[REDACTED]``; a ``user:password@`` userinfo keeps the user and loses the password.
    """
    if not url:
        return url

    def param(m: re.Match[str]) -> str:
        name = m["name"].lower()
        if m["val"] and (name in _SECRET_PARAMS or _is_secret_name(m["name"])):
            return m["pre"] + PLACEHOLDER
        return m[0]

    scrubbed, _ = redact(url)
    head, sep, tail = scrubbed.partition("?")
    if not sep:
        return scrubbed
    return head + _QUERY_PARAM_RE.sub(param, sep + tail)
