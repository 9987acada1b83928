"""`gradwatch serve|train|runs|export` — the console script."""

from __future__ import annotations

import argparse
import sys

from .settings import Settings, SettingsError


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from .app import create_app

    try:
        settings = Settings.from_env(host=args.host, port=args.port, data_dir=args.data_dir)
    except SettingsError as e:
        print(f"gradwatch: {e}", file=sys.stderr)
        return 2
    url = f"http://{'[' + settings.host + ']' if ':' in settings.host else settings.host}:{settings.port}/"
    if settings.token:
        url += f"?token={settings.token}"
    print(f"gradwatch: serving the dashboard on {url}  (data in {settings.data_dir})", flush=True)
    uvicorn.run(create_app(settings), host=settings.host, port=settings.port, log_level=args.log_level,
                ws_max_size=8 * 1024 * 1024)
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gradwatch", description="Live per-layer training diagnostics.")
    sub = ap.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="serve the dashboard and API")
    serve.add_argument("--host", default=None, help="bind address (default 127.0.0.1, or GRADWATCH_HOST)")
    serve.add_argument("--port", type=int, default=None, help="port (default 8000, or GRADWATCH_PORT)")
    serve.add_argument("--data-dir", default=None, help="store, logs, datasets (default ./gradwatch-data)")
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.set_defaults(func=cmd_serve)
    args = ap.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
