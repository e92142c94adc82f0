"""Data Manager tabs through Label Studio's views API (the SDK's view model has no title or columns)."""
from __future__ import annotations

from collections.abc import Iterable

from .client import LabelStudioAPI


def views(api: LabelStudioAPI, project_id: int) -> list[dict]:
    return api.request("GET", "api/dm/views/", params={"project": int(project_id)}).json()


def create_view(api: LabelStudioAPI, project_id: int, title: str, ordering: list[str], visible: Iterable[str],
                filters: dict | None = None) -> int:
    """A Data Manager tab ordered by `ordering` that shows only the `visible` columns (e.g. the
    prediction score, which the default tab hides), and only the tasks `filters` keeps (the Data
    Manager's own filter format); returns its id."""
    columns = api.request("GET", "api/dm/columns/", params={"project": int(project_id)}).json()["columns"]
    visible = set(visible)
    hidden = sorted(name for name in _column_names(columns) if name not in visible)
    data = {"title": title, "ordering": list(ordering), "hiddenColumns": {"explore": hidden, "labeling": hidden}}
    if filters is not None:
        data["filters"] = filters
    return api.request("POST", "api/dm/views/", json={"project": int(project_id), "data": data}).json()["id"]


def _column_names(columns: list[dict]) -> list[str]:
    """Data Manager column ids as views name them: "tasks:id", "tasks:data.image", ..."""
    names = []
    for c in columns:
        parent = c.get("parent")
        names.append(f"{c['target']}:{parent + '.' if parent else ''}{c['id']}")
    return names


#: The review's tab: the annotated tasks with a score of the current version, most suspicious first.
REVIEW_VIEW = {"title": "ISAL: annotations to review", "ordering": ["tasks:predictions_score"],
               "visible": ("tasks:id", "tasks:data.image", "tasks:total_annotations", "tasks:predictions_score",
                           "tasks:predictions_results", "tasks:annotations_results"),
               "filters": {"conjunction": "and", "items": [
                   {"filter": "filter:tasks:total_annotations", "operator": "greater", "type": "Number", "value": 0},
                   {"filter": "filter:tasks:predictions_score", "operator": "empty", "type": "Number",
                    "value": False}]}}


def ensure_view(api: LabelStudioAPI, project_id: int, title: str, ordering: list[str], visible: Iterable[str],
                filters: dict | None = None) -> None:
    """The tab `title` (create_view's arguments), created once per project."""
    if not any((v.get("data") or {}).get("title") == title for v in views(api, project_id)):
        create_view(api, project_id, title, ordering, visible, filters)

#: Data hygiene's tab: the tasks flagged as near-duplicates or outliers, the reason in the predictions column.
HYGIENE_VIEW = {"title": "ISAL: duplicates and outliers", "ordering": ["tasks:predictions_results"],
                "visible": ("tasks:id", "tasks:data.image", "tasks:total_annotations", "tasks:predictions_results"),
                "filters": {"conjunction": "and", "items": [
                    # a list: Label Studio 1.23 matches each of its items (each character of a string)
                    {"filter": "filter:tasks:predictions_model_versions", "operator": "contains", "type": "List",
                     "value": ["isal-hygiene"]}]}}
