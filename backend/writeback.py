"""Writing a job's predictions back to Label Studio and pointing the project at them."""
from __future__ import annotations

from .ls_client import LabelStudioAPI
from .tasktypes import TaskType


def prediction_stream(task_type: TaskType, version: str, task_ids, predictions, scores, prelabel: bool = True,
                      clusters=None):
    """One Label Studio prediction per task, generated lazily (10k tasks never sit in a list).

    Without `prelabel` the result is empty: the score still orders the queue, but Label
    Studio has no guess to pre-tick in the labeling screen. With `clusters`, each carries
    its task's cluster id, which Label Studio's uncertainty sampling serves by."""
    for n, (tid, prediction, score) in enumerate(zip(task_ids, predictions, scores)):
        entry = {"task": int(tid), "result": task_type.prediction(prediction) if prelabel else [],
                 "score": float(score), "model_version": version}
        if clusters is not None:
            entry["cluster"] = int(clusters[n])
        yield entry


def write_back(api: LabelStudioAPI, project_id: int, version: str, predictions, chunk_size: int = 10_000) -> int:
    """The backend's write path: bulk-write predictions of `version`, then make it the project's version.

    `predictions` may be a generator (memory stays flat). Returns how many Label Studio
    kept; the project's model_version (with "Uncertainty sampling", lowest score first)
    is set only if it kept some, since Label Studio refuses a version with no predictions.
    """
    created = api.write_predictions(project_id, predictions, chunk_size=chunk_size)
    if created:
        api.set_model_version(project_id, version)
    return created
