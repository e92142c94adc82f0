"""Frozen-feature mode: a pretrained backbone embeds each image once; every round trains a small head.

The embedding of an image is cached on disk, keyed by the image's content and the
backbone (architecture, exact weights, preprocessing), so a second job over the same
images computes nothing; a changed image or backbone misses the cache, and a corrupt
entry is recomputed with a warning. The round then trains a linear (or MLP) head on the
embeddings in seconds, and ISAL takes influence over the head's parameters, whose
Hessian is small enough to solve to convergence.

`classification_adapter(settings, num_classes)` is how every front end gets its adapter:
the whole network (from scratch or fine-tuned) or, in frozen mode, this one.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from ..data.images import ImageDataset, _split_zip, read_bytes
from ..errors import ModelError
from ..nets.models import for_inference, last_linear
from ..settings import ModelSettings
from ..utils.atomic import atomic_write
from ..utils.progress import track
from ..utils.runtime import resolve_device
from .classification import ClassificationAdapter

log = logging.getLogger(__name__)

DEFAULT_CACHE = Path.home() / ".cache" / "isal" / "embeddings"


class EmbeddingCache:
    """folder/<backbone id>/<sha256 of the image bytes>.npy, one float32 vector each.

    Raw .npy, not torch.save: a job after the first reads every entry of the project, and
    np.load is about twice as fast (`python -m bench.embedding_cache`: 5,100 entries in 0.50 s
    against 0.95 s)."""

    SUFFIX = ".npy"
    #: (path, size, mtime) -> sha256 of the images embedded so far, kept beside the entries (the newest this many)
    DIGESTS, MAX_DIGESTS = "digests.json", 500_000

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self.stats: Counter = Counter()  # hits, computed, corrupt
        self._memory: dict[tuple[str, str], torch.Tensor] = {}  # what this process read or computed already
        self._digests: dict[str, str] | None = None
        self._new_digests = 0

    def digest(self, path: str) -> str:
        """sha256 of an image's bytes, remembered on disk while the file (or its zip archive) keeps its size and
        mtime: a later job (another process) reads no image it embedded before, only the entries."""
        if self._digests is None:
            self._digests = self._read_digests()
        split = _split_zip(path)
        stat = os.stat(split[0] if split else path)
        key = f"{os.path.abspath(path)}\t{stat.st_dev}:{stat.st_ino}\t{stat.st_size}\t{stat.st_mtime_ns}"
        found = self._digests.get(key)
        if found is None:
            found = self._digests[key] = hashlib.sha256(read_bytes(path)).hexdigest()
            self._new_digests += 1
        return found

    def save_digests(self) -> None:
        """Write the digests learned since the last save (the newest MAX_DIGESTS; another process's save may
        win a race: they are only a memo)."""
        if not self._new_digests or self._digests is None:
            return
        kept = dict(list(self._digests.items())[-self.MAX_DIGESTS:])
        self.folder.mkdir(parents=True, exist_ok=True)
        with atomic_write(self.folder / self.DIGESTS, "w") as f:
            json.dump(kept, f)
        self._new_digests = 0

    def _read_digests(self) -> dict[str, str]:
        try:
            found = json.loads((self.folder / self.DIGESTS).read_text())
            return found if isinstance(found, dict) else {}
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            log.warning("%s is unreadable (%s): the images are hashed again", self.folder / self.DIGESTS, exc)
            return {}

    def summary(self) -> dict:
        """What the cache saved so far: {"hits", "computed", "corrupt"} (for a job's report)."""
        return {k: self.stats[k] for k in ("hits", "computed", "corrupt")}

    def path(self, backbone: str, digest: str, suffix: str = SUFFIX) -> Path:
        return self.folder / backbone / digest[:2] / f"{digest}{suffix}"

    def get(self, backbone: str, digest: str) -> torch.Tensor | None:
        path = self.path(backbone, digest)
        if (backbone, digest) in self._memory:
            self.stats["hits"] += 1
            self._touch(path)
            return self._memory[backbone, digest]
        if not path.is_file():
            return None
        try:
            value = torch.from_numpy(np.load(path, allow_pickle=False))
            if value.ndim != 1 or not torch.isfinite(value).all():
                raise ValueError("not a finite vector")
        except Exception as exc:
            self.stats["corrupt"] += 1
            log.warning("embedding cache entry %s is corrupt (%s): computing it again", path, exc)
            return None
        self.stats["hits"] += 1
        self._touch(path)
        self._memory[backbone, digest] = value
        return value

    @staticmethod
    def _touch(path: Path) -> None:
        """A hit refreshes the entry's access time: a capped cache drops the least recently used first."""
        try:
            os.utime(path, ns=(time.time_ns(), path.stat().st_mtime_ns))
        except OSError:
            pass  # pruned meanwhile: the memory copy still serves this process

    def put(self, backbone: str, digest: str, value: torch.Tensor) -> None:
        self.stats["computed"] += 1
        value = value.detach().float().cpu().clone()
        self._write(self.path(backbone, digest), value)
        self._memory[backbone, digest] = value

    @staticmethod
    def _write(path: Path, value: torch.Tensor) -> None:
        with atomic_write(path, "wb") as f:
            np.save(f, value.numpy(), allow_pickle=False)


class Embeddings(Dataset):
    """(embedding, label or -1, index) items."""

    def __init__(self, x: torch.Tensor, labels: list):
        self.x, self.labels = x, labels

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        label = self.labels[i]
        return self.x[i], (-1 if label is None else label), i


class FrozenFeatureAdapter(ClassificationAdapter):
    """Classification on cached embeddings of a frozen pretrained backbone; the model is the head."""

    learns_from_pool = True

    def __init__(self, arch: str, num_classes: int, weights: str, cache: EmbeddingCache, head: str = "linear",
                 image_size: int = 224, device="auto", batch_size: int = 64):
        super().__init__(arch, num_classes, image_size, weights)
        self.cache, self.head, self.device, self.batch_size = cache, head, resolve_device(device), batch_size
        self._backbone: nn.Module | None = None
        self._dim = 0

    def to_meta(self) -> dict:
        return {**super().to_meta(), "adapter": "frozen", "head": self.head, "backbone": self.backbone_id}

    @property
    def backbone_id(self) -> str:
        pre = self.pretrained.preprocessing
        text = f"{self.arch}|{self.pretrained.identity}|{pre}"
        return f"{self.arch}-{hashlib.sha256(text.encode()).hexdigest()[:16]}"

    def backbone(self) -> nn.Module:
        """The pretrained network without its classifier (built once, eval mode)."""
        if self._backbone is None:
            with torch.random.fork_rng(devices=[]):  # a head's seeded init never depends on when this ran
                model = super().build_model()
            name, linear = last_linear(model)
            self._dim = linear.in_features
            parent = model.get_submodule(name.rsplit(".", 1)[0]) if "." in name else model
            setattr(parent, name.rsplit(".", 1)[-1], nn.Identity())
            self._backbone = for_inference(model.to(self.device))
        return self._backbone

    @property
    def dim(self) -> int:
        """The embedding size (the input of the network's classifier)."""
        self.backbone()
        return self._dim

    def build_model(self) -> nn.Module:
        """The head, in float64: it is small, and s_test on it is then a converged, exact solve."""
        if self.head == "mlp":
            head = nn.Sequential(nn.Linear(self.dim, 256), nn.ReLU(), nn.Linear(256, self.num_classes))
        else:
            head = nn.Linear(self.dim, self.num_classes)
        return head.double()

    def dataset(self, records, train=False) -> Embeddings:
        """The records' embeddings (from the cache, or computed once); the same with or without `train`."""
        backbone = self.backbone_id
        digests = [self.cache.digest(r.path) for r in records]
        self.cache.save_digests()
        found = [self.cache.get(backbone, d) for d in digests]
        todo = [i for i, f in enumerate(found) if f is None]
        if todo:
            images = ImageDataset([records[i] for i in todo], self.transform(train=False))
            with torch.no_grad():
                batches = track(DataLoader(images, batch_size=self.batch_size), "embedding images (batches)")
                for batch_start, (x, _, _) in zip(range(0, len(todo), self.batch_size), batches):
                    out = self.backbone()(x.to(self.device, memory_format=torch.channels_last)).float().cpu()
                    for k, value in enumerate(out):
                        i = todo[batch_start + k]
                        self.cache.put(backbone, digests[i], value)
                        found[i] = value
        x = torch.stack(found).double() if found else torch.empty(0, self.dim, dtype=torch.float64)
        return Embeddings(x, [r.label for r in records])

    def embed(self, model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
        return inputs  # the embeddings are the features (coreset)


def classification_adapter(settings: ModelSettings, num_classes: int, device="auto",
                           batch_size: int = 64) -> ClassificationAdapter:
    """The adapter `settings` describe: the whole classifier, or a head on frozen pretrained features."""
    if not settings.frozen:
        return ClassificationAdapter(settings.arch, num_classes, settings.image_size, settings.weights)
    if settings.weights is None:
        raise ModelError("frozen mode needs pretrained weights (ISAL_WEIGHTS / --weights): a frozen random "
                         "backbone gives meaningless features")
    cache = EmbeddingCache(settings.embedding_cache or DEFAULT_CACHE)
    return FrozenFeatureAdapter(settings.arch, num_classes, settings.weights, cache, settings.head,
                                settings.image_size, device, batch_size)
