"""Classifier architectures for the engine.

Every model here ends in a single `nn.Linear` (found by `last_linear`): it is the `last`
parameter set and its input is the coreset baseline's feature vector. In-place
activations are switched off so hooks a user adds see layer outputs intact; the
engine's own scoring tolerates them either way (tests/test_influence.py has one).
"""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from ..errors import ModelError
from .efficientnet_lite import BUILDERS as LITE_BUILDERS
from .efficientnet_lite import EfficientNetLite

_BUILTIN = ("small_cnn", "resnet18_cifar", *LITE_BUILDERS)
# Auxiliary heads make these return tuples in train mode; we train on the main head only.
_TORCHVISION_KWARGS = {
    "googlenet": {"aux_logits": False, "init_weights": False},
    "inception_v3": {"aux_logits": False, "init_weights": False},
}


class SmallCNN(nn.Module):
    """Four conv+BN+ReLU blocks, three max-pools, global average pool, linear `fc`.

    Cheap enough (~15 MMAC per 32x32 image) to train CIFAR-10 subsets on a CPU in
    seconds per epoch, yet well above chance; used for tests and quick experiments.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 3, widths=(32, 64, 128, 256)):
        super().__init__()
        layers, c_in = [], in_channels
        for i, c_out in enumerate(widths):
            layers += [
                nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=False),
            ]
            if i < len(widths) - 1:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(c_in, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))


def small_cnn(num_classes: int = 10, in_channels: int = 3) -> nn.Module:
    """A small CNN (see SmallCNN) for fast CPU runs."""
    return SmallCNN(num_classes, in_channels)


def resnet18_cifar(num_classes: int = 10) -> nn.Module:
    """ResNet-18 adapted to 32x32 inputs, as in the ISAL paper: a 3x3 stride-1 stem and
    no max-pool, so small images are not downsampled 4x before the first block."""
    model = torchvision.models.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return _no_inplace(model)


def _no_inplace(model: nn.Module) -> nn.Module:
    # torchvision uses e.g. Hardswish(inplace=True) straight after a Linear (mobilenet_v3),
    # which would overwrite that Linear's output under a user's backward hook.
    for module in model.modules():
        if hasattr(module, "inplace"):
            module.inplace = False
    return model


def model_choices() -> list[str]:
    """Names accepted by build_model: our builtins plus torchvision classification models."""
    return list(_BUILTIN) + sorted(torchvision.models.list_models(module=torchvision.models))


def build_model(arch: str, num_classes: int) -> nn.Module:
    """Build an untrained classifier by name (no pretrained weights: runs offline)."""
    if arch == "small_cnn":
        return small_cnn(num_classes)
    if arch == "resnet18_cifar":
        return resnet18_cifar(num_classes)
    if arch in LITE_BUILDERS:
        return LITE_BUILDERS[arch](num_classes)
    if arch not in torchvision.models.list_models(module=torchvision.models):
        raise ModelError(f"unknown model {arch!r}; choose one of: {', '.join(model_choices())}")
    extra = _TORCHVISION_KWARGS.get(arch, {})
    model = _no_inplace(torchvision.models.get_model(arch, weights=None, num_classes=num_classes, **extra))
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not linears or not _ends_in_linear(model, linears[-1]):  # e.g. squeezenet: conv head
        raise ModelError(f"model {arch!r} does not end in a single nn.Linear classifier; pick another")
    return model


def _ends_in_linear(model: nn.Module, name: str) -> bool:
    # Cheap structural check: no parameterised layer is registered after the final Linear.
    names = [n for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))]
    return bool(names) and names[-1] == name


def last_linear(model: nn.Module) -> tuple[str, nn.Linear]:
    """The classifier head: the last registered nn.Linear, as (qualified name, module)."""
    found = None
    for name, module in model.named_modules():
        if isinstance(module, nn.Linear):
            found = (name, module)
    if found is None:
        raise ModelError(f"{type(model).__name__} has no nn.Linear layer")
    return found


def for_inference(model: nn.Module) -> nn.Module:
    """An eval-mode network that computes the same outputs faster on a CPU: BatchNorm folded into the
    convolutions (EfficientNet-Lite) and channels-last memory (2.3x a plain forward pass at 224 px here;
    `python -m bench.embedding`). Feed it channels-last inputs."""
    model = model.eval()
    if isinstance(model, EfficientNetLite):
        model = model.folded()
    return model.to(memory_format=torch.channels_last)
