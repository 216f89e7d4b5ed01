"""Settings from the environment (pydantic-settings), overridable by CLI flags."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Literal

from cryptography import x509
from pydantic import AliasChoices, Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_ENDPOINT = "https://ingest.neatlogs.com"


def default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or os.path.join(os.path.expanduser("~"), ".local", "share")
    return Path(base) / "neatlogs-proxy"


def _csv(value: object) -> object:
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    return value


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="NEATLOGS_PROXY_", extra="ignore", populate_by_name=True)

    # Neatlogs destination: the same names the official plugin reads.
    api_key: str | None = Field(None, validation_alias=AliasChoices("NEATLOGS_API_KEY"), repr=False)
    endpoint: str = Field(DEFAULT_ENDPOINT, validation_alias=AliasChoices("NEATLOGS_ENDPOINT"))
    workflow_name: str = Field("opencode", validation_alias=AliasChoices("NEATLOGS_WORKFLOW_NAME"))
    capture_system_prompt: bool = Field(
        False, validation_alias=AliasChoices("NEATLOGS_CAPTURE_SYSTEM_PROMPT")
    )

    host: str = "127.0.0.1"
    port: int = Field(8787, ge=0, le=65535)
    routes: Annotated[list[str], NoDecode] = Field(default_factory=list)
    data_dir: Path = Field(default_factory=default_data_dir)
    idle_timeout: float = Field(5.0, gt=0, description="quiet seconds that end a turn without the plugin")
    max_attribute_bytes: int = Field(64 * 1024, ge=256)
    max_capture_bytes: int = Field(16 * 1024 * 1024, ge=1024)
    spool_max_bytes: int = Field(256 * 1024 * 1024, ge=1024 * 1024)
    auth_tokens: Annotated[list[str], NoDecode] = Field(default_factory=list, repr=False)
    auth_token_file: Path | None = None
    upstream_ca: Path | None = Field(None, description="extra CA certificates (PEM) trusted for upstream HTTPS")
    http_layer: Literal["fast", "mitmproxy"] = Field(
        "fast", description="fast: the proxy's lean HTTP/1.1 layer; mitmproxy: mitmproxy's own HTTP layer")
    redact: bool = True
    log_format: Literal["text", "json"] = "text"
    log_level: str = "info"
    export_timeout: float = Field(10.0, gt=0)
    shutdown_timeout: float = Field(10.0, ge=0)

    @field_validator("routes", "auth_tokens", mode="before")
    @classmethod
    def _split(cls, v: object) -> object:
        return _csv(v)

    @field_validator("endpoint")
    @classmethod
    def _endpoint(cls, v: str) -> str:
        v = v.strip().rstrip("/")
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"NEATLOGS_ENDPOINT must be an http(s) URL, got {v!r}")
        return v

    @field_validator("upstream_ca")
    @classmethod
    def _upstream_ca(cls, v: Path | None) -> Path | None:
        """Fail at start-up, not at the first request: the file must hold at least one PEM certificate."""
        if v is None:
            return None
        try:
            data = v.read_bytes()
        except OSError as exc:
            raise ValueError(f"upstream CA file {str(v)!r}: {exc.strerror or exc}") from None
        try:
            x509.load_pem_x509_certificates(data)
        except ValueError:
            raise ValueError(f"upstream CA file {str(v)!r} holds no PEM certificate") from None
        return v

    @field_validator("api_key")
    @classmethod
    def _key(cls, v: str | None) -> str | None:
        return (v or "").strip() or None

    @property
    def traces_url(self) -> str:
        return f"{self.endpoint}/v1/traces"

    def all_auth_tokens(self) -> list[str]:
        tokens = list(self.auth_tokens)
        if self.auth_token_file:
            text = self.auth_token_file.read_text()
            tokens += [t.strip() for t in text.splitlines() if t.strip() and not t.startswith("#")]
        return tokens
