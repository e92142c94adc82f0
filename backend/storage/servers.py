"""Several Label Studio servers on one backend: a project is keyed by its server and its id.

Label Studio numbers projects per server, so project 1 of two servers would share one folder,
versions and connection. The backend keys a project by both: the first server that connects keeps
the plain id (MODEL_DIR/<id>/, as a backend of one server always had), the n-th other one's project
<id> is n * 10**9 + <id> (MODEL_DIR/1000000001/: project 1 of the second server), numbered in
MODEL_DIR/servers.json by the `hostname` their /setup sends. With LABEL_STUDIO_URL set there is one
server, that one. /predict, /train and webhooks name no server, only the project's id and the second
it was created ("12.1700000000", or the webhook's project with `created_at`): the id finds the project
when one server has it, the creation second when several do.
"""
from __future__ import annotations

import fcntl
import json
import re
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..errors import UnknownProject
from .layout import PROJECT, SERVERS

#: Keys of the n-th server's projects start at n * STRIDE (Label Studio's ids stay far below it).
STRIDE = 10**9
MAX_PROJECT_ID = 2**63
_PROJECT_REF = re.compile(r"^\s*(\d+)(?:\.(\d+))?\s*$")


def parse_project_id(value: Any) -> int:
    """A project reference -> id: "12.1700000000" (/setup, /predict), 12, "12", {"id": 12}. An id is a positive
    64-bit integer (the job table's keys: a Label Studio id, or a key of another server's project)."""
    if isinstance(value, dict):
        value = value.get("id")
    if isinstance(value, bool):
        raise ValueError(f"not a project id: {value!r}")
    if isinstance(value, str) and (m := _PROJECT_REF.match(value)):
        value = int(m.group(1))
    if isinstance(value, int) and 0 < value < MAX_PROJECT_ID:
        return value
    raise ValueError(f"not a Label Studio project reference: {value!r} (expected an id like 12 or \"12.1700000000\")")


def label_studio_reference(value: Any) -> tuple[int, int | None]:
    """(Label Studio's project id, the second it was created or None) of a request's `project`."""
    ls_id, stamp = parse_project_id(value), None
    if ls_id >= STRIDE:
        raise ValueError(f"project id {ls_id} is not a Label Studio project id (at most {STRIDE - 1})")
    if isinstance(value, str) and (m := _PROJECT_REF.match(value)) and m.group(2):
        stamp = int(m.group(2))
    elif isinstance(value, dict) and isinstance(value.get("created_at"), str):
        try:
            stamp = int(datetime.fromisoformat(value["created_at"].replace("Z", "+00:00")).timestamp())
        except ValueError:
            stamp = None
    return ls_id, stamp


def label_studio_id(key: int) -> int:
    """The id Label Studio knows a project by, from the backend's key."""
    return key % STRIDE


class Servers:
    """MODEL_DIR/servers.json: the Label Studio servers that connected, in order (the first is number 0)."""

    def __init__(self, root: Path):
        self.root = root
        self.path = root / SERVERS

    def number(self, hostname: str | None) -> int:
        """The server's number, given one the first time it connects; 0 without a hostname."""
        if not hostname:
            return 0
        parts = urlsplit(hostname if "//" in hostname else f"//{hostname}")
        origin = f"{parts.scheme.lower() or 'http'}://{parts.netloc.lower()}"
        with open(self.root / f".{SERVERS}.lock", "a") as lock:  # gunicorn's workers may all see a new one
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                known = json.loads(self.path.read_text())["servers"]
            except (OSError, ValueError, KeyError):
                known = []
            if origin not in known:
                known.append(origin)
                tmp = self.path.with_suffix(".tmp")
                tmp.write_text(json.dumps({"servers": known}, indent=1))
                tmp.replace(self.path)
            return known.index(origin)

    def resolve(self, value: Any) -> int:
        """The key of the project a request names: the one registered project with that Label Studio id, or among
        several servers' the one created in the request's second (UnknownProject when that does not decide)."""
        ls_id, stamp = label_studio_reference(value)
        keys = sorted(int(d.name) for d in self.root.iterdir() if d.name.isdigit()
                      and int(d.name) % STRIDE == ls_id and (d / PROJECT).is_file())
        if len(keys) <= 1:
            return keys[0] if keys else ls_id
        stamps = {k: _stamp(self.root / str(k)) for k in keys}
        chosen = [k for k in keys if stamp is not None and stamps[k] == stamp]
        if len(chosen) == 1:
            return chosen[0]
        raise UnknownProject(f"{len(keys)} Label Studio servers have a project {ls_id} connected (keys {keys}) and "
                             f"the request's creation second ({stamp}) names none of them alone")


def _stamp(folder: Path) -> int | None:
    try:
        return json.loads((folder / PROJECT).read_text()).get("label_studio_created")
    except (OSError, ValueError, AttributeError):
        return None
