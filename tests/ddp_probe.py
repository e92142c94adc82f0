"""Trains one model through Learner.fit, in one process or under torchrun (DDP), and saves it:
    python tests/ddp_probe.py OUT.pt ARCH             (ARCH: mlp, no BatchNorm; small_cnn, BatchNorm)
    torchrun --standalone --nproc-per-node 2 tests/ddp_probe.py OUT.pt ARCH
Used by tests/test_distributed.py and bench/scale.py."""
from __future__ import annotations

import sys

import torch
from torch import nn

from isal_core.data.images import TensorDataset3
from isal_core.learner import Learner
from isal_core.settings import EngineSettings
from isal_core.tasks.classification import ClassificationAdapter
from isal_core.utils import distributed


class MLPAdapter(ClassificationAdapter):
    def build_model(self) -> nn.Module:
        return nn.Sequential(nn.Flatten(), nn.Linear(3 * 32 * 32, 64), nn.ReLU(), nn.Linear(64, 4))


def main(out: str, arch: str) -> None:
    distributed.init_from_env("cpu")
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (90,), generator=g)
    x = torch.randn(90, 3, 32, 32, generator=g) + y.view(-1, 1, 1, 1) * 0.3  # 90 samples, batch 16: 6 batches
    settings = EngineSettings(arch="small_cnn", epochs=3, min_steps=0, batch_size=16, lr=0.05, device="cpu")
    adapter = (MLPAdapter if arch == "mlp" else ClassificationAdapter)(arch="small_cnn", num_classes=4,
                                                                       image_size=32)
    model = Learner(adapter, settings, seed=0).fit(TensorDataset3(x, y))
    if distributed.rank_and_size()[0] == 0:
        torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, out)
    distributed.finish()  # a gloo group left open can abort a rank at exit ("terminate called ...")


if __name__ == "__main__":
    main(*sys.argv[1:3])
