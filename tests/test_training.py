"""Training loop, schedule, evaluation and checkpoints through the adapter (tiny synthetic data, CPU)."""

import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from isal_core.data.images import TensorDataset3
from isal_core.errors import ConfigError
from isal_core.nets.models import small_cnn
from isal_core.settings import EngineSettings, TrainSettings
from isal_core.tasks.classification import ClassificationAdapter
from isal_core.train import evaluation
from isal_core.train.checkpoints import load_checkpoint, save_checkpoint
from isal_core.train.loop import build_optimizer, milestone_epochs, train
from isal_core.utils.runtime import resolve_device, seed_everything

ADAPTER = ClassificationAdapter()


def TrainConfig(seed=0, **kw):
    """Training settings, plus the seed the loop takes beside them."""
    settings = TrainSettings(**kw)
    settings.__dict__["_seed"] = seed
    return settings


def train_classifier(model, dataset, settings, progress=False):
    return train(model, ADAPTER, dataset, settings, seed=settings.__dict__.get("_seed", 0), progress=progress)


def evaluate(model, dataset, batch_size=256):
    return evaluation.evaluate(model, ADAPTER, DataLoader(dataset, batch_size=batch_size), "cpu")


def predict_logits(model, dataset, device="cpu", batch_size=256):
    loader = DataLoader(dataset, batch_size=batch_size)
    chunks = [out for out, _, _ in evaluation.outputs(model, ADAPTER, loader, device)]
    return torch.cat(chunks) if chunks else torch.empty(0, 3)


def two_color_dataset(n=32, size=12, noise=0.1, seed=0):
    """Class 0 reddish, class 1 bluish constant images: trivially separable."""
    g = torch.Generator().manual_seed(seed)
    colors = torch.tensor([[1.0, -1.0, -1.0], [-1.0, -1.0, 1.0]])
    y = torch.arange(n) % 2
    x = colors[y][:, :, None, None].expand(n, 3, size, size) + noise * torch.randn(n, 3, size, size, generator=g)
    return TensorDataset3(x.contiguous(), y)


def random_dataset(n=40, classes=3, seed=1):
    g = torch.Generator().manual_seed(seed)
    return TensorDataset3(torch.randn(n, 3, 8, 8, generator=g), torch.randint(0, classes, (n,), generator=g))


def fast_config(**kw):
    base = dict(epochs=2, lr=0.05, batch_size=8, seed=0)
    base.update(kw)
    return TrainConfig(**base)


def _trained(seed, data_seed=1):
    torch.manual_seed(123)  # identical init; only the training seed varies
    model = small_cnn(3)
    return train_classifier(model, random_dataset(seed=data_seed), fast_config(seed=seed), progress=False)


def test_one_set_of_defaults_and_the_papers_milestone():
    cfg = EngineSettings()
    assert (cfg.epochs, cfg.lr, cfg.momentum, cfg.weight_decay, cfg.batch_size) == (30, 0.05, 0.9, 5e-4, 64)
    assert milestone_epochs(TrainSettings(epochs=200)) == [160]  # the paper's lr drop at epoch 160 of 200


def test_lr_drops_at_80_percent_of_epochs():
    cfg = TrainConfig(epochs=10, lr=0.1, gamma=0.1)
    optimizer, scheduler = build_optimizer(small_cnn(2), cfg)
    lrs = []
    for _ in range(cfg.epochs):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert lrs[:8] == pytest.approx([0.1] * 8) and lrs[8:] == pytest.approx([0.01] * 2)
    assert milestone_epochs(TrainConfig(epochs=20, milestones=[0.5, 0.75])) == [10, 15]


def test_seeded_training_is_reproducible():
    a, b, c = _trained(seed=5), _trained(seed=5), _trained(seed=6)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["fc.weight"], sc["fc.weight"])  # the seed drives shuffling
    assert not a.training  # returned in eval mode


def test_small_cnn_fits_separable_data():
    ds = two_color_dataset()
    torch.manual_seed(0)
    model = train_classifier(small_cnn(2), ds, fast_config(epochs=6), progress=False)
    assert evaluate(model, ds) == 1.0
    flipped = TensorDataset3(ds.x, 1 - ds.y)
    assert evaluate(model, flipped) == 0.0


def test_train_rejects_empty_unlabeled_and_nan():
    with pytest.raises(ValueError, match="empty"):
        train_classifier(small_cnn(2), TensorDataset3(torch.zeros(0, 3, 8, 8), torch.zeros(0)), fast_config())
    ds = random_dataset(n=8)
    ds.y[3] = -1
    with pytest.raises(ValueError, match="unlabeled"):
        train_classifier(small_cnn(3), ds, fast_config(), progress=False)

    class NoLabelsAttr(Dataset):  # labels only visible per batch
        def __len__(self):
            return 4

        def __getitem__(self, i):
            return torch.zeros(3, 8, 8), -1, i

    with pytest.raises(ValueError, match="unlabeled"):
        train_classifier(small_cnn(3), NoLabelsAttr(), fast_config(), progress=False)
    bad = random_dataset(n=8)
    bad.x[0, 0, 0, 0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN/inf at epoch 1 step 1"):
        train_classifier(small_cnn(3), bad, fast_config(batch_size=8), progress=False)


def test_batch_of_one_is_not_fed_to_batchnorm():
    # 9 items, batch 8 -> a trailing batch of 1 would crash BatchNorm in train mode
    train_classifier(small_cnn(3), random_dataset(n=9), fast_config(epochs=1), progress=False)


def test_predict_logits_and_evaluate():
    ds = random_dataset(n=10)
    torch.manual_seed(0)
    model = small_cnn(3).eval()
    logits = predict_logits(model, ds, "cpu", batch_size=3)
    with torch.no_grad():
        expected = model(ds.x)
    assert logits.shape == (10, 3) and torch.allclose(logits, expected, atol=1e-5)
    acc = evaluate(model, ds, batch_size=4)
    assert acc == pytest.approx((expected.argmax(1) == ds.y).float().mean().item())
    empty = TensorDataset3(torch.zeros(0, 3, 8, 8), torch.zeros(0))
    assert predict_logits(model, empty, "cpu").shape == (0, 3)
    with pytest.raises(ValueError):
        evaluate(model, empty)


def test_checkpoint_round_trip(tmp_path):
    ds = two_color_dataset(n=8)
    torch.manual_seed(0)
    model = train_classifier(small_cnn(2), ds, fast_config(epochs=1), progress=False)
    meta = {"arch": "small_cnn", "num_classes": 2, "classes": ["red", "blue"], "mean": (0.5, 0.5, 0.5)}
    path = tmp_path / "ckpt" / "model.pt"
    save_checkpoint(path, model, meta)
    save_checkpoint(path, model, meta)  # overwrite in place
    assert os.listdir(path.parent) == ["model.pt"]  # no temp files left behind
    loaded, meta2 = load_checkpoint(str(path))
    assert meta2["classes"] == ["red", "blue"] and meta2["num_classes"] == 2
    assert not loaded.training
    assert torch.equal(predict_logits(loaded, ds, "cpu"), predict_logits(model, ds, "cpu"))


def test_checkpoint_errors(tmp_path):
    save_checkpoint(tmp_path / "m.pt", small_cnn(2), {"num_classes": 2})
    with pytest.raises(ValueError, match="arch"):  # a classifier checkpoint must name its architecture
        load_checkpoint(tmp_path / "m.pt")
    with pytest.raises(ValueError, match="JSON"):
        save_checkpoint(tmp_path / "m.pt", small_cnn(2), {"arch": "small_cnn", "num_classes": 2, "x": object()})
    missing = tmp_path / "missing.pt"
    with pytest.raises(ValueError, match="missing.pt"):
        load_checkpoint(missing)
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pt"):
        load_checkpoint(corrupt)


def test_seed_and_device_helpers():
    seed_everything(3)
    a = torch.rand(3)
    seed_everything(3)
    assert torch.equal(a, torch.rand(3))
    expected = "cuda" if torch.cuda.is_available() else "cpu"
    assert resolve_device("auto").type == expected and resolve_device(None).type == expected
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            resolve_device("cuda")


def test_images_too_small_for_the_architecture_are_refused_before_training():
    with pytest.raises(ConfigError, match=r"4 x 4 px are too small for small_cnn.* 16 or more"):
        ClassificationAdapter("small_cnn", 3, image_size=4).build_model()
    model = ClassificationAdapter("small_cnn", 3, image_size=8).build_model()  # the smallest it takes
    assert model.training  # the probe leaves the fresh model in training mode


def test_a_diverging_training_recovers_at_a_lower_lr_and_says_so():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(48, 16, generator=g)
    data = TensorDataset3(x, (x[:, 0] > 0).long())  # separable on one coordinate
    settings = TrainConfig(epochs=20, lr=1e5, batch_size=16, min_steps=0)  # weight decay x lr = 50: blows up
    with pytest.raises(FloatingPointError):  # the unrecovered run really diverges
        from isal_core.train.loop import _train_once
        _train_once(torch.nn.Linear(16, 2), ADAPTER, data, settings, 0, "cpu", 0, False)
    heard = []
    torch.manual_seed(0)
    model = train(torch.nn.Linear(16, 2), ADAPTER, data, settings, warn=heard.append)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert len(heard) == 1 and "diverged at lr 100000" in heard[0] and "at lr 10000 with gradients clipped" in heard[0]
    calm = []
    train(torch.nn.Linear(16, 2), ADAPTER, data, TrainConfig(epochs=5, lr=0.1, batch_size=16), warn=calm.append)
    assert calm == []  # a training that converges hears nothing
