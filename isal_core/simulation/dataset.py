"""A simulation's dataset: train/<class>/* and test/<class>/* (detection: a Pascal VOC tree and
its splits; tagging: train.csv and test.csv of tag lists, data.tags), and the fixed cut of
the test split into ISAL's reference set R and the evaluation set.

The cut uses split seed 0 for every seed and strategy alike, so accuracy is never
measured on the images R steers the selection with. With `validation_size` the "test" split
is a fixed cut of the train split instead, never in the pool: a protocol for choosing
settings that leaves the test images for the runs that report.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, replace

import torch

from ..data.cifar10 import cifar10_root
from ..data.images import ImageRecord, load_records
from ..data.tags import cifar10_mosaics, read_tags
from ..errors import DataError
from .config import SimulationConfig

SPLIT_SEED = 0  # cuts the test split into R and the evaluation set, for every seed alike
VALIDATION_SEED = 1  # cuts validation_size train images off as the test split, for every seed alike


@dataclass
class SimulationData:
    """The dataset's records and the fixed cut of its test split into R and evaluation."""

    root: str
    classes: list[str]
    train: list[ImageRecord]
    test: list[ImageRecord]
    reference: list[int]  # test-split indices: ISAL's R
    evaluation: list[int]  # test-split indices: where the metric is measured

    @classmethod
    def load(cls, config: SimulationConfig) -> SimulationData:
        root = (config.data or cifar10_root()).rstrip("/")
        if config.task == "detection":
            from ..data.boxes import load_voc

            train, classes = load_voc(root, config.train_split)
            test, _ = load_voc(root, config.test_split, classes)
        elif config.task == "tagging":
            root = (config.data or cifar10_mosaics()).rstrip("/")
            classes, train = read_tags(f"{root}/train.csv")
            _, test = read_tags(f"{root}/test.csv", classes)
        else:
            classes, train = load_records(f"{root}/train")
            _, test = load_records(f"{root}/test", classes)
        if config.classes and config.task != "classification":
            raise DataError("classes (keep some class folders) is for classification datasets")
        if config.classes:
            classes, train, test = only(classes, config.classes, train, test, root)
        if config.validation_size:
            train, test = held_out(train, config.validation_size, root)
        if len(classes) < 2:
            if config.task == "classification":
                raise DataError(f"{root}/train has a single class ({classes[0]!r}): a classifier needs at least two")
        order = torch.randperm(len(test), generator=torch.Generator().manual_seed(SPLIT_SEED)).tolist()
        reference, rest = order[:config.reference_size], order[config.reference_size:]
        evaluation = rest[:config.test_subset] if config.test_subset else rest
        if config.test_subset and len(rest) < config.test_subset or not evaluation:
            raise DataError(f"{root}/test holds {len(test)} images: too few for a reference set of "
                            f"{config.reference_size} plus an evaluation set of {config.test_subset or 'at least 1'}")
        return cls(root, classes, train, test, reference, evaluation)

    def records(self, split: str, indices: list[int]) -> list[ImageRecord]:
        source = self.train if split == "train" else self.test
        return [source[i] for i in indices]

    def fingerprint(self) -> dict:
        """Which dataset this is, independent of where it lies: classes, sizes, a hash of ids and labels."""
        digest = hashlib.sha1()
        for split in (self.train, self.test):
            for r in split:
                digest.update(f"{r.id}\t{r.label}\n".encode())
        return {"classes": self.classes, "train": len(self.train), "test": len(self.test), "sha1": digest.hexdigest()}


def only(classes: list[str], keep: list[str], train: list[ImageRecord], test: list[ImageRecord], root: str):
    """The records of the `keep` classes, relabeled 0..len(keep)-1 in that order."""
    unknown = [c for c in keep if c not in classes]
    if unknown:
        raise DataError(f"classes {unknown} are not in {root}/train (it has {classes})")
    index = {classes.index(c): i for i, c in enumerate(keep)}
    pick = lambda records: [replace(r, label=index[r.label]) for r in records if r.label in index]  # noqa: E731
    return list(keep), pick(train), pick(test)


def held_out(train: list[ImageRecord], n: int, root: str) -> tuple[list[ImageRecord], list[ImageRecord]]:
    """(the train records left, `n` of them held out as the test split): a fixed cut, the same for every seed."""
    if n >= len(train):
        raise DataError(f"validation_size {n}: {root}/train holds only {len(train)} images")
    order = torch.randperm(len(train), generator=torch.Generator().manual_seed(VALIDATION_SEED)).tolist()
    return [train[i] for i in sorted(order[n:])], [train[i] for i in sorted(order[:n])]
