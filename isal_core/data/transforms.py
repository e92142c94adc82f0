"""Image -> tensor: the CIFAR-style transform for models trained from scratch, and the
preprocessing pretrained weights were trained with."""
from __future__ import annotations

import torch
from torchvision.transforms import v2

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def classification_transform(image_size: int = 32, train: bool = False, mean=CIFAR_MEAN, std=CIFAR_STD):
    """PIL image -> normalized float tensor [3, S, S].

    Always resizes first so pools of mixed image sizes batch together; `train` adds
    the standard CIFAR augmentation (padded random crop + horizontal flip).
    """
    steps = [v2.Resize((image_size, image_size), antialias=True)]
    if train:
        steps += [v2.RandomCrop(image_size, padding=image_size // 8 or None), v2.RandomHorizontalFlip()]
    steps += [v2.ToImage(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(mean), std=list(std))]
    return v2.Compose(steps)


def pretrained_transform(pre, train: bool = False):
    """The preprocessing pretrained weights were trained with (backbones.Preprocessing): resize,
    centre crop (a random crop and flip when `train`), normalise."""
    crop = [v2.RandomCrop(pre.size), v2.RandomHorizontalFlip()] if train else [v2.CenterCrop(pre.size)]
    return v2.Compose([v2.Resize(pre.resize, antialias=True), *crop, v2.ToImage(),
                       v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=list(pre.mean), std=list(pre.std))])
