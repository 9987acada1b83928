"""Settings from the environment (GRADWATCH_*), validated at start-up: a bad value stops the
server with a message that names the variable, rather than failing later on a request.

pydantic-settings reads them: every field below is the variable GRADWATCH_<FIELD> (RAY_ADDRESS
for `ray_address`), typed and bounded by its annotation; an empty variable counts as unset;
lists are comma-separated. `Settings(...)` itself reads nothing from the environment (tests build
one from arguments); `Settings.from_env()` does, once, at start.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from gradwatch.config import memory_budget, parse_size
from pydantic import AliasChoices, Field, PrivateAttr, ValidationError, field_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings.sources.utils import parse_env_vars


class SettingsError(ValueError):
    pass


Seconds = Annotated[float, Field(gt=0)]
Names = Annotated[list[str], NoDecode]  # GRADWATCH_ALLOWED_HOSTS=a.example.com,.b.example: comma-separated


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="GRADWATCH_", env_ignore_empty=True, populate_by_name=True)

    host: str = "127.0.0.1"  # bind address; loopback by default
    port: int = Field(8000, ge=0, le=65535)  # HTTP port (workers on this host connect back to it)
    data_dir: Path = Path("gradwatch-data")  # SQLite store, worker logs, dataset cache
    token: str | None = None  # every route but health and the page shell needs it; made at start if unset
    max_concurrent: int = Field(2, ge=1)  # worker processes training at once; more runs wait queued
    max_queued: int = Field(100, ge=0)  # runs waiting beyond that are refused with 429
    max_external: int = Field(32, ge=0)  # your own loops (external runs) live at once; more are refused with 429
    stop_grace_s: float = 10.0  # a stop request waits this long for the worker before killing it
    reattach_grace_s: float = 15.0  # after a restart, how long a still-running worker has to reconnect
    allowed_hosts: Names = []  # extra Host names accepted (.example.com: and subdomains)
    allowed_origins: Names = []  # extra browser origins (https://x:8000) besides our own
    heartbeat_timeout_s: Seconds = 10.0  # a connected worker silent this long is `stalled` (it beats every second)
    stalled_timeout_s: Seconds = 60.0  # a run stalled this long more is `failed`, its worker killed
    idle_note_s: Seconds = 30.0  # a running run with no new step this long says so (its `idle_s`)
    prefork: bool = True  # fork workers from a process with torch imported (starts runs in ms, not s)
    external_grace_s: Seconds = 600.0  # how long a user's own loop (external run) may stay disconnected
    worker_threads: int = Field(0, ge=0)  # torch CPU threads per worker; 0 = (cores - 1) / max_concurrent, at least 1
    # GPUs to spread workers over, as CUDA_VISIBLE_DEVICES entries; None = found at start
    # (CUDA_VISIBLE_DEVICES, else /proc/driver/nvidia/gpus). With two or more, each worker gets one.
    gpus: Annotated[list[str] | None, NoDecode] = None
    gpu_memory_fraction: float = Field(0.0, ge=0, le=1)  # each worker's cap on its GPU's memory (0: none)
    # A run's estimated memory (activations of a batch, weights and optimizer state, data) must fit
    # this, or it is refused with a 422 before any worker starts. Read from GRADWATCH_WORKER_MEMORY by
    # gradwatch.config.memory_budget (which validates runs); half the machine's memory by default.
    worker_memory: int = Field(default_factory=memory_budget, ge=1)
    stop_step_grace_s: Seconds = 2.0  # a stopped worker that reaches no step boundary this long is killed
    run_max_events: int = Field(2_000_000, ge=1)  # events one run may store; past it the run ends `failed`
    run_max_bytes: int = Field(2 * 2**30, ge=1)  # bytes of event JSON one run may store (`2G` works)
    max_streams: int = Field(256, ge=1)  # browser websockets (/api/stream) open at once; more are refused (1013)
    max_streams_per_session: int = Field(32, ge=1)  # ...and per browser session (or per token, for API clients)
    header_timeout_s: Seconds = 10.0  # a connection (idle too) that sends no whole request head this long is closed
    # Websocket permessage-deflate: auto = offered to peers off this machine only (on loopback it is
    # CPU spent for nothing: the server's deflate was a quarter of its time with ten local pages open).
    ws_compression: Literal["auto", "on", "off"] = "auto"
    launcher: str = "local"  # where workers run: local (processes here) | ray (actors on RAY_ADDRESS's cluster)
    public_url: str | None = None  # how workers elsewhere reach this server (required with the Ray launcher)
    # The Ray cluster: Ray's own RAY_ADDRESS (host:port of its head), not a GRADWATCH_ variable.
    ray_address: str | None = Field(None, validation_alias=AliasChoices("ray_address", "RAY_ADDRESS"))
    ray_cpus_per_run: float = Field(1.0, gt=0)  # CPUs each run's actor asks Ray for (also its torch threads)
    ray_max_runs: int = Field(256, ge=1)  # runs submitted to Ray at once; the cluster's resources decide how many train
    _token_generated: bool = PrivateAttr(False)  # no token was given and one was made at start

    @field_validator("allowed_hosts", "allowed_origins", "gpus", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        return [v.strip() for v in value.split(",") if v.strip()] if isinstance(value, str) else value

    @field_validator("worker_memory", "run_max_bytes", mode="before")
    @classmethod
    def _size(cls, value: Any) -> Any:
        return parse_size(value) if isinstance(value, str) else value  # 8G, 512M or bytes

    @field_validator("ray_address", mode="before")
    @classmethod
    def _strip(cls, value: Any) -> Any:
        return value.strip() if isinstance(value, str) else value

    @classmethod
    def settings_customise_sources(cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
                                   **sources: PydanticBaseSettingsSource) -> tuple[PydanticBaseSettingsSource, ...]:
        return (init_settings,)  # the environment only through from_env, which names the variable in errors

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **overrides: object) -> Settings:
        """The settings from `env` (os.environ by default), then `overrides` that are not None (the
        CLI's --host, --port, --data-dir); validated, with a token. A bad value is a SettingsError
        naming the variable (or flag) and why."""
        env = dict(os.environ if env is None else env)
        given = dict(_Environment(cls, env)())
        if "gpus" not in given and env.get("CUDA_VISIBLE_DEVICES") is not None:  # the server's own visible set
            given["gpus"] = [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() not in ("", "-1")]
        flags = {name: value for name, value in overrides.items() if value is not None}
        try:
            s = cls(**{**given, **flags})
        except ValidationError as e:
            raise SettingsError("; ".join(_explain(err, flags) for err in e.errors())) from None
        s.validate()
        s.ensure_token()
        return s

    @property
    def token_generated(self) -> bool:
        return self._token_generated

    def ensure_token(self) -> str:
        """Auth is always on: without GRADWATCH_TOKEN, a random token for this server's life."""
        if self.token is None:
            # Not starting with "-": `--token <it>` on a command line would read as an option.
            self.token = secrets.token_urlsafe(24)
            while self.token.startswith("-"):
                self.token = secrets.token_urlsafe(24)
            self._token_generated = True
        return self.token

    def validate(self) -> None:
        """What the annotations cannot say: the token, the launcher and the URLs."""
        if self.token is not None and len(self.token) < 8:
            raise SettingsError("GRADWATCH_TOKEN must be at least 8 characters")
        if self.token is None and not self.loopback:
            raise SettingsError(
                f"refusing to listen on {self.host} without GRADWATCH_TOKEN: anyone who can reach this port "
                "could start jobs on this machine. Set GRADWATCH_TOKEN to a long random secret "
                "(e.g. `openssl rand -hex 16`), or listen on 127.0.0.1")
        if self.launcher not in ("local", "ray"):
            raise SettingsError(f"GRADWATCH_LAUNCHER must be local or ray, got {self.launcher!r}")
        if self.public_url is not None:
            url = urlsplit(self.public_url)
            if url.scheme not in ("http", "https") or not url.hostname or url.path not in ("", "/") \
                    or url.query or url.username:
                raise SettingsError(f"GRADWATCH_PUBLIC_URL must be http(s)://host[:port] (how workers reach this "
                                    f"server, e.g. https://gradwatch.example.com), got {self.public_url!r}")
        if self.launcher == "ray":
            if self.public_url is None:
                raise SettingsError("GRADWATCH_LAUNCHER=ray needs GRADWATCH_PUBLIC_URL: the URL at which workers "
                                    "on the Ray cluster's nodes reach this server (docs/scale-out.md)")
            if not self.ray_address:
                raise SettingsError("GRADWATCH_LAUNCHER=ray needs RAY_ADDRESS: the Ray head's host:port "
                                    "(e.g. ray-head:6379)")

    def check_data_dir(self) -> None:
        """The data dir exists (or can be made) and takes a write: else a clear SettingsError now,
        not a traceback from deep inside the first request."""
        probe = self.data_dir / ".gradwatch-write-test"
        try:
            self.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # private: see app.private_dir
            probe.write_bytes(b"ok")
            probe.unlink()
        except OSError as e:
            raise SettingsError(f"data dir {self.data_dir} is not writable ({e.strerror or e}): "
                                "choose another with --data-dir or GRADWATCH_DATA_DIR") from e

    @property
    def loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False

    @property
    def worker_url(self) -> str:
        """Where the launcher's workers reach the server: the public URL when set, else this machine's."""
        return self.public_url.rstrip("/") if self.public_url else self.self_url

    @property
    def self_url(self) -> str:
        """Where workers on this machine reach the server."""
        host = self.host if self.loopback else "127.0.0.1"
        if ":" in host:
            host = f"[{host}]"
        return f"http://{host}:{self.port}"


class _Environment(EnvSettingsSource):
    """pydantic-settings' reader of environment variables (prefix, empty = unset, types) over a
    given mapping: os.environ, or a test's."""

    def __init__(self, settings_cls: type[BaseSettings], env: Mapping[str, str]) -> None:
        self._env = env
        super().__init__(settings_cls)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return parse_env_vars(self._env, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)


def _explain(err: Any, flags: Mapping[str, object]) -> str:
    """One validation error as `GRADWATCH_PORT='x': the reason` (or `--port`, given as a flag); a
    token's value is never repeated."""
    name = str(err["loc"][0]) if err["loc"] else ""
    if name in flags:
        where = "--" + name.replace("_", "-")
    else:
        where = "RAY_ADDRESS" if name.lower() == "ray_address" else f"GRADWATCH_{name.upper()}"
    shown = "" if name == "token" else f"={err['input']!r}"
    reason = err["msg"].removeprefix("Value error, ")
    return f"{where}{shown}: {reason}"
