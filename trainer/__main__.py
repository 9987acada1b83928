"""Headless run with a progress bar: `python -m trainer --depth 8 --batchnorm --steps 300`.

Every RunConfig field is a flag; the events are printed as a progress bar and a summary line.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any

from tqdm import tqdm

from .config import CHOICES, ConfigError, RunConfig
from .loop import train


def config_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Add one flag per RunConfig field (shared with `gradwatch train`)."""
    defaults = RunConfig()
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        default = getattr(defaults, f.name)
        if f.type == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                                help=f"(default: {default})")
        else:
            kind = {"int": int, "float": float, "str": str}[f.type]
            parser.add_argument(flag, type=kind, default=None, choices=CHOICES.get(f.name),
                                help=f"(default: {default})")
    return parser


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> RunConfig:
    values = dict(base or {})
    for f in fields(RunConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return RunConfig.from_dict(values)


def run_headless(cfg: RunConfig, data_dir: str | None = None, emit_also: Any = None) -> dict[str, Any]:
    bar = tqdm(total=cfg.steps, unit="step", dynamic_ncols=True, file=sys.stderr)

    def emit(event: dict[str, Any]) -> None:
        if emit_also is not None:
            emit_also(event)
        if event["type"] == "metrics":
            bar.update(event["step"] - bar.n)
            bar.set_postfix(loss=f"{event['loss']:.4g}", gnorm=f"{event['global_grad_norm']:.3g}", refresh=False)
        elif event["type"] == "alert":
            bar.write(f"alert at step {event['step']}: {event['message']}")

    try:
        result = train(cfg, emit, data_dir=data_dir)
    finally:
        bar.close()
    return result


def format_summary(result: dict[str, Any]) -> str:
    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}"

    line = (f"{result['status']}: {result['step']} steps, loss {num(result['loss'])}, "
            f"accuracy {num(result['accuracy'])}, val accuracy {num(result['val_accuracy'])}, "
            f"{num(result.get('steps_per_s'))} steps/s")
    if result.get("reason"):
        line += f" ({result['reason']})"
    return line


def main(argv: list[str] | None = None) -> int:
    ap = config_parser(argparse.ArgumentParser(prog="python -m trainer", description=__doc__))
    ap.add_argument("--data-dir", default="data", help="where torchvision datasets are cached")
    args = ap.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as e:
        ap.error(str(e))
    result = run_headless(cfg, args.data_dir)
    print(format_summary(result))
    return 0 if result["status"] == "completed" else 1


if __name__ == "__main__":
    sys.exit(main())
