"""The served queue: the tasks a version wrote predictions for (the first of its order), which Label Studio
serves from. Annotators use it up between jobs; when a tenth of it is left, the backend asks for a job, so a new
version serves before Label Studio falls back to tasks without a prediction (random order). Counted from the
annotation webhooks (ANNOTATION_CREATED of a predicted task), per version, in the job table every process shares.
"""
from __future__ import annotations


def served_queue(version, table, project_id: int, labeled_task: int | None = None) -> dict | None:
    """{"version", "predicted", "labeled" (since it serves), "remaining", "low_water"} of the served version, or
    None before any version with predictions; `labeled_task` (a task just labeled) is counted first."""
    if version is None:
        return None
    predicted = version.predicted_ids()
    if not predicted:
        return None
    labeled = table.served_labeled(project_id, version.name, labeled_task if labeled_task in predicted else None)
    return {"version": version.name, "predicted": len(predicted), "labeled": labeled,
            "remaining": len(predicted) - labeled, "low_water": max(1, len(predicted) // 10)}


def task_of(data: dict) -> int | None:
    """The task id of an annotation webhook (`task.id`, else `annotation.task`)."""
    task, annotation = data.get("task"), data.get("annotation")
    found = task.get("id") if isinstance(task, dict) else (
        annotation.get("task") if isinstance(annotation, dict) else None)
    return found if isinstance(found, int) and not isinstance(found, bool) else None
