"""`gradwatch serve|train|runs|export|fork` — the console script.

Each command imports what it needs when it runs: `gradwatch --help` and `gradwatch runs` do not
pay for torch or the web server."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

from .lifecycle import ALL
from .settings import Settings, SettingsError

DEFAULT_URL = "http://127.0.0.1:8000"
EPILOG = """\
examples:
  gradwatch serve                                    dashboard on http://127.0.0.1:8000
  gradwatch train --depth 8 --batchnorm --steps 300  a run here, with a progress bar
  gradwatch train --preset explosion --server http://127.0.0.1:8000
                                                     ...also streamed live to the dashboard
  gradwatch runs                                     the server's runs and their status
  gradwatch export 4f2c9a1b --format csv             every step of a run, to a file
  gradwatch fork 4f2c9a1b --step 10 --grad-clip 1    the run again from step 10, with clipping

The server's URL and token come from --server/--token, or GRADWATCH_URL/GRADWATCH_TOKEN."""


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as e:  # the light client alone (pip install gradwatch)
        return _fail(f"serving the dashboard needs the server's packages ({e.name} is missing): "
                     "pip install 'gradwatch[server]'")

    from .app import create_app, private_dir
    from .protocol import websocket_options, with_header_timeout
    from .store import Store, StoreError

    try:
        settings = Settings.from_env(host=args.host, port=args.port, data_dir=args.data_dir)
        settings.check_data_dir()
        private_dir(settings.data_dir)
        store = Store(settings.data_dir / "gradwatch.sqlite3")  # damaged or read-only: one line, exit 2
        if settings.launcher == "ray":  # a wrong or unreachable RAY_ADDRESS: one line now, not a hang
            from .ray_launcher import RayUnavailable, check_address

            try:
                check_address(settings.ray_address)
            except RayUnavailable as e:
                raise SettingsError(str(e)) from None
    except (SettingsError, StoreError) as e:
        print(f"gradwatch: {e}", file=sys.stderr)
        return 2
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "::") else settings.host  # an address a browser can open
    url = f"http://{'[' + host + ']' if ':' in host else host}:{settings.port}/"
    app = create_app(settings, store)
    # A one-time sign-in link: opening it signs the browser in, and what stays in the browser's
    # history is a used code (the token never is in a URL). The token itself is for API clients
    # and for /login, where a person can paste it.
    code = app.state.sessions.link_code(lifetime_s=None)
    token = f"token {settings.token}" if settings.token_generated else "the token in GRADWATCH_TOKEN"
    print(f"gradwatch: serving the dashboard; open {url}login#code={code}  (signs in one browser, once; "
          f"or sign in at {url}login with {token})  (data in {settings.data_dir})", flush=True)
    # One idle limit for a kept-alive connection: the header timeout (10 s), not uvicorn's own 5 s
    # as well. 5 s is also httpx's keep-alive expiry, so a client idle exactly that long sent its
    # next request on a connection the server was closing at that moment ("Server disconnected
    # without sending a response"); a server must keep a connection open longer than its clients do.
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=args.log_level,
                ws_max_size=8 * 1024 * 1024, http=with_header_timeout(settings.header_timeout_s),
                timeout_keep_alive=settings.header_timeout_s, **websocket_options(settings.ws_compression))
    return 0


# ---- train -----------------------------------------------------------------------------

def _presets() -> dict[str, Any] | None:
    """gradwatch.presets.PRESETS (name -> Preset: .config, .title), or None in a version without."""
    try:
        from gradwatch.presets import PRESETS
    except ImportError:
        return None
    return PRESETS


def cmd_train(args: argparse.Namespace) -> int:
    from gradwatch.config import ConfigError
    from gradwatch.headless import config_from_args, format_summary, run_headless

    base: dict[str, Any] = {}
    if args.preset:
        presets = _presets()
        if presets is None:
            return _fail("presets are not in this version of gradwatch (no trainer/presets.py); "
                         "give the config as flags instead")
        if args.preset not in presets:
            return _fail(f"no preset {args.preset!r}; there are: {', '.join(sorted(presets))}")
        preset = presets[args.preset]
        base = dict(preset.config)
        print(f"gradwatch: preset {preset.name}: {preset.title}", file=sys.stderr)
    try:
        cfg = config_from_args(args, base)
    except ConfigError as e:
        return _fail(f"bad config: {e}")

    run = None
    if args.server:
        from gradwatch.external import connect
        from gradwatch.rest import ApiError

        try:
            run = connect(args.server, token=args.token, name=args.name or args.preset, config=cfg.to_dict())
        except (ConnectionError, ApiError) as e:
            return _fail(_explain(e))
        print(f"gradwatch: streaming run {run.id} to {run.url}", file=sys.stderr, flush=True)
    try:
        result = run_headless(cfg, args.data_dir, emit_also=run.emit if run else None,
                              control=run.control if run else None)
    except KeyboardInterrupt:
        if run:
            run.finish("stopped", "interrupted (Ctrl-C)", timeout=10)
        print("gradwatch: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - the run fails with its reason, here and on the server
        if run:
            run.finish("failed", f"{type(e).__name__}: {e}", timeout=10)
        return _fail(f"{type(e).__name__}: {e}")
    print(format_summary(result), flush=True)
    if run and not run.finish(timeout=60):
        return _fail(f"run {run.id}: the server did not store every step ({run.error or 'timed out'})")
    return 0 if result["status"] == "completed" else 1


# ---- runs and export: REST -------------------------------------------------------------

def cmd_runs(args: argparse.Namespace) -> int:
    from gradwatch.rest import ApiError, api_request

    try:
        runs = api_request(args.server, "GET", "/api/runs", args.token)
    except (ConnectionError, ApiError) as e:
        return _fail(_explain(e))
    if args.status:
        runs = [r for r in runs if r["status"] in args.status]
    if args.json:
        import orjson

        sys.stdout.buffer.write(orjson.dumps(runs, option=orjson.OPT_INDENT_2) + b"\n")
        return 0
    if not runs:
        print("no runs" + (f" with status {', '.join(args.status)}" if args.status else ""))
        return 0
    from gradwatch.diagnosis import verdict

    rows = [("ID", "NAME", "STATUS", "KIND", "STEP", "LOSS", "BEST", "ALERTS", "CREATED", "NOTE")]
    for r in runs:
        s = r.get("summary") or {}
        steps = r["config"].get("steps")
        step = f"{s.get('step', 0)}/{steps}" if isinstance(steps, int) else str(s.get("step", 0))
        loss = "-" if s.get("loss") is None else f"{s['loss']:.4g}"
        best = "-" if s.get("best_val_accuracy") is None else f"{s['best_val_accuracy']:.1%}"
        created = time.strftime("%Y-%m-%d %H:%M", time.localtime(r["created"]))
        rows.append((r["id"], r["name"][:30], r["status"], r.get("kind", "local"), step, loss, best,
                     str(s.get("alerts") or 0), created, verdict(r["status"], s)))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from gradwatch.rest import ApiError, api_request

    path = f"/api/runs/{quote(args.run, safe='')}/export?format={args.format}"
    try:
        body = api_request(args.server, "GET", path, args.token, timeout=120, raw=True)
    except (ConnectionError, ApiError) as e:
        return _fail(_explain(e))
    if args.out == "-":
        sys.stdout.buffer.write(body)
        return 0
    out = Path(args.out or f"gradwatch-{args.run}.{args.format}")
    out.write_bytes(body)
    print(f"gradwatch: wrote run {args.run} ({len(body):,} bytes of {args.format}) to {out}", file=sys.stderr)
    return 0


def fork_flags() -> dict[str, type]:
    """Flags of `gradwatch fork`: the fields a fork may change (trainer/checkpoint.py), typed as RunConfig's."""
    from gradwatch.checkpoint import FORK_FIELDS
    from gradwatch.config import KINDS

    kinds = {"int": int, "float": float}
    return {name: kinds[kind] for name, kind in KINDS.items() if name in FORK_FIELDS}


def cmd_fork(args: argparse.Namespace) -> int:
    from urllib.parse import quote

    from gradwatch.rest import ApiError, api_request

    changes = {k: getattr(args, k) for k in fork_flags() if getattr(args, k) is not None}
    body: dict[str, Any] = {"step": args.step, "changes": changes}
    if args.name:
        body["name"] = args.name
    try:
        run = api_request(args.server, "POST", f"/api/runs/{quote(args.run, safe='')}/fork", args.token, body=body)
    except (ConnectionError, ApiError) as e:
        detail = getattr(e, "detail", None)
        if isinstance(detail, list) and detail and isinstance(detail[0], dict):  # a 422: the field and why
            return _fail("; ".join(f"--{str(d['loc'][-1]).replace('_', '-')}: {d['msg']}" for d in detail))
        return _fail(_explain(e))
    fork = run["fork"]
    what = ", ".join(f"{k} {v}" for k, v in changes.items()) or "no changes"
    print(f"{run['id']}\tforked from run {fork['parent']} at step {fork['step']} "
          f"(asked {fork['asked']}), {what}; queued")
    return 0


def _explain(e: Exception) -> str:
    status = getattr(e, "status", None)
    if status == 401:
        return f"{e}\n  the server needs its token: pass --token or set GRADWATCH_TOKEN"
    from gradwatch.rest import AnswerCutOff

    if isinstance(e, ConnectionError) and not isinstance(e, AnswerCutOff):  # a cut answer: it is running
        return f"{e}\n  is `gradwatch serve` running there? (--server URL or GRADWATCH_URL)"
    return str(e)


def _fail(message: str) -> int:
    print(f"gradwatch: {message}", file=sys.stderr)
    return 2


# ---- the parser ------------------------------------------------------------------------

def _server_flags(p: argparse.ArgumentParser, default: str | None) -> None:
    where = f"(default: $GRADWATCH_URL or {default})" if default else "(default: train here only)"
    p.add_argument("--server", metavar="URL", default=os.environ.get("GRADWATCH_URL", default) if default else None,
                   help=f"the gradwatch server {where}")
    p.add_argument("--token", default=os.environ.get("GRADWATCH_TOKEN") or None,
                   help="the server's GRADWATCH_TOKEN (default: $GRADWATCH_TOKEN)")


def build_parser() -> argparse.ArgumentParser:
    from gradwatch.headless import config_parser

    ap = argparse.ArgumentParser(prog="gradwatch", description="Live per-layer training diagnostics for PyTorch.",
                                 epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = sub.add_parser("serve", help="serve the dashboard and API",
                           description="Serve the dashboard and the API; runs train in worker processes.")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1, or GRADWATCH_HOST)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000, or GRADWATCH_PORT)")
    serve.add_argument("--data-dir", default=None, help="store, logs, datasets (default ./gradwatch-data)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)

    presets = _presets()
    names = f": {', '.join(presets)}" if presets else " (none in this version)"
    train = sub.add_parser(
        "train", help="train one run here, with a progress bar",
        description="Train one run in this process, with a progress bar and a summary at the end. "
                    "The config comes from a preset, then the flags (a flag overrides the preset). "
                    "With --server the run also streams live to that dashboard, as an external run "
                    "its Stop button can stop.")
    train.add_argument("--preset", metavar="NAME", help=f"start from a named config{names}")
    train.add_argument("--name", help="the run's name in the dashboard (default: the preset, or the run id)")
    train.add_argument("--data-dir", metavar="DIR", default=str(Path("gradwatch-data") / "datasets"),
                       help="where downloaded datasets are cached (default: gradwatch-data/datasets, "
                            "the server's cache)")
    _server_flags(train, None)
    config_parser(train.add_argument_group("run config (RunConfig fields; see README)"))
    train.set_defaults(func=cmd_train)

    runs = sub.add_parser("runs", help="list the server's runs with their status",
                          description="List the server's runs, newest first.")
    _server_flags(runs, DEFAULT_URL)
    runs.add_argument("--status", action="append",
                      choices=ALL,
                      help="only runs with this status (repeat for several)")
    runs.add_argument("--json", action="store_true", help="print the runs as JSON (as GET /api/runs)")
    runs.set_defaults(func=cmd_runs)

    fork = sub.add_parser("fork", help="fork a run from a step, with other settings",
                          description="Start a new run from RUN's newest checkpoint at or before --step, "
                                      "with the settings given as flags changed (only those a running "
                                      "run can change); prints the new run's id. Without flags it "
                                      "repeats RUN from there (bit for bit on the CPU).")
    fork.add_argument("run", metavar="RUN", help="the run id (see `gradwatch runs`)")
    fork.add_argument("--step", type=int, required=True, help="the step to fork at (the checkpoint at or before it)")
    fork.add_argument("--name", help="the fork's name (default: the parent's, the step and the changes)")
    from gradwatch.config import DESCRIPTIONS

    for field, kind in fork_flags().items():
        fork.add_argument(f"--{field.replace('_', '-')}", dest=field, type=kind, default=None,
                          help=f"{DESCRIPTIONS[field]} (default: the parent's at the fork step)".replace("%", "%%"))
    _server_flags(fork, DEFAULT_URL)
    fork.set_defaults(func=cmd_fork)

    export = sub.add_parser("export", help="download every step of a run as CSV or JSON",
                            description="Download every stored step of a run: csv has one row per step "
                                        "(per-layer columns named STAT:LAYER); json has everything, "
                                        "the run, its layers, the columnar metrics and its events.")
    export.add_argument("run", metavar="RUN", help="the run id (see `gradwatch runs`)")
    export.add_argument("--format", choices=["csv", "json"], default="csv", help="file format (default: csv)")
    export.add_argument("--out", metavar="FILE", help="where to write it; - for stdout (default: gradwatch-RUN.FORMAT)")
    _server_flags(export, DEFAULT_URL)
    export.set_defaults(func=cmd_export)
    return ap


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
