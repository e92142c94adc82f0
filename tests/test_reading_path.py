"""A newcomer reads one backend job from its entry in few files, without going back and forth.

The reading path is traced, not guessed: a real job runs against a real Label Studio, and
every backend function is noted the first time it is called on the job's thread, in call
order (the order a reader following the code meets them), with the backend file it was
called from. A reader follows the job's own code (`backend/job/`) function by function and
looks up each function it calls elsewhere (the Label Studio client, the project folder, the
task type), without following those further: the files passed through are the job's and
those looked up. A "return" is coming back to a job file after having left it for another
job file. Comprehensions and lambdas are read with the function around them.

Measured before the redesign, on the same job (Trainer.run), following every backend call:
16 files, 44 stays, 28 returns. `full_path` below gives that figure for today's code too.
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

try:
    from backend_helpers import frozen_project
    from test_backend_app import make_app
except ImportError:  # tests/ imported as a package
    from tests.backend_helpers import frozen_project
    from tests.test_backend_app import make_app

REPO = Path(__file__).resolve().parents[1]
JOB = "backend/job/"
# measured 12 (2026-12-02): run, tasks, round, publication and 8 looked up; 13 (2026-12-05) with the job's data
# hygiene step (its own file, backend/job/hygiene.py), the returns then 2 (the round's warnings made a field)
MAX_FILES = 13
MAX_RETURNS = 3


def first_calls(call, root: Path) -> tuple[object, list[tuple[str, str | None]]]:
    """(call's result, [(file, the backend file it was called from)] of each function under `root` at its
    first call, in order)."""
    seen, calls, prefix = set(), [], str(root) + "/"

    def backend_file(frame):
        while frame is not None and not (frame.f_code.co_filename.startswith(prefix)
                                         and not frame.f_code.co_name.startswith("<")):
            frame = frame.f_back
        return None if frame is None else str(Path(frame.f_code.co_filename).relative_to(root.parent))

    def profile(frame, event, _arg):
        code = frame.f_code
        if event != "call" or not code.co_filename.startswith(prefix) or code.co_name.startswith("<"):
            return
        key = (code.co_filename, code.co_firstlineno)
        if key not in seen:
            seen.add(key)
            calls.append((str(Path(code.co_filename).relative_to(root.parent)), backend_file(frame.f_back)))

    sys.setprofile(profile)
    try:
        result = call()
    finally:
        sys.setprofile(None)
    return result, calls


def stays(files: list[str]) -> list[str]:
    """The files in the order a reader is in them: consecutive calls in one file are one stay."""
    return [f for i, f in enumerate(files) if i == 0 or files[i - 1] != f]


def reading_path(calls: list[tuple[str, str | None]]) -> tuple[set[str], list[str]]:
    """(the files a reader of the job passes through, the stays in job files)."""
    read = [f for f, caller in calls if f.startswith(JOB) or caller is None or caller.startswith(JOB)]
    return set(read), stays([f for f in read if f.startswith(JOB)])


def full_path(calls) -> tuple[int, int, int]:
    """(files, stays, returns) following every backend call, the measure of the redesign issue."""
    visits = stays([f for f, _ in calls])
    return len({f for f, _ in calls}), len(visits), len(visits) - len({f for f, _ in calls})


def test_the_reading_path_counts_lookups_and_returns_as_a_reader_moves():
    calls = [("backend/job/run.py", None), ("backend/labelstudio/client.py", "backend/job/run.py"),
             ("backend/labelstudio/client.py", "backend/labelstudio/client.py"),  # its internals: not read
             ("backend/storage/versions.py", "backend/labelstudio/client.py"),    # two hops away: not read
             ("backend/job/tasks.py", "backend/job/run.py"), ("backend/job/round.py", "backend/job/run.py"),
             ("backend/job/tasks.py", "backend/job/round.py")]                   # back to tasks.py: a return
    files, visits = reading_path(calls)
    assert files == {"backend/job/run.py", "backend/labelstudio/client.py", "backend/job/tasks.py",
                     "backend/job/round.py"}
    assert visits == ["backend/job/run.py", "backend/job/tasks.py", "backend/job/round.py", "backend/job/tasks.py"]
    assert full_path(calls) == (5, 6, 1)


@pytest.mark.integration
def test_one_job_reads_in_few_files_with_few_returns(label_studio, tmp_path):
    pid, _, _, weights = frozen_project(label_studio, tmp_path, 16, 6, 3, "reading path")
    app = make_app(tmp_path, label_studio_url=label_studio.url, label_studio_api_key=label_studio.legacy_token,
                   engine={"retrain_every": 0, "damping": 0.1, "cold_start": "off"})
    client, backend = app.test_client(), app.extensions["isal"]
    config = label_studio.client().projects.get(id=pid).label_config
    assert client.post("/setup", json={"project": f"{pid}.0", "schema": config}).status_code == 200
    project, api = backend.model_dir.known(pid), backend.api_for(pid)

    report, calls = first_calls(lambda: backend.job.run(project, api), REPO / "backend")
    assert report["model_version"] == project.current.name
    assert report["predictions_written"] == 10 + 6  # the pool's, and the review's
    files, visits = reading_path(calls)
    returns = len(visits) - len(set(visits))
    print(f"reading one job: {len(files)} files ({', '.join(sorted(files))}); through the job's own files "
          f"{' -> '.join(visits)}: {returns} returns; following every call: {full_path(calls)} (files, stays, "
          f"returns)")
    assert calls[0] == ("backend/job/run.py", None)
    assert len(files) <= MAX_FILES and returns <= MAX_RETURNS, (sorted(files), visits)
