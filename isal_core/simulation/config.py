"""A simulation protocol: the engine's settings (EngineSettings) plus the protocol's own.

Protocol files (configs/*.json) hold these keys; a key the schema does not know is an
error that names it. Keys starting with "_" are notes for the reader.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, NonNegativeInt, PositiveInt, field_validator, model_validator

from ..selection import STRATEGIES
from ..settings import EngineSettings, read_protocol, validate

#: isal_l1: R = the initial labeled set (the paper's ISAL_v2); isal_labeled: R = the current one (ISAL_v3).
SIM_STRATEGIES = STRATEGIES + ("isal_l1", "isal_labeled", "auto")
USES_R = ("isal", "gradsim", "isal_batch", "isal_typical", "auto")
#: Settings that may change between invocations on one run directory; the rest must not.
RESUMABLE = {"data", "strategies", "seeds", "rounds", "device", "workers", "out", "progress", "embedding_cache"}
#: What a setting added to the schema later was, in effect, for run directories made before it existed.
BEFORE_IT_EXISTED = {"min_steps": 0, "initial_strategy": "random", "validation_size": 0, "budgets": None}


class SimulationConfig(EngineSettings):
    """One simulation protocol; the engine's defaults, plus CPU-sized protocol defaults."""

    data: str | None = Field(None, description="folder or zip with train/<class>/ and test/<class>/ "
                                               "(none: the shared CIFAR-10 zip, else torchvision's download)")
    classes: list[str] | None = Field(None, description="only these class folders (e.g. the target classes a "
                                                        "pretrained backbone never saw); none = all")
    task: Literal["classification", "detection", "tagging"] = Field(
        "classification", description="detection: data is a Pascal VOC tree (folder or zip) with "
                                      "ImageSets/Main/<train_split>.txt and <test_split>.txt; FCOS learns it. "
                                      "tagging (multi-label, a sigmoid per tag on frozen features): data holds "
                                      "train.csv and test.csv (path,tags; tags separated by ';'); none: 2x2 "
                                      "mosaics of CIFAR-10 tagged with the classes they show")
    train_split: str = Field("trainval", description="detection: the VOC split the pool comes from")
    test_split: str = Field("test", description="detection: the VOC split R and the evaluation set come from")
    budget: Literal["images", "boxes"] = Field(
        "images", description="what initial and step count: images, or (detection) boxes: true boxes for the "
                              "random initial set, predicted boxes (at least 1 an image) for a round's picks")
    per_box: bool = Field(False, description="detection: rank by influence per predicted box (cost-normalized)")
    strategies: list[str] = Field(["random", "coreset", "gradsim", "isal"],
                                  description=f"comma list from {', '.join(SIM_STRATEGIES)}")
    initial: PositiveInt = Field(500, description="labels before round 1 (the same for every strategy of a seed)")
    initial_strategy: Literal["random", "typiclust"] = Field(
        "random", description="how the initial labels are chosen: random (the paper's), or typiclust (the backend's "
                              "cold start: typical and diverse on the frozen embeddings, `step` clusters)")
    step: PositiveInt = Field(500, description="labels added per round")
    rounds: PositiveInt = Field(6, description="trained models per run, the initial one included")
    budgets: list[PositiveInt] | None = Field(None, description="labels at each round instead of initial + step "
                                                                "(e.g. 10,20,40,80,160,320: initial = the first, "
                                                                "rounds = how many, unless rounds is lower)")
    seeds: list[int] = Field([0, 1, 2], description="comma list of seeds (repeats)")
    pool_subset: PositiveInt | None = Field(None, description="train images the run may label (seeded subset)")
    test_subset: PositiveInt | None = Field(None, description="evaluation images (seeded subset of test minus R)")
    validation_size: NonNegativeInt = Field(0, description="hold out this many train images (seeded) as the "
                                            "split R and the evaluation set come from, so settings can be chosen "
                                            "without the test images; 0 = the test split")
    reference_size: NonNegativeInt = Field(1000, description="ISAL's reference set R: labeled test images, "
                                                             "disjoint from the evaluation set")
    out: str = Field("runs/simulate", description="run directory (with --config: runs/<config name>); "
                                                  "rerun to resume")
    progress: bool = Field(True, description="progress bars")

    @field_validator("strategies")
    @classmethod
    def _known_strategies(cls, names):
        unknown = [n for n in names if n not in SIM_STRATEGIES]
        if unknown or not names or len(set(names)) != len(names):
            raise ValueError(f"strategies must be distinct names from {', '.join(SIM_STRATEGIES)}; got {names}")
        return names

    @field_validator("seeds")
    @classmethod
    def _distinct_seeds(cls, seeds):
        if not seeds or len(set(seeds)) != len(seeds) or min(seeds) < 0:
            raise ValueError(f"seeds must be distinct non-negative integers; got {seeds}")
        return seeds

    @model_validator(mode="after")
    def _detection_options(self):
        if self.task == "classification" and (self.budget == "boxes" or self.per_box):
            raise ValueError("budget: boxes and per_box need task: detection")
        if self.task == "detection" and self.data is None:
            raise ValueError("task: detection needs data: a Pascal VOC folder or zip "
                             "(e.g. ../shared/data/bccd-voc.zip)")
        return self

    @model_validator(mode="after")
    def _frozen_features(self):
        if self.initial_strategy == "typiclust" and (self.task == "detection" or not self.frozen):
            raise ValueError("initial_strategy: typiclust orders the frozen embeddings of a pretrained backbone: it "
                             "needs task: classification or tagging and weights (frozen features)")
        if self.task == "tagging" and not self.frozen:
            raise ValueError("task: tagging learns a head on frozen features: it needs weights (a pretrained "
                             "backbone) and mode auto or frozen")
        return self

    @model_validator(mode="after")
    def _reference_when_needed(self):
        if self.reference_size == 0 and any(s in USES_R for s in self.strategies):
            raise ValueError(f"{', '.join(s for s in self.strategies if s in USES_R)} need a reference set: "
                             f"reference_size must be at least 1")
        return self

    @model_validator(mode="after")
    def _budgets(self):
        """budgets -> initial, step (the first round's) and rounds, so the rest of the protocol reads them."""
        if self.budgets is None:
            return self
        b = self.budgets
        if any(later <= earlier for earlier, later in zip(b, b[1:])):
            raise ValueError(f"budgets must increase from round to round; got {b}")
        if "rounds" in self.model_fields_set and self.rounds > len(b):
            raise ValueError(f"rounds {self.rounds} is more than the {len(b)} budgets")
        rounds = self.rounds if "rounds" in self.model_fields_set else len(b)
        self.__dict__.update(initial=b[0], step=b[1] - b[0] if len(b) > 1 else self.step, rounds=rounds)
        return self

    def step_at(self, round_number: int) -> int:
        """The labels the model of round `round_number` (1, 2, ...; 0 counts as 1) adds: `step`, or the
        budgets' difference."""
        if self.budgets is None:
            return self.step
        r = min(max(round_number, 1), len(self.budgets) - 1)
        return self.budgets[r] - self.budgets[r - 1]

    def labels_at(self, round_number: int) -> int:
        """The labeled count at round `round_number` (1 = the initial set)."""
        return self.budgets[round_number - 1] if self.budgets else self.initial + self.step * (round_number - 1)

    def identity(self) -> dict:
        """The settings the numbers depend on (checked when a run directory is reused)."""
        return self.model_dump(exclude=RESUMABLE)

    @classmethod
    def implied(cls) -> dict:
        """The identity a run directory implies for settings it does not name (made before they existed)."""
        return {**cls().identity(), **BEFORE_IT_EXISTED}


def load_config(path: str | None = None, **overrides) -> SimulationConfig:
    """A JSON protocol file (or the defaults), with `overrides` that are not None on top."""
    values = {}
    if path:
        values = read_protocol(path)
        values.setdefault("out", f"runs/{Path(path).stem}")
    values.update({k: v for k, v in overrides.items() if v is not None})
    return validate(SimulationConfig, values, path or "the simulation settings")
