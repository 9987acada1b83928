"""Pre-forking launcher: `python -m gradwatch.zygote`, started once by the server.

Importing torch and friends costs a new interpreter 2–4 s of CPU; a run should start training at
once. The zygote imports them once and forks one worker per request. It never touches CUDA
(no torch.cuda call here), so each forked worker initialises CUDA itself, as a fresh process
would. Protocol, one JSON object per line:

  server → zygote (stdin):  {"run_id", "argv": [worker args], "env": {…}, "log": path}
  zygote → server (stdout): {"event": "started", "run_id", "pid"}
                            {"event": "exited", "run_id", "pid", "code"}  (code < 0: killed by signal -code)
                            {"event": "error", "run_id", "message"}
"""

from __future__ import annotations

import json
import os
import selectors
import sys

# Warm imports: what every worker needs, loaded once here and shared by fork.
import numpy  # noqa: F401
import orjson  # noqa: F401
import sklearn.datasets  # noqa: F401
import torch  # noqa: F401
import websockets.sync.client  # noqa: F401

from . import worker

running: dict[int, str] = {}  # worker pid -> run id


def _say(**message: object) -> None:
    sys.stdout.write(json.dumps(message) + "\n")
    sys.stdout.flush()


def _spawn(request: dict) -> None:
    run_id = request["run_id"]
    log_fd = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the worker
        code = 1
        try:
            os.setsid()  # its own session: signals to the server's terminal do not reach it
            _name_process(f"gw-{run_id}")
            os.dup2(log_fd, 1)
            os.dup2(log_fd, 2)
            os.close(log_fd)
            devnull = os.open(os.devnull, os.O_RDONLY)
            os.dup2(devnull, 0)
            os.environ.update(request.get("env", {}))
            sys.argv = ["gradwatch.worker", *request["argv"]]
            code = worker.main(request["argv"])
        except SystemExit as e:
            code = e.code if isinstance(e.code, int) else 1
        except BaseException:  # noqa: BLE001 - report, then leave without running the zygote's code
            import traceback

            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    os.close(log_fd)
    running[pid] = run_id
    _say(event="started", run_id=run_id, pid=pid)


def _name_process(name: str) -> None:
    """Show the run in ps/top (the forked worker's command line is still the zygote's)."""
    try:
        import ctypes

        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME
    except (OSError, AttributeError):
        pass


def _reap() -> None:
    while running:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        code = -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)
        _say(event="exited", run_id=running.pop(pid, "?"), pid=pid, code=code)


def main() -> int:
    sel = selectors.DefaultSelector()
    fd = sys.stdin.fileno()
    sel.register(fd, selectors.EVENT_READ)
    pending = b""
    _say(event="ready", pid=os.getpid())
    while True:
        if sel.select(timeout=0.05):
            chunk = os.read(fd, 65536)  # raw reads: select() cannot see Python's own buffer
            if not chunk:  # the server is gone: leave the workers to finish on their own
                return 0
            pending += chunk
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                _handle(line)
        _reap()


def _handle(line: bytes) -> None:
    request: object = None
    try:
        request = json.loads(line)
        _spawn(request)
    except Exception as e:  # noqa: BLE001 - one bad request must not end the zygote
        run_id = request.get("run_id") if isinstance(request, dict) else None
        _say(event="error", run_id=run_id, message=f"{type(e).__name__}: {e}")


if __name__ == "__main__":
    sys.exit(main())
