"""The project page's hygiene section: leaks as a warning, the counts, and the map of the tasks.

The map is the embeddings' first two principal components (backend.job.hygiene writes them into the version's
hygiene.json), drawn by matplotlib as inline SVG: labeled, reference and pool tasks, the next batch, the review's
most suspicious annotations, near-duplicates and outliers, each kind a group with the id `map-<kind>`.
"""
from __future__ import annotations

import html
import io
import json

from ..storage.layout import HYGIENE
from .status import leak_warnings

#: Drawing order (later on top), colour and legend of each kind of point.
KINDS = {"pool": ("#c8c8c8", "pool"), "labeled": ("#1f77b4", "labeled"), "reference": ("#2ca02c", "reference (R)"),
         "next": ("#ff7f0e", "next batch"), "suspect": ("#9467bd", "review: most suspicious"),
         "duplicate": ("#d62728", "near-duplicate"), "outlier": ("#000000", "outlier")}
SUSPECTS = 20  # the review's first annotations marked on the map


def hygiene_section(project, meta: dict, review_order: list[int]) -> str:
    """The section's HTML ('' before a version with a hygiene report)."""
    path = project.current.path / HYGIENE if project.current else None
    if path is None or not path.is_file():
        return ""
    report = json.loads(path.read_text())
    counts = report.get("counts") or {}
    warn = "".join(f"<p class='warn' id='leak-warning'>{html.escape(w)}</p>" for w in leak_warnings(meta))
    text = (f"<p id='hygiene'>{counts.get('groups', 0)} near-duplicate groups ({counts.get('in_groups', 0)} tasks), "
            f"{counts.get('outliers', 0)} outliers, {counts.get('deferred', 0)} pool tasks served last for it; "
            f"the list: <a href='/hygiene?project={project.id}'>/hygiene</a> and the Data Manager tab "
            "'ISAL: duplicates and outliers'.</p>")
    return "<h2>Duplicates, leaks, outliers and the map</h2>" + warn + text + _map_svg(report["map"], review_order)


def _map_svg(points: dict, review_order: list[int]) -> str:
    from matplotlib.figure import Figure

    suspects = set(review_order[:SUSPECTS])
    kinds = ["suspect" if t in suspects and k == "labeled" else k for t, k in zip(points["task"], points["kind"])]
    fig = Figure(figsize=(6.4, 4.8))
    ax = fig.add_subplot()
    for kind, (colour, label) in KINDS.items():
        xs = [x for x, k in zip(points["x"], kinds) if k == kind]
        ys = [y for y, k in zip(points["y"], kinds) if k == kind]
        if xs:
            size = 6 if kind in ("pool", "labeled") else 18
            ax.scatter(xs, ys, s=size, c=colour, label=f"{label} ({len(xs)})", linewidths=0).set_gid(f"map-{kind}")
    shown = len(points["task"])
    ax.set_title(f"the tasks' embeddings, first two principal components ({shown:,} of {points['of']:,})",
                 fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.legend(loc="best", fontsize=7, markerscale=1.5)
    fig.tight_layout()
    out = io.StringIO()
    fig.savefig(out, format="svg")
    return "<div id='task-map'>" + out.getvalue()[out.getvalue().index("<svg"):] + "</div>"
