"""A simulation's run directory, written so that a killed run resumes where it stopped.

    DIR/config.json                    the protocol; a different one in the same DIR is refused
    DIR/results.csv                    one row per finished round, appended and fsynced at once
    DIR/state/<strategy>-<seed>.json   per round: the train-split indices added, metric, seconds
    DIR/state/<strategy>-<seed>.pt     the latest round's model, so the next round's selection
                                       needs no retraining (e.g. when --rounds is raised later)
    DIR/state/initial-<seed>.pt        round 1's model, shared by every strategy of the seed

Each round writes its checkpoint, then its state, then its results row: results.csv never
runs ahead of the state, and a row lost to a crash is restored from the state on resume.
"""
from __future__ import annotations

import csv
import io
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from torch import nn

from ..errors import ConfigError
from ..tasks.base import TaskAdapter
from ..train.checkpoints import load_checkpoint, save_checkpoint
from ..utils.atomic import write_text

log = logging.getLogger(__name__)

RESULT_COLUMNS = ("strategy", "seed", "round", "labels", "boxes", "metric", "seconds")


class ConfigMismatch(ConfigError):
    """DIR already holds a run of another protocol."""


def recorded(config, adapter: TaskAdapter) -> dict:
    """What config.json records of a run: its settings, and the backbone's id (which weights file made the
    numbers: a remade backbone changes them)."""
    record = config.model_dump()
    if backbone := getattr(adapter, "backbone_id", None):
        record["backbone"] = backbone
    return record


def check_config(out: Path, identity: dict, full: dict, defaults: dict | None = None) -> None:
    """Refuse to mix protocols in one DIR; then record the config of this invocation.

    `identity` holds what the numbers depend on; settings outside it (rounds, strategies,
    seeds, device, ...) may change between invocations: each (strategy, seed) run is
    independent, so a DIR can be extended with rounds, strategies or seeds. A setting
    the stored run does not name (added to the schema later) matches when it equals its
    value in `defaults`, what that older run used in effect.
    """
    path = out / "config.json"
    if path.exists():
        try:
            stored = json.loads(path.read_text()).get("identity", {})
        except (OSError, ValueError) as exc:
            raise ConfigMismatch(f"cannot read {path}: {exc}") from exc
        stored, now = json.loads(json.dumps(stored)), json.loads(json.dumps(identity))
        defaults = json.loads(json.dumps(defaults or {}))
        for key in now.keys() - stored.keys():
            if key in defaults and now[key] == defaults[key]:
                stored[key] = now[key]
        diff = sorted(k for k in stored.keys() | now.keys() if stored.get(k) != now.get(k))
        if diff:
            details = "; ".join(f"{k}: {stored.get(k)!r} there, {now.get(k)!r} now" for k in diff)
            raise ConfigMismatch(f"{out} holds a simulation with a different config ({details}); "
                                 f"use another --out, or the same settings to resume")
    elif (out / "results.csv").exists():
        raise ConfigMismatch(f"{out} holds results.csv but no config.json; use another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_text(path, json.dumps({"identity": identity, "last_run": full}, indent=2) + "\n")


@dataclass
class RunState:
    """One (strategy, seed) run: for each round, the indices it added (round 1: the
    initial set), and once trained, its metric and the seconds the round took."""

    path: Path
    strategy: str
    seed: int
    rounds: list[dict] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path, strategy: str, seed: int, initial: list[int]) -> RunState:
        if not path.exists():
            return cls(path, strategy, seed, [{"round": 1, "added": list(initial), "select_seconds": 0.0}])
        data = json.loads(path.read_text())
        state = cls(path, strategy, seed, data["rounds"])  # (older files' "seen": no longer used)
        if state.rounds[0]["added"] != list(initial):
            raise ConfigMismatch(f"{path}: its initial labeled set differs from this dataset's for seed {seed}")
        return state

    def has(self, round_: int) -> bool:
        return len(self.rounds) >= round_

    def finished(self, round_: int) -> bool:
        return self.has(round_) and "metric" in self.rounds[round_ - 1]

    def labeled(self, round_: int) -> list[int]:
        """The labeled set of a round: the initial set, then each round's additions in rank order."""
        return [i for entry in self.rounds[:round_] for i in entry["added"]]

    def add(self, round_: int, added: list[int], seconds: float) -> None:
        assert len(self.rounds) == round_ - 1, "rounds are added in order"
        self.rounds.append({"round": round_, "added": list(added), "select_seconds": seconds})

    def finish(self, round_: int, metric: float, seconds: float, boxes: int | str = "") -> dict:
        entry = self.rounds[round_ - 1]
        entry.update(metric=metric, seconds=entry["select_seconds"] + seconds)
        if boxes != "":
            entry["boxes"] = boxes
        return self.row(round_)

    def row(self, round_: int) -> dict:
        entry = self.rounds[round_ - 1]
        return {"strategy": self.strategy, "seed": self.seed, "round": round_, "labels": len(self.labeled(round_)),
                "boxes": entry.get("boxes", ""), "metric": entry["metric"], "seconds": round(entry["seconds"], 3)}

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        body = {"strategy": self.strategy, "seed": self.seed, "rounds": self.rounds}
        write_text(self.path, json.dumps(body, separators=(",", ":")) + "\n")


class ResultsFile:
    """results.csv, appended one fsynced row at a time."""

    def __init__(self, path: Path):
        self.path = path
        if path.exists():
            _drop_partial_line(path)

    def rows(self) -> list[dict]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as f:
            return list(csv.DictReader(f))

    def keys(self) -> set[tuple[str, str, str]]:
        return {(r["strategy"], r["seed"], r["round"]) for r in self.rows()}

    def append(self, row: dict) -> None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=RESULT_COLUMNS, lineterminator="\n")
        new = not self.path.exists() or self.path.stat().st_size == 0
        if new:
            writer.writeheader()
        writer.writerow(row)
        with open(self.path, "a", newline="") as f:
            f.write(buffer.getvalue())
            f.flush()
            os.fsync(f.fileno())

    def restore(self, state: RunState) -> None:
        """Append rows the state holds but a crash kept out of the file."""
        keys = self.keys()
        for entry in state.rounds:
            r = entry["round"]
            if "metric" in entry and (state.strategy, str(state.seed), str(r)) not in keys:
                log.info("restoring the results row of %s seed %d round %d", state.strategy, state.seed, r)
                self.append(state.row(r))


def _drop_partial_line(path: Path) -> None:
    """A crash mid-append can leave a last line without its newline; cut it off."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


class Checkpoints:
    """Models kept between invocations: the latest per run and round 1 per seed."""

    def __init__(self, folder: Path, adapter: TaskAdapter):
        self.folder, self.adapter = folder, adapter

    def save(self, name: str, model: nn.Module, **meta) -> None:
        save_checkpoint(self.folder / f"{name}.pt", model, {**self.adapter.to_meta(), **meta})

    def load(self, name: str, device, **expect) -> tuple[nn.Module, dict] | None:
        """The model saved under `name` if its meta matches `expect`, else None."""
        path = self.folder / f"{name}.pt"
        if not path.exists():
            return None
        model, meta = load_checkpoint(path, device, self.adapter)
        if any(meta.get(k) != v for k, v in expect.items()):
            return None
        return model, meta
