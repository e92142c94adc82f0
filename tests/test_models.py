"""Model zoo: shapes, the CIFAR ResNet stem, and the single-Linear-head contract."""

import pytest
import torch
from torch import nn

from isal_core.nets.models import build_model, last_linear, resnet18_cifar, small_cnn


def _inplace_modules(model):
    return [n for n, m in model.named_modules() if getattr(m, "inplace", False)]


def test_small_cnn_shape_and_head():
    model = small_cnn(num_classes=7).eval()
    assert model(torch.randn(3, 3, 32, 32)).shape == (3, 7)
    assert model(torch.randn(2, 3, 20, 28)).shape == (2, 7)  # adaptive pooling: any size
    name, fc = last_linear(model)
    assert name == "fc" and fc is model.fc and fc.out_features == 7
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) == 4
    assert _inplace_modules(model) == []
    assert small_cnn(3, in_channels=1).eval()(torch.randn(2, 1, 32, 32)).shape == (2, 3)


def test_resnet18_cifar_stem():
    model = resnet18_cifar(10).eval()
    assert model.conv1.kernel_size == (3, 3) and model.conv1.stride == (1, 1) and model.conv1.bias is None
    assert isinstance(model.maxpool, nn.Identity)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 10)
    assert last_linear(model)[0] == "fc"
    assert _inplace_modules(model) == []


def test_build_model_names():
    assert isinstance(build_model("small_cnn", 4).fc, nn.Linear)
    assert build_model("resnet18_cifar", 4).fc.out_features == 4
    model = build_model("mobilenet_v3_small", 5).eval()
    with torch.no_grad():
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 5)
    name, head = last_linear(model)
    assert name == "classifier.3" and head.out_features == 5
    assert _inplace_modules(model) == []  # torchvision's Hardswish(inplace=True) is switched off


def test_build_model_rejects_unknown_and_headless():
    with pytest.raises(ValueError, match="small_cnn.*resnet18_cifar.*resnet50"):
        build_model("no_such_net", 10)
    with pytest.raises(ValueError, match="squeezenet1_1"):
        build_model("squeezenet1_1", 10)  # conv classifier, no final Linear


def test_last_linear_picks_final_linear():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Sequential(nn.Linear(8, 3)))
    name, head = last_linear(model)
    assert name == "2.0" and head.out_features == 3
    with pytest.raises(ValueError):
        last_linear(nn.Sequential(nn.Conv2d(3, 3, 1)))
