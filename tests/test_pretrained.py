"""Pretrained backbones, frozen features with an embedding cache, and a floor of optimizer steps.

Nothing is downloaded: a test writes the "pretrained" file itself into torchvision's cache
(TORCH_HOME) or passes a file, as the issue asks.
"""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import pytest
import torch
import torchvision
from PIL import Image
from torch.utils.data import DataLoader

from isal_core.data.images import ImageRecord
from isal_core.errors import ModelError
from isal_core.influence.gradients import HessianOperator, collect_batches, reference_gradient
from isal_core.influence.params import select_parameters
from isal_core.influence.pool import influence_loop
from isal_core.learner import Learner
from isal_core.settings import EngineSettings, ModelSettings, TrainSettings
from isal_core.tasks.classification import ClassificationAdapter
from isal_core.tasks.frozen import FrozenFeatureAdapter, classification_adapter
from isal_core.train.loop import scheduled_epochs, train

ARCH = "resnet18"  # a torchvision classifier with weights, fast enough on a CPU at 224 px
COLORS = {"red": (200, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 200)}


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    """torchvision's cache, holding a stand-in for the ImageNet weights (random, made here)."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("ISAL_OFFLINE", "1")
    weights = torchvision.models.get_model_weights(ARCH).DEFAULT
    torch.manual_seed(7)
    state = torchvision.models.get_model(ARCH, num_classes=1000).state_dict()
    file = tmp_path / "torch" / "hub" / "checkpoints" / weights.url.rsplit("/", 1)[-1]
    file.parent.mkdir(parents=True)
    torch.save(state, file)
    return file, state


def images(folder, per_class=8, shade=0):
    g = torch.Generator().manual_seed(shade)
    records = []
    for label, (name, rgb) in enumerate(COLORS.items()):
        for i in range(per_class):
            noise = (torch.randn(32, 32, 3, generator=g) * 40).clamp(-90, 90)
            pixels = (torch.tensor(rgb).float() + noise).clamp(0, 255).to(torch.uint8).numpy()
            path = folder / f"{name}-{shade}-{i}.png"
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(pixels).save(path)
            records.append(ImageRecord(path.name, str(path), label))
    return records


# ---------------------------------------------------------------------------
# a floor of optimizer steps


def test_small_labeled_sets_get_at_least_min_steps():
    settings = TrainSettings(epochs=3, min_steps=40, batch_size=8)
    assert scheduled_epochs(settings, steps_per_epoch=2) == 20  # 100 labels would get 6 steps otherwise
    assert scheduled_epochs(settings, steps_per_epoch=50) == 3  # a large set keeps its epochs
    assert scheduled_epochs(TrainSettings(epochs=3, min_steps=0), 2) == 3
    steps = []
    model = torch.nn.Linear(4, 2)
    model.register_forward_hook(lambda m, i, o: steps.append(1) if m.training else None)
    from isal_core.data.images import TensorDataset3

    data = TensorDataset3(torch.randn(12, 4), torch.arange(12) % 2)
    train(model, ClassificationAdapter(), data, settings)
    assert len(steps) == 40  # 2 batches per epoch, raised from 3 to 20 epochs


# ---------------------------------------------------------------------------
# pretrained weights


def test_weights_by_torchvision_name_come_from_its_cache_with_their_preprocessing(torch_home):
    file, state = torch_home
    adapter = ClassificationAdapter(ARCH, 3, weights="DEFAULT")
    model = adapter.build_model()
    own = model.state_dict()
    assert all(torch.equal(own[k], v) for k, v in state.items() if not k.startswith("fc."))
    assert own["fc.weight"].shape == (3, 512)  # a new head for the task's classes
    pre = adapter.pretrained.preprocessing
    assert (pre.size, pre.resize, pre.mean) == (224, 256, (0.485, 0.456, 0.406))
    assert adapter.pretrained.identity == "ResNet18_Weights.IMAGENET1K_V1"
    assert ClassificationAdapter(ARCH, 3, weights="ResNet18_Weights.IMAGENET1K_V1").pretrained.identity \
        == adapter.pretrained.identity


def test_offline_without_the_cached_file_names_it(torch_home):
    file, _ = torch_home
    file.unlink()
    with pytest.raises(ModelError, match=f"put the file at {file}"):
        ClassificationAdapter(ARCH, 3, weights="DEFAULT").build_model()
    with pytest.raises(ModelError, match="unknown weights 'IMAGENET9K'"):
        ClassificationAdapter(ARCH, 3, weights="IMAGENET9K").build_model()


def test_a_local_checkpoint_file_and_weights_that_do_not_fit(tmp_path, torch_home):
    _, state = torch_home
    path = tmp_path / "mine.pt"
    torch.save({"state_dict": state}, path)
    model = ClassificationAdapter(ARCH, 3, weights=str(path)).build_model()
    assert torch.equal(model.state_dict()["conv1.weight"], state["conv1.weight"])
    torch.save(torchvision.models.mobilenet_v3_small().state_dict(), tmp_path / "other.pt")
    with pytest.raises(ModelError, match="do not fit this architecture"):
        ClassificationAdapter(ARCH, 3, weights=str(tmp_path / "other.pt")).build_model()
    with pytest.raises(ModelError, match="does not exist"):
        ClassificationAdapter(ARCH, 3, weights=str(tmp_path / "missing.pt")).build_model()


# ---------------------------------------------------------------------------
# frozen features


def frozen(tmp_path, weights="DEFAULT"):
    settings = ModelSettings(arch=ARCH, weights=weights, embedding_cache=str(tmp_path / "cache"))
    adapter = classification_adapter(settings, 3, "cpu", 16)
    assert isinstance(adapter, FrozenFeatureAdapter)  # auto mode: weights given -> frozen
    return adapter


def test_the_embedding_cache_computes_each_image_once(tmp_path, torch_home, caplog):
    records = images(tmp_path / "img", per_class=3)
    adapter = frozen(tmp_path)
    first = adapter.dataset(records)
    assert first.x.shape == (9, 512)
    again = frozen(tmp_path)
    assert torch.equal(again.dataset(records).x, first.x)
    assert again.cache.stats["computed"] == 0 and again.cache.stats["hits"] == 9  # a second job computes none

    Image.new("RGB", (32, 32), (1, 2, 3)).save(records[0].path)  # a changed image misses the cache
    changed = frozen(tmp_path)
    x = changed.dataset(records).x
    assert changed.cache.stats["computed"] == 1 and not torch.equal(x[0], first.x[0])

    with open(records[1].path, "rb") as f:
        entry = changed.cache.path(changed.backbone_id, hashlib.sha256(f.read()).hexdigest())
    entry.write_bytes(b"garbage")  # a corrupt entry is recomputed, with a warning
    with caplog.at_level(logging.WARNING):
        repaired = frozen(tmp_path)
        assert torch.allclose(repaired.dataset(records).x[1], first.x[1], rtol=1e-4, atol=1e-6)
    assert repaired.cache.stats["corrupt"] == 1 and "corrupt" in caplog.text

    entry = repaired.cache.path(repaired.backbone_id, hashlib.sha256(Path(records[2].path).read_bytes()).hexdigest())
    older = entry.with_suffix(".pt")  # an entry of an older format is not read: the image is embedded again
    torch.save(first.x[2].float() + 1, older)
    entry.unlink()
    rebuilt = frozen(tmp_path)
    assert torch.allclose(rebuilt.dataset(records).x[2], first.x[2], rtol=1e-4, atol=1e-6)
    assert rebuilt.cache.stats["computed"] == 1 and entry.is_file()

    other = tmp_path / "other.pt"  # another backbone (other weights) has entries of its own
    torch.save({k: v + 1 for k, v in torch_home[1].items()}, other)
    swapped = frozen(tmp_path, str(other))
    swapped.dataset(records)
    assert swapped.backbone_id != adapter.backbone_id and swapped.cache.stats["computed"] == 9


def test_a_later_job_hashes_no_image_it_embedded_before(tmp_path, torch_home, monkeypatch):
    """The digests of embedded images are kept beside the cache: a fresh adapter (the next job, another process)
    reads only the cache entries, no image bytes, unless an image changed (its size or mtime)."""
    import isal_core.tasks.frozen as frozen_module

    records = images(tmp_path / "img", per_class=3)
    first = frozen(tmp_path).dataset(records)
    reads = []
    real = frozen_module.read_bytes
    monkeypatch.setattr(frozen_module, "read_bytes", lambda path: reads.append(path) or real(path))
    again = frozen(tmp_path)
    assert torch.equal(again.dataset(records).x, first.x) and reads == [] and again.cache.stats["computed"] == 0
    Image.new("RGB", (32, 32), (9, 9, 9)).save(records[4].path)  # changed: hashed (and embedded) again
    changed = frozen(tmp_path)
    changed.dataset(records)
    assert reads == [records[4].path] and changed.cache.stats["computed"] == 1
    (tmp_path / "cache" / "digests.json").write_text("{not json")  # an unreadable memo: everything hashed again
    assert torch.equal(frozen(tmp_path).dataset(records[:2]).x, first.x[:2]) and len(reads) == 3


def test_frozen_isal_is_exact_on_the_head(tmp_path, torch_home):
    adapter = frozen(tmp_path)
    labeled, reference, pool = (adapter.dataset(images(tmp_path / name, 4, shade)) for name, shade in
                                (("labeled", 1), ("reference", 2), ("pool", 3)))
    settings = EngineSettings(arch=ARCH, weights="DEFAULT", epochs=3, min_steps=0, lr=0.01, batch_size=16,
                              damping=0.1, cg_tol=1e-12, cg_iters=500, params="all", hessian_samples=0)
    result = Learner(adapter, settings, seed=0).round("isal", labeled, pool, reference)
    head = result.model
    assert isinstance(head, torch.nn.Linear) and head.in_features == 512

    params = select_parameters(head, "all")
    trained_on = head.semi_training_set  # the default learner on frozen features: labels and trusted pool tasks
    assert len(trained_on) > len(labeled)
    op = HessianOperator(head, adapter, params, collect_batches(adapter, DataLoader(trained_on, batch_size=16), "cpu"))
    v = reference_gradient(head, adapter, DataLoader(reference, batch_size=16), params)
    dense = op.dense().double()
    exact = torch.linalg.solve(dense + settings.damping * torch.eye(op.dim, dtype=torch.float64), v.double())
    assert ((result.scorer.s_test.double() - exact).norm() / exact.norm()) < 1e-5

    loop = influence_loop(head, adapter, pool, result.scorer.s_test, params).double()
    assert loop.abs().min() > 0 and ((result.scores.influence - loop).norm() / loop.norm()) < 1e-4
