"""gradwatch as a package: the wheel works outside the source tree (from a folder whose own
trainer.py and server.py would shadow generic names), the light client imports no server
packages, and the dashboard's files are served gzipped."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import httpx
import pytest

from .conftest import ROOT, LiveServer, wait_for

PLOTLY_JS = ROOT / "frontend" / "vendor" / "plotly.min.js"
SERVER_ONLY = ("fastapi", "uvicorn", "starlette", "sklearn", "torchvision", "plotly")


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    # No build isolation: setuptools is already in the test venv (nothing is downloaded).
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(ROOT)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    (built,) = out.glob("gradwatch-*.whl")
    return built


def test_the_wheel_installs_only_gradwatch_with_the_frontend_inside(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert top == {"gradwatch"}, top  # no top-level `server` or `trainer`
    for path in ("gradwatch/frontend/index.html", "gradwatch/frontend/login.html", "gradwatch/frontend/js/main.js",
                 "gradwatch/frontend/vendor/plotly.min.js", "gradwatch/frontend/vendor/LICENSE-plotly.txt",
                 "gradwatch/server/app.py", "gradwatch/server/routes/runs.py", "gradwatch/integrations/lightning.py",
                 "gradwatch/__main__.py"):
        assert path in names, path
    metadata = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = re.findall(r"^Requires-Dist: (.*)$", metadata, re.MULTILINE)
    base = [r for r in requires if "extra ==" not in r]
    assert not [r for r in base if r.split(">")[0].split("=")[0].strip() in ("fastapi", "uvicorn", "scikit-learn",
                                                                             "torchvision", "plotly")], base


class WheelServer(LiveServer):
    """`python -m gradwatch serve` with another interpreter, from another folder."""

    python: Path
    cwd: Path

    def start(self) -> WheelServer:
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
        env.update(PYTHONUNBUFFERED="1", GRADWATCH_TOKEN=self.token, OMP_NUM_THREADS="1")
        self.log = open(self.data_dir.parent / f"server-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [str(self.python), "-m", "gradwatch", "serve", "--port", str(self.port), "--data-dir", str(self.data_dir),
             "--log-level", self.log_level], cwd=self.cwd, env=env, stdout=self.log, stderr=subprocess.STDOUT)
        self.client = httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.token}"}, timeout=30)
        # a fresh interpreter importing torch and the server on a 2-core machine shared with other suites
        try:
            wait_for(self._healthy, timeout=180, what=f"the wheel's server on port {self.port} to answer /api/health")
        except pytest.fail.Exception:
            self.proc.kill()
            pytest.fail(f"the wheel's server did not answer within 180 s; its log: {self.log_text()[-3000:]}")
        return self


def test_the_wheel_serves_the_page_and_a_run_from_an_empty_folder(wheel: Path, tmp_path: Path) -> None:
    # A fresh venv outside the source tree; the wheel alone in its site-packages, the test venv's
    # already installed dependencies (torch, fastapi, ...) after it through a .pth line.
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    Path(site, "zz_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
                           "--no-index", str(wheel)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]

    folder = tmp_path / "empty"
    folder.mkdir()
    for name in ("trainer.py", "server.py"):  # a user's own files, shadowing the old generic names
        (folder / name).write_text(f"raise SystemExit('{name} of the user was imported by gradwatch')\n")
    where = subprocess.run([str(python), "-c", "import gradwatch.server.app as a; print(a.__file__, a.FRONTEND)"],
                           cwd=folder, capture_output=True, text=True, timeout=120)
    assert where.returncode == 0, where.stderr
    assert all(p.startswith(site) for p in where.stdout.split()), where.stdout  # the wheel, not the checkout

    server = WheelServer(tmp_path / "data")
    server.python, server.cwd = python, folder
    server.start()
    try:
        page = server.client.get("/")
        assert page.status_code == 200 and "<title>gradwatch</title>" in page.text
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
        assert "/static/vendor/plotly.min.js" in assets
        for asset in assets:
            r = server.client.get(asset)
            assert r.status_code == 200 and len(r.content) > 0, asset
        assert server.client.get("/static/vendor/plotly.min.js").content == PLOTLY_JS.read_bytes()
        run = server.create_run({"dataset": "synthetic", "steps": 5}, name="from-the-wheel")
        done_run = server.wait_status(run["id"], ("completed", "failed"), timeout=180)
        assert done_run["status"] == "completed", (done_run, server.log_text()[-3000:])
        assert done_run["summary"]["step"] == 5
    finally:
        server.stop()
    assert "of the user was imported" not in server.log_text()


def test_import_gradwatch_watch_and_connect_load_no_server_packages() -> None:
    script = """
import sys, torch
import gradwatch
from gradwatch import connect, watch
model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
opt = torch.optim.SGD(model.parameters(), lr=0.1)
probe = watch(model, opt)
model(torch.randn(3, 4)).sum().backward()
opt.step()
probe.close()
assert probe.latest()["step"] == 1
try:
    connect("http://127.0.0.1:9", timeout=2)
except ConnectionError:
    pass
print(sorted({m.split('.')[0] for m in sys.modules}))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = set(eval(done.stdout.strip().splitlines()[-1]))  # noqa: S307 - our own print of a list of names
    assert "torch" in loaded and "websockets" in loaded  # the check can see what was imported
    assert not loaded & set(SERVER_ONLY), loaded & set(SERVER_ONLY)


def test_static_files_are_sent_gzipped_once_compressed(live_server: LiveServer) -> None:
    raw = PLOTLY_JS.read_bytes()
    url = "/static/vendor/plotly.min.js"
    with live_server.client.stream("GET", url, headers={"Accept-Encoding": "gzip, deflate"}) as r:
        sent = b"".join(r.iter_raw())
    assert r.status_code == 200 and r.headers["content-encoding"] == "gzip"
    assert r.headers["vary"] == "Accept-Encoding" and r.headers["content-type"].startswith("text/javascript")
    assert len(sent) < len(raw) / 3 and gzip.decompress(sent) == raw
    again = live_server.client.get(url, headers={"Accept-Encoding": "gzip", "If-None-Match": r.headers["etag"]})
    assert again.status_code == 304
    plain = live_server.client.get(url, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == raw
    index = live_server.client.get("/", headers={"Accept-Encoding": "gzip"})
    assert index.status_code == 200 and index.headers["content-encoding"] == "gzip"
    assert index.headers["cache-control"] == "no-cache" and "<title>gradwatch</title>" in index.text


def test_serve_without_the_server_extra_says_which_extra_to_install(tmp_path: Path) -> None:
    script = ("import sys; sys.modules['fastapi'] = None  # as if only `pip install gradwatch` were there\n"
              "from gradwatch.server.cli import main; sys.exit(main(['serve', '--data-dir', sys.argv[1]]))")
    done = subprocess.run([sys.executable, "-c", script, str(tmp_path / "data")], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert "pip install 'gradwatch[server]'" in done.stderr and "fastapi" in done.stderr
    assert "Traceback" not in done.stderr
