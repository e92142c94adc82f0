"""Getting CIFAR-10, the one way the simulation, the demo and the tests do it.

`../shared/data/cifar10-jpg.zip` beside the repository (read in place) where it exists;
elsewhere torchvision's download, written once as train/<class>/*.png and
test/<class>/*.png under the user's cache. Either way the result is a dataset root that
`data.load_records(f"{root}/train")` reads.
"""
from __future__ import annotations

import os
from pathlib import Path

from tqdm.auto import tqdm

REPO = Path(__file__).resolve().parents[2]
SHARED_CIFAR10 = REPO.parent / "shared" / "data" / "cifar10-jpg.zip"
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def cifar10_root() -> str:
    """The shared CIFAR-10 zip next to the repository, else CIFAR-10 downloaded to ~/.cache/isal."""
    if SHARED_CIFAR10.is_file():
        return str(SHARED_CIFAR10)
    return str(download_cifar10(cache_dir()))


def cache_dir() -> Path:
    """~/.cache/isal (or $XDG_CACHE_HOME/isal): where made datasets are kept."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "isal"


def download_cifar10(cache: Path) -> Path:
    """torchvision's CIFAR-10 (about 170 MB, once), written as train/<class>/*.png and test/<class>/*.png."""
    from torchvision.datasets import CIFAR10

    folder = cache / "cifar10-png"
    if (folder / ".complete").exists():
        return folder
    for split, train in (("train", True), ("test", False)):
        dataset = CIFAR10(str(cache / "torchvision"), train=train, download=True)
        for i, (image, label) in enumerate(tqdm(dataset, desc=f"writing CIFAR-10 {split}")):
            target = folder / split / dataset.classes[label]
            target.mkdir(parents=True, exist_ok=True)
            image.save(target / f"{i:05d}.png")
    (folder / ".complete").touch()
    return folder
