"""Headless runs with a progress bar, for `gradwatch train --depth 8 --batchnorm --steps 300`
(server/cli.py; `python -m gradwatch train ...` is the same command).

Every RunConfig field is a flag; the events are printed as a progress bar and a summary line.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import fields
from typing import Any

from tqdm import tqdm

from .config import CHOICES, DESCRIPTIONS, KINDS, LIMITS, RunConfig
from .diagnosis import verdict


def config_parser(parser: Any) -> Any:
    """Add one flag per RunConfig field (shared with `gradwatch train`): its type, options and help
    (description, bounds, default) as RunConfig declares them."""
    for f in fields(RunConfig):
        flag = "--" + f.name.replace("_", "-")
        limits = f"; {LIMITS[f.name][0]:g} to {LIMITS[f.name][1]:g}" if f.name in LIMITS else ""
        text = f"{DESCRIPTIONS[f.name]} (default: {f.default}{limits})".replace("%", "%%")
        kind = KINDS[f.name]
        if kind == "bool":
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=text)
        else:
            choices = CHOICES.get(f.name)
            parser.add_argument(flag, type={"int": int, "float": float, "str": str}[kind], default=None,
                                choices=choices, help=text,
                                metavar="{" + ",".join(choices) + "}" if choices else kind.upper())
    return parser


def config_from_args(args: argparse.Namespace, base: dict[str, Any] | None = None) -> RunConfig:
    values = dict(base or {})
    for f in fields(RunConfig):
        v = getattr(args, f.name, None)
        if v is not None:
            values[f.name] = v
    return RunConfig.from_dict(values)


def run_headless(cfg: RunConfig, data_dir: str | None = None, emit_also: Any = None,
                 control: Any = None) -> dict[str, Any]:
    """Train cfg here with a progress bar; `emit_also` sees every event, `control` may stop it."""
    from .loop import train  # torch: imported when a run starts, not for `gradwatch --help`

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
        result = train(cfg, emit, control, data_dir=data_dir)
    finally:
        bar.close()
    return result


def format_summary(result: dict[str, Any]) -> str:
    def num(v: Any) -> str:
        return "-" if v is None else f"{v:.4g}"

    line = (f"{result['status']}: {result['step']} steps, loss {num(result['loss'])}, "
            f"accuracy {num(result['accuracy'])}, val accuracy {num(result['val_accuracy'])} "
            f"(best {num(result.get('best_val_accuracy'))}), {result.get('alerts') or 0} alerts, "
            f"{num(result.get('steps_per_s'))} steps/s")
    if verdict(result["status"], result) == "not learning":
        line += " — not learning (validation accuracy near chance)"
    if result.get("reason"):
        line += f" ({result['reason']})"
    return line
