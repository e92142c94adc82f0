"""Data Manager tabs through Label Studio's views API (the SDK's view model has no title or columns)."""
from __future__ import annotations

from collections.abc import Iterable

from .client import LabelStudioAPI


def views(api: LabelStudioAPI, project_id: int) -> list[dict]:
    return api.request("GET", "api/dm/views/", params={"project": int(project_id)}).json()


def create_view(api: LabelStudioAPI, project_id: int, title: str, ordering: list[str], visible: Iterable[str]) -> int:
    """A Data Manager tab ordered by `ordering` that shows only the `visible` columns (e.g. the
    prediction score, which the default tab hides); returns its id."""
    columns = api.request("GET", "api/dm/columns/", params={"project": int(project_id)}).json()["columns"]
    visible = set(visible)
    hidden = sorted(name for name in _column_names(columns) if name not in visible)
    data = {"title": title, "ordering": list(ordering), "hiddenColumns": {"explore": hidden, "labeling": hidden}}
    return api.request("POST", "api/dm/views/", json={"project": int(project_id), "data": data}).json()["id"]


def _column_names(columns: list[dict]) -> list[str]:
    """Data Manager column ids as views name them: "tasks:id", "tasks:data.image", ..."""
    names = []
    for c in columns:
        parent = c.get("parent")
        names.append(f"{c['target']}:{parent + '.' if parent else ''}{c['id']}")
    return names
