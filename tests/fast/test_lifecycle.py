"""The run lifecycle's fast layer (issue 12): the transitions table-tested against a real store,
the job manager with a fake launcher (no processes), liveness with a fake clock. No server, no
worker: each test takes milliseconds."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from gradwatch.events import TERMINAL as WIRE_TERMINAL
from gradwatch.server.hub import Hub
from gradwatch.server.jobs import JobManager
from gradwatch.server.lifecycle import ALL, TERMINAL, TRANSITIONS, IllegalTransition, Lifecycle, Status
from gradwatch.server.liveness import Liveness
from gradwatch.server.settings import Settings
from gradwatch.server.store import Store

from ..conftest import ROOT
from .fakes import FakeLauncher


class RecordingHub:
    """The hub's one method the lifecycle uses; keeps what was published."""

    def __init__(self) -> None:
        self.messages: list[dict[str, Any]] = []

    def publish(self, run_id: str, message: dict[str, Any]) -> None:
        self.messages.append(message)

    def statuses(self, run_id: str) -> list[str]:
        return [m["run"]["status"] for m in self.messages if m["type"] == "run.update" and m["run_id"] == run_id]


def new_run(store: Store, status: str, run_id: str = "r1", kind: str = "local") -> str:
    store.create_run({"id": run_id, "name": run_id, "status": status, "config": {}, "created": time.time(),
                      "token": "x", "kind": kind, "summary": {}})
    return run_id


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "gw.sqlite3")
    yield s
    s.close()


@pytest.fixture(scope="module")
def shared_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    s = Store(tmp_path_factory.mktemp("lifecycle") / "gw.sqlite3")
    yield s
    s.close()


# ---- the table -------------------------------------------------------------------------------


@pytest.mark.parametrize(("frm", "to"), list(itertools.product(Status, Status)))
def test_transition_follows_the_table(shared_store: Store, frm: Status, to: Status) -> None:
    store = shared_store
    hub = RecordingHub()
    freed: list[int] = []
    life = Lifecycle(store, hub, on_slot_free=lambda: freed.append(1))
    run_id = new_run(store, frm.value, f"{frm.value}-{to.value}")
    if frm == to:  # already there: nothing written, nothing said
        assert life.transition(run_id, to)["status"] == frm
        assert hub.messages == []
    elif (frm, to) in TRANSITIONS:
        run = life.transition(run_id, to, "because")
        assert run["status"] == to and store.get_run(run_id)["status"] == to
        assert hub.statuses(run_id) == [to]
        if to in TERMINAL:
            assert run["error"] == "because" and run["finished"] is not None
            assert freed  # its slot is free
        if to is Status.QUEUED:
            assert run["started"] is None and freed  # back in the queue: the scheduler looks again
        if (frm, to) == (Status.QUEUED, Status.RUNNING):
            assert run["started"] is not None
    else:
        with pytest.raises(IllegalTransition, match=f"from {frm.value} to {to.value}"):
            life.transition(run_id, to)
        assert store.get_run(run_id)["status"] == frm and hub.messages == []


def test_terminal_statuses_are_the_wire_formats_and_nothing_leaves_them() -> None:
    assert {s.value for s in TERMINAL} == set(WIRE_TERMINAL)
    assert not any(frm in TERMINAL for frm, _ in TRANSITIONS)
    # every status is reachable from queued (a local run's first status), or is running (an external run's)
    reach, frontier = {Status.QUEUED, Status.RUNNING}, [Status.QUEUED, Status.RUNNING]
    while frontier:
        s = frontier.pop()
        for frm, to in TRANSITIONS:
            if frm == s and to not in reach:
                reach.add(to)
                frontier.append(to)
    assert reach == set(Status)


def test_the_status_set_is_defined_once() -> None:
    from gradwatch.server import cli
    from gradwatch.server.schemas import Run

    runs = next(a for a in cli.build_parser()._subparsers._group_actions[0].choices["runs"]._actions
                if a.dest == "status")
    assert tuple(runs.choices) == ALL and "stalled" in ALL
    from gradwatch.server.routes.health import statuses

    served = asyncio.run(statuses())  # GET /api/statuses, which the page reads
    assert served["all"] == list(ALL) and served["active"] == ["queued", "running", "stalled"]
    assert set(served["terminal"]) == set(WIRE_TERMINAL) and len(served["transitions"]) == len(TRANSITIONS)
    schema = Run.model_json_schema()
    assert schema["$defs"][schema["properties"]["status"]["$ref"].rsplit("/", 1)[1]]["enum"] == list(ALL)
    doc = (ROOT / "docs" / "architecture.md").read_text()
    rows = set(re.findall(r"^\| `(\w+)` \| `(\w+)` \|", doc, flags=re.M))
    assert rows == {(frm.value, to.value) for frm, to in TRANSITIONS}, "docs/architecture.md's table"
    # The page takes its sets from /api/statuses (frontend/js/statuses.js): no script types one out.
    # (A list naming a couple of statuses for a rule of its own, e.g. "ended well", is no status set:
    # a set the server defines holds `queued` or `failed`.)
    for script in (ROOT / "frontend" / "js").glob("*.js"):
        for literal in re.findall(r"\[([^\[\]]*)\]", script.read_text()):
            named = set(re.findall(r"'(\w+)'", literal)) & set(ALL)
            assert not (len(named) > 1 and named & {"queued", "failed"}), f"{script.name} types out {sorted(named)}"


# ---- the job manager with a fake launcher -------------------------------------------------------


async def until(predicate: Any, timeout: float = 2.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.005)


def test_job_manager_with_a_fake_launcher(tmp_path: Path, store: Store) -> None:
    async def scenario() -> None:
        launcher = FakeLauncher(store, fail={"bad"})
        jobs = JobManager(Settings(data_dir=tmp_path, max_concurrent=2, reattach_grace_s=0.05), store,
                          Hub(), launcher)
        await jobs.start()
        a, b, c = (jobs.create(n, {})["id"] for n in "abc")
        await until(lambda: len(launcher.launched) == 2)
        assert launcher.launched == [a, b] and store.get_run(c)["status"] == "queued"  # two slots
        assert launcher.status_at_launch[a] == "running"  # the launch is recorded before the worker starts
        assert jobs.view(store.get_run(a))["node"] == "fake-node" and jobs.view(store.get_run(a))["gpu"] == "7"
        launcher.exit(a, 3)  # a worker ends without finishing: failed with the launcher's reason
        await until(lambda: store.get_run(a)["status"] == "failed")
        assert store.get_run(a)["error"] == "fake worker ended with 3"
        await until(lambda: a not in jobs.runs)  # its state is gone; the record still says where it ran
        assert (jobs.view(store.get_run(a))["node"], jobs.view(store.get_run(a))["gpu"]) == ("fake-node", "7")
        await until(lambda: c in launcher.launched)  # its slot went to the queued run
        d = jobs.create("d", {})["id"]
        assert (await jobs.stop(d))["status"] == "stopped"  # stopped while queued: never launched
        await jobs.stop(b)  # no worker connection to ask: stopped, its worker killed
        assert store.get_run(b)["status"] == "stopped" and launcher.killed == [b]
        new_run(store, "queued", "bad")  # as jobs.create makes it, with an id the launcher fails
        jobs.queue.append("bad")
        jobs._wake.set()
        await until(lambda: store.get_run("bad")["status"] == "failed")
        assert store.get_run("bad")["error"] == "could not start the worker: no such machine"
        launcher.exit(c, 0)
        await until(lambda: not jobs.runs)  # every run ended, every state dropped
        assert jobs.active_count == 0
        await jobs.shutdown()

    asyncio.run(scenario())


def test_a_restarted_manager_reattaches_live_workers_and_fails_the_rest(tmp_path: Path, store: Store) -> None:
    async def scenario() -> None:
        for run_id in ("alive", "gone"):
            new_run(store, "running", run_id)
        new_run(store, "queued", "waiting")
        launcher = FakeLauncher(store, alive={"alive"}, max_concurrent=4)
        jobs = JobManager(Settings(data_dir=tmp_path, max_concurrent=4, reattach_grace_s=0.05), store,
                          Hub(), launcher)
        await jobs.start()
        await until(lambda: store.get_run("gone")["status"] == "failed")
        assert "did not reconnect" in store.get_run("gone")["error"]
        assert store.get_run("alive")["status"] == "running"  # its worker is watched again, not relaunched
        assert launcher.launched == ["waiting"]  # the queued run is launched; neither running one again
        launcher.exit("alive", -9)
        await until(lambda: store.get_run("alive")["status"] == "failed")
        assert store.get_run("alive")["error"] == "fake worker ended with -9"
        launcher.exit("waiting", 0)  # else shutdown() waits its 5 s for a worker it cannot ask to stop
        await until(lambda: not jobs.runs)
        await jobs.shutdown()

    asyncio.run(scenario())


# ---- liveness with a fake clock ----------------------------------------------------------------


def test_liveness_marks_silence_stalled_then_hung(tmp_path: Path, store: Store) -> None:
    now = [1000.0]
    hub = RecordingHub()
    life = Lifecycle(store, hub)
    hung: list[tuple[str, str]] = []
    settings = Settings(data_dir=tmp_path, heartbeat_timeout_s=10, stalled_timeout_s=60, idle_note_s=30)
    live = Liveness(settings, life, on_hung=lambda run_id, reason: hung.append((run_id, reason)),
                    clock=lambda: now[0])
    run_id = new_run(store, "running")
    live.seen(run_id)
    life.state(run_id).conn = object()  # connected
    now[0] += 9
    live.check(now[0])
    assert store.get_run(run_id)["status"] == "running"
    now[0] += 2  # 11 s of silence
    live.check(now[0])
    assert store.get_run(run_id)["status"] == "stalled" and hub.statuses(run_id) == ["stalled"]
    live.seen(run_id)  # heard again
    assert store.get_run(run_id)["status"] == "running"
    live.stepped(run_id)
    now[0] += 29
    assert live.idle_s(run_id) is None
    live.check(now[0])  # 29 s: stalled again (silent), but not yet idle-noted
    assert store.get_run(run_id)["status"] == "stalled"
    live.seen(run_id)
    now[0] += 2
    assert live.idle_s(run_id) == 31.0  # no step for 31 s
    now[0] += 11
    live.check(now[0])  # stalled again...
    now[0] += 60.5
    live.check(now[0])  # ...for over stalled_timeout_s, still connected: hung
    assert [r for r, _ in hung] == [run_id] and f"no heartbeat from the worker for {2 + 11 + 60.5:.0f} s" in hung[0][1]


def test_liveness_leaves_a_disconnected_foreign_worker_to_the_reconnect_grace(tmp_path: Path, store: Store) -> None:
    now = [0.0]
    life = Lifecycle(store, RecordingHub())
    hung: list[str] = []
    live = Liveness(Settings(data_dir=tmp_path, heartbeat_timeout_s=10, stalled_timeout_s=60), life,
                    on_hung=lambda run_id, reason: hung.append(run_id), clock=lambda: now[0])
    run_id = new_run(store, "running", kind="external")
    live.seen(run_id)  # no connection now, no worker of ours
    for t in (11, 100, 1000):
        now[0] = t
        live.check(t)
    assert store.get_run(run_id)["status"] == "stalled" and hung == []


def test_a_launched_run_waiting_for_resources_is_queued_saying_why(tmp_path: Path, store: Store,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from gradwatch.server import jobs as jobs_module

    monkeypatch.setattr(jobs_module, "PLACEMENT_NOTE_S", 0.02)

    async def scenario() -> None:
        launcher = FakeLauncher(store, max_concurrent=8)
        launcher.unplaced.add("big")
        jobs = JobManager(Settings(data_dir=tmp_path), store, Hub(), launcher)
        await jobs.start()
        new_run(store, "queued", "big")
        jobs.queue.append("big")
        jobs._wake.set()
        await until(lambda: "big" in launcher.launched and store.get_run("big")["status"] == "queued")
        assert jobs.view(store.get_run("big"))["waiting"] == "a fake slot"  # the launcher's needs()
        assert store.get_run("big")["started"] is None and launcher.launched == ["big"]
        launcher.unplaced.clear()  # the cluster has room now
        await until(lambda: store.get_run("big")["status"] == "running")
        assert "waiting" not in jobs.view(store.get_run("big")) and launcher.launched == ["big"]  # launched once
        assert (await jobs.stop("big"))["status"] == "stopped"
        await until(lambda: "big" not in jobs.runs)
        assert jobs.view(store.get_run("big"))["node"] == "fake-node"  # placed once it had room, kept after
        await jobs.shutdown()

    asyncio.run(scenario())
