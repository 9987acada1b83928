"""Settings from the environment (GRADWATCH_*), validated at start-up: a bad value stops the
server with a message that names the variable, rather than failing later on a request.
"""

from __future__ import annotations

import ipaddress
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from gradwatch.config import memory_budget, parse_size


class SettingsError(ValueError):
    pass


@dataclass
class Settings:
    host: str = "127.0.0.1"  # bind address; loopback by default
    port: int = 8000  # HTTP port (workers on this host connect back to it)
    data_dir: Path = Path("gradwatch-data")  # SQLite store, worker logs, dataset cache
    token: str | None = None  # every route but health and the page shell needs it; made at start if unset
    max_concurrent: int = 2  # worker processes training at once; more runs wait queued
    max_queued: int = 100  # runs waiting beyond that are refused with 429
    max_external: int = 32  # your own loops (external runs) live at once; more are refused with 429
    stop_grace_s: float = 10.0  # a stop request waits this long for the worker before killing it
    reattach_grace_s: float = 15.0  # after a restart, how long a still-running worker has to reconnect
    allowed_hosts: list[str] = field(default_factory=list)  # extra Host names accepted (.example.com: and subdomains)
    allowed_origins: list[str] = field(default_factory=list)  # extra browser origins (https://x:8000) besides our own
    heartbeat_timeout_s: float = 10.0  # a connected worker silent this long is `stalled` (it beats every second)
    stalled_timeout_s: float = 60.0  # a run stalled this long more is `failed`, its worker killed
    idle_note_s: float = 30.0  # a running run with no new step this long says so (its `idle_s`)
    token_generated: bool = False  # True when no token was given and one was made at start
    prefork: bool = True  # fork workers from a process with torch imported (starts runs in ms, not s)
    external_grace_s: float = 600.0  # how long a user's own loop (external run) may stay disconnected
    worker_threads: int = 0  # torch CPU threads per worker; 0 = (cores - 1) / max_concurrent, at least 1
    # GPUs to spread workers over, as CUDA_VISIBLE_DEVICES entries; None = found at start
    # (CUDA_VISIBLE_DEVICES, else /proc/driver/nvidia/gpus). With two or more, each worker gets one.
    gpus: list[str] | None = None
    gpu_memory_fraction: float = 0.0  # each worker's cap on its GPU's memory (0: none), for workers sharing one
    # A run's estimated memory (activations of a batch, weights and optimizer state, data) must fit
    # this, or it is refused with a 422 before any worker starts. Read from GRADWATCH_WORKER_MEMORY by
    # gradwatch.config.memory_budget (which validates runs); half the machine's memory by default.
    worker_memory: int = field(default_factory=memory_budget)
    stop_step_grace_s: float = 2.0  # a stopped worker that reaches no step boundary this long is killed
    run_max_events: int = 2_000_000  # events one run may store; past it the run ends `failed`, saying so
    run_max_bytes: int = 2 * 2**30  # bytes of event JSON one run may store (its ingest token's disk budget)
    max_streams: int = 256  # browser websockets (/api/stream) open at once; more are refused (close 1013)
    max_streams_per_session: int = 32  # ...and per browser session (or per token, for API clients)
    header_timeout_s: float = 10.0  # a connection that has not sent a whole request head this long is closed
    launcher: str = "local"  # where workers run: local (processes here) | ray (actors on RAY_ADDRESS's cluster)
    public_url: str | None = None  # how workers elsewhere reach this server (required with the Ray launcher)
    ray_address: str | None = None  # the Ray cluster (Ray's own RAY_ADDRESS: host:port of its head)
    ray_cpus_per_run: float = 1.0  # CPUs each run's actor asks Ray for (also its torch threads)
    ray_max_runs: int = 256  # runs submitted to Ray at once; the cluster's resources decide how many train

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None, **overrides: object) -> Settings:
        env = dict(os.environ if env is None else env)
        s = cls()
        conv = {
            "host": str, "port": int, "data_dir": Path, "token": str, "max_concurrent": int,
            "max_queued": int, "max_external": int, "stop_grace_s": float, "reattach_grace_s": float,
            "heartbeat_timeout_s": float, "stalled_timeout_s": float, "external_grace_s": float, "idle_note_s": float,
            "worker_threads": int, "gpu_memory_fraction": float, "worker_memory": parse_size,
            "stop_step_grace_s": float, "run_max_events": int, "run_max_bytes": parse_size, "max_streams": int,
            "max_streams_per_session": int, "header_timeout_s": float, "launcher": str, "public_url": str,
            "ray_cpus_per_run": float, "ray_max_runs": int,
        }
        for name, kind in conv.items():
            raw = env.get(f"GRADWATCH_{name.upper()}")
            if raw is None or raw == "":
                continue
            try:
                setattr(s, name, kind(raw))
            except ValueError as e:
                raise SettingsError(f"GRADWATCH_{name.upper()}={raw!r}: {e}") from e
        if env.get("GRADWATCH_PREFORK"):
            raw = env["GRADWATCH_PREFORK"].lower()
            if raw not in ("0", "1", "true", "false", "yes", "no"):
                raise SettingsError(f"GRADWATCH_PREFORK={raw!r}: expected 1/0, true/false or yes/no")
            s.prefork = raw in ("1", "true", "yes")
        if env.get("GRADWATCH_GPUS"):  # empty = not set, as for every GRADWATCH_ variable
            s.gpus = [g.strip() for g in env["GRADWATCH_GPUS"].split(",") if g.strip()]
        elif env.get("CUDA_VISIBLE_DEVICES") is not None:
            s.gpus = [g.strip() for g in env["CUDA_VISIBLE_DEVICES"].split(",") if g.strip() not in ("", "-1")]
        if env.get("RAY_ADDRESS"):
            s.ray_address = env["RAY_ADDRESS"].strip()
        for name in ("allowed_hosts", "allowed_origins"):
            if env.get(f"GRADWATCH_{name.upper()}"):
                setattr(s, name, [h.strip() for h in env[f"GRADWATCH_{name.upper()}"].split(",") if h.strip()])
        for name, value in overrides.items():
            if value is not None:
                setattr(s, name, Path(value) if name == "data_dir" else value)
        s.validate()
        s.ensure_token()
        return s

    def ensure_token(self) -> str:
        """Auth is always on: without GRADWATCH_TOKEN, a random token for this server's life."""
        if self.token is None:
            # Not starting with "-": `--token <it>` on a command line would read as an option.
            self.token = secrets.token_urlsafe(24)
            while self.token.startswith("-"):
                self.token = secrets.token_urlsafe(24)
            self.token_generated = True
        return self.token

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"GRADWATCH_PORT must be 0-65535, got {self.port}")
        if self.max_concurrent < 1:
            raise SettingsError(f"GRADWATCH_MAX_CONCURRENT must be at least 1, got {self.max_concurrent}")
        if self.max_queued < 0:
            raise SettingsError(f"GRADWATCH_MAX_QUEUED must be 0 or more, got {self.max_queued}")
        if self.max_external < 0:
            raise SettingsError(f"GRADWATCH_MAX_EXTERNAL must be 0 or more, got {self.max_external}")
        if self.token is not None and len(self.token) < 8:
            raise SettingsError("GRADWATCH_TOKEN must be at least 8 characters")
        if self.token is None and not self.loopback:
            raise SettingsError(
                f"refusing to listen on {self.host} without GRADWATCH_TOKEN: anyone who can reach this port "
                "could start jobs on this machine. Set GRADWATCH_TOKEN to a long random secret "
                "(e.g. `openssl rand -hex 16`), or listen on 127.0.0.1")
        if self.worker_threads < 0:
            raise SettingsError(f"GRADWATCH_WORKER_THREADS must be 0 (automatic) or more, got {self.worker_threads}")
        if not 0 <= self.gpu_memory_fraction <= 1:
            raise SettingsError("GRADWATCH_GPU_MEMORY_FRACTION must be 0 (no cap) to 1, "
                                f"got {self.gpu_memory_fraction}")
        for name in ("worker_memory", "run_max_events", "run_max_bytes", "max_streams", "max_streams_per_session"):
            if getattr(self, name) < 1:
                raise SettingsError(f"GRADWATCH_{name.upper()} must be at least 1, got {getattr(self, name)}")
        for name in ("heartbeat_timeout_s", "stalled_timeout_s", "external_grace_s", "idle_note_s",
                     "stop_step_grace_s", "header_timeout_s"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"GRADWATCH_{name.upper()} must be more than 0, got {getattr(self, name)}")

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
        if not self.ray_cpus_per_run > 0:
            raise SettingsError(f"GRADWATCH_RAY_CPUS_PER_RUN must be more than 0, got {self.ray_cpus_per_run}")
        if self.ray_max_runs < 1:
            raise SettingsError(f"GRADWATCH_RAY_MAX_RUNS must be at least 1, got {self.ray_max_runs}")

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
