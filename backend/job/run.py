"""What a training job does: one ISAL round on a Label Studio project as it is now, in three steps.

    Job.run(project, api)
      1. read the project     tasks, images, the reference set R                  (tasks.py)
      2. run the round        train, s_test, influence of every pool task          (round.py)
      3. publish              a dead job's leftovers undone; the version on disk,  (publication.py)
                              its predictions, Label Studio's model_version; old
                              versions' predictions deleted

A job that fails anywhere leaves the current version, and the project's model_version in
Label Studio, as they were (backend.job.publication says how a crash mid-write is undone).
"""
from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx

from isal_core.utils.progress import reporting

from ..errors import JobError, UnsupportedConfig, describe_api_error, describe_transport_error
from ..labelstudio.client import ApiError, LabelStudioAPI
from ..settings import EngineSettings
from ..storage.projects import ProjectDir
from .publication import publish
from .round import run_round
from .tasks import read_project


class Job:
    """Runs one job for a project (see the module docstring)."""

    def __init__(self, engine: EngineSettings, cache_dir: Path, keep_ls_versions: int = 0,
                 ls_predictions_per_version: int = 0):
        self.engine = engine
        self.cache_dir = Path(cache_dir)
        self.keep_ls_versions = keep_ls_versions
        self.ls_predictions_per_version = ls_predictions_per_version

    def run(self, project: ProjectDir, api: LabelStudioAPI, set_phase: Callable = lambda *a: None) -> dict:
        """The job's report (what /status shows as the last job); JobError with a message for the user.
        `set_phase(phase)` hears each phase as it starts, `set_phase(loop, done, total)` a long loop's progress."""
        set_phase = clock = PhaseClock(set_phase)
        set_phase("reading tasks")
        try:
            with reporting(set_phase):  # the long loops' done/total, beside the phase (set_phase(desc, done, total))
                task_type = project.update_config(api.project_label_config(project.ls_id))
                tasks = read_project(api, project, task_type, self.cache_dir, self.engine.download_workers,
                                     self.engine.min_labeled, set_phase, self.engine.cold_starts)
                read, job = time.time(), project.next_job_number()
                outcome = run_round(project, task_type, self.engine, tasks, set_phase, job)
                scored = time.time()
                report = publish(project, api, self.engine, task_type, tasks, outcome, set_phase, job,
                                 self.keep_ls_versions, self.ls_predictions_per_version)
        except UnsupportedConfig as exc:
            raise JobError(f"the project's labeling config is not supported: {exc}") from None
        except ApiError as exc:
            raise JobError(describe_api_error(exc)) from None
        except httpx.TransportError as exc:
            raise JobError(describe_transport_error(exc)) from None
        if outcome.processes > 1:
            report["processes"] = outcome.processes
        if outcome.embedding_cache is not None:
            report["embedding_cache"] = outcome.embedding_cache
        report["timings_s"] = {**tasks.seconds, "score": round(scored - read, 2), "review": outcome.review_s,
                               "write": round(time.time() - scored, 2)}  # ("review" is part of "score")
        report["phases_s"] = clock.seconds()
        return report


class PhaseClock:
    """set_phase that also keeps how long each phase lasted (until the next began): where a job's time goes."""

    def __init__(self, set_phase: Callable):
        self.set_phase, self.current, self.began, self.spent = set_phase, None, time.time(), {}

    def __call__(self, phase: str, done: int | None = None, total: int | None = None) -> None:
        if done is None and total is None:
            self._close()
            self.current, self.began = phase, time.time()
            self.set_phase(phase)
        else:
            self.set_phase(phase, done, total)

    def _close(self) -> None:
        if self.current is not None:
            key = self.current.split(":", 1)[0]  # "downloading the pretrained weights: 3 of 45 MB": one phase
            self.spent[key] = self.spent.get(key, 0.0) + time.time() - self.began

    def seconds(self) -> dict[str, float]:
        self._close()
        self.current = None
        return {phase: round(s, 2) for phase, s in self.spent.items()}
