"""Each thing said once (issue 17): the run config is RunConfig's (trainer/config.py) and the run
statuses are server/lifecycle.py's. Everything that shows or takes them must agree with those:
the served schema the page builds its launch form from, the form's static shell, the CLI's flags,
README's table, and the page's status list. In-process only (httpx.ASGITransport, no server
process, no browser): a second or so."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from dataclasses import fields
from typing import Any

import httpx
import pytest
from gradwatch.config import CHOICES, DESCRIPTIONS, KINDS, LIMITS, RunConfig, markdown_table
from gradwatch.server import cli
from gradwatch.server.app import create_app
from gradwatch.server.lifecycle import ACTIVE, ALL, LIVE, TERMINAL
from gradwatch.server.settings import Settings

from ..conftest import ROOT
from .test_js_units import node_or_skip

TOKEN = "config-source-token"
JSON_TYPES = {"bool": "boolean", "int": "integer", "float": "number", "str": "string"}


def served(tmp_path: Any, *paths: str) -> list[Any]:
    """GET each path from the app in this process (its lifespan opens a store in tmp_path)."""
    app = create_app(Settings(data_dir=tmp_path, token=TOKEN))

    async def get() -> list[Any]:
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1:8000",
                                         headers={"Authorization": f"Bearer {TOKEN}"}) as client:
                answers = [await client.get(p) for p in paths]
        for r in answers:
            assert r.status_code == 200, r.text
        return [r.json() for r in answers]

    return asyncio.run(get())


@pytest.fixture(scope="module")
def answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    schema, statuses = served(tmp_path_factory.mktemp("config-source"), "/api/config-schema", "/api/statuses")
    return {"schema": schema, "statuses": statuses}


def test_the_served_schema_is_runconfig(answers: dict[str, Any]) -> None:
    props = answers["schema"]["properties"]
    assert list(props) == [f.name for f in fields(RunConfig)], "every field, in RunConfig's order"
    for f in fields(RunConfig):
        p = props[f.name]
        assert p["default"] == f.default and type(p["default"]) is type(f.default), f.name
        assert p["description"] == DESCRIPTIONS[f.name] and p["type"] == JSON_TYPES[KINDS[f.name]], f.name
        assert tuple(p.get("enum", ())) == CHOICES.get(f.name, ()), f.name
        assert (p.get("minimum"), p.get("maximum")) == LIMITS.get(f.name, (None, None)), f.name
    assert answers["schema"]["additionalProperties"] is False


def test_the_form_is_built_from_the_schema_not_typed_out() -> None:
    html = (ROOT / "frontend" / "index.html").read_text()
    launch = re.search(r'<form id="launch".*?</form>', html, re.S).group(0)
    # The launch form's shell names no RunConfig field but where it goes: its only input is the run's name.
    assert re.findall(r'\bname="(\w+)"', launch) == ["name"], "index.html types out a config field"
    slots = re.findall(r'data-fields="([^"]*)"', launch)
    assert "*" in slots and all(n in KINDS for s in slots if s != "*" for n in s.split()), slots
    # The live-change form takes its bounds from the schema too (form.js applyBounds).
    live = re.search(r'<form class="live".*?</form>', html, re.S).group(0)
    assert not re.search(r"\b(min|max)=", live), "the live-change form types out a bound"


def test_the_form_reads_every_field_of_the_schema(answers: dict[str, Any]) -> None:
    """form.js's fieldSpecs, run under node on the served schema: each input gets the field's
    kind, default, options and bounds."""
    script = ("import { fieldSpecs } from './frontend/js/form.js';\n"
              "let s = ''; process.stdin.on('data', d => { s += d; });\n"
              "process.stdin.on('end', () => console.log(JSON.stringify(fieldSpecs(JSON.parse(s)))));")
    out = subprocess.run([node_or_skip(), "--input-type=module", "-e", script], cwd=ROOT, capture_output=True,
                         text=True, timeout=30, input=json.dumps(answers["schema"]))
    assert out.returncode == 0, out.stderr
    specs = {s["name"]: s for s in json.loads(out.stdout)}
    assert list(specs) == [f.name for f in fields(RunConfig)]
    kinds = {"bool": "bool", "int": "int", "float": "number", "str": "choice"}
    for f in fields(RunConfig):
        s = specs[f.name]
        assert s["kind"] == kinds[KINDS[f.name]] and s["default"] == f.default, f.name
        assert tuple(s["options"] or ()) == CHOICES.get(f.name, ()), f.name
        assert (s["min"], s["max"]) == LIMITS.get(f.name, (None, None)), f.name
        assert s["step"] == ("1" if KINDS[f.name] == "int" else "any"), f.name
        assert s["description"] == DESCRIPTIONS[f.name], f.name


def subcommand(name: str) -> Any:
    return cli.build_parser()._subparsers._group_actions[0].choices[name]


def test_the_cli_flags_are_runconfig() -> None:
    actions = {a.dest: a for a in subcommand("train")._actions}
    for f in fields(RunConfig):
        a = actions[f.name]
        assert a.option_strings[0] == "--" + f.name.replace("_", "-"), f.name
        assert DESCRIPTIONS[f.name].replace("%", "%%") in a.help and f"default: {f.default}" in a.help, f.name
        if f.name in LIMITS:
            lo, hi = LIMITS[f.name]
            assert f"{lo:g} to {hi:g}" in a.help, f.name
        assert tuple(a.choices or ()) == CHOICES.get(f.name, ()), f.name
        if KINDS[f.name] == "bool":
            assert "--no-" + f.name.replace("_", "-") in a.option_strings, f.name
        else:
            assert a.type is {"int": int, "float": float, "str": str}[KINDS[f.name]], f.name
    # `gradwatch fork`'s flags are the fields a fork may change, typed and helped the same way
    from gradwatch.checkpoint import FORK_FIELDS

    fork = {a.dest: a for a in subcommand("fork")._actions}
    for name in FORK_FIELDS:
        assert fork[name].type is {"int": int, "float": float}[KINDS[name]], name
        assert DESCRIPTIONS[name].replace("%", "%%") in fork[name].help, name
    # `gradwatch train --lr 0.1 --batchnorm` reads into the config as typed
    args = subcommand("train").parse_args(["--lr", "0.1", "--batchnorm", "--model", "cnn"])
    from gradwatch.headless import config_from_args

    cfg = config_from_args(args)
    assert (cfg.lr, cfg.batchnorm, cfg.model, cfg.depth) == (0.1, True, "cnn", RunConfig().depth)


def test_the_readme_table_is_runconfigs() -> None:
    readme = (ROOT / "README.md").read_text()
    table = re.search(r"<!-- config-table:[^\n]*-->\n(.*?)<!-- end config-table -->", readme, re.S)
    assert table, "README.md lost its generated config table"
    assert table.group(1) == markdown_table(), "README's config table is stale: python -m gradwatch.config"
    rows = re.findall(r"^\| `(\w+)` \|", table.group(1), re.M)
    assert rows == [f.name for f in fields(RunConfig)]


def test_the_statuses_are_lifecycles_everywhere(answers: dict[str, Any]) -> None:
    runs = {a.dest: a for a in subcommand("runs")._actions}["status"]
    assert tuple(runs.choices) == ALL and "stalled" in runs.choices
    assert subcommand("runs").parse_args(["--status", "stalled"]).status == ["stalled"]
    got = answers["statuses"]  # what frontend/js/statuses.js loads
    assert got["all"] == list(ALL) and got["active"] == list(ACTIVE) and got["live"] == list(LIVE)
    assert set(got["terminal"]) == {s.value for s in TERMINAL}
    src = (ROOT / "frontend" / "js" / "statuses.js").read_text()
    assert "api.statuses()" in src and set(re.findall(r"\b(\w+): new Set\(\)", src)) == {
        "all", "active", "live", "terminal"}
