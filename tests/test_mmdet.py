"""The mmdet FCOS adapter (installed from ../shared/wheels in CI): the same ranking interface as
the torchvision one, per-image influence equal to a per-image loop, training lowers its loss."""
from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader

from isal_core.influence.params import select_parameters
from isal_core.influence.pool import influence, influence_loop
from isal_core.influence.scorer import InfluenceScorer
from isal_core.selection.base import influence_ranking
from isal_core.tasks.mmdet_fcos import mmdet_available

try:
    from test_detection import blob_images, loss_after_training
except ImportError:  # tests/ imported as a package
    from tests.test_detection import blob_images, loss_after_training

needs_mmdet = pytest.mark.needs("mmdet")
try:
    from needs import MMCV_WHEEL as WHEEL
except ImportError:  # tests/ imported as a package
    from tests.needs import MMCV_WHEEL as WHEEL


@pytest.mark.skipif(not WHEEL.exists(), reason="no shared mmcv wheel on this machine")
def test_where_the_shared_wheel_exists_the_mmdet_tests_run_instead_of_skipping():
    assert mmdet_available(), "make install should have installed mmdet and the shared mmcv wheel"


@pytest.fixture(scope="module")
def blobs(tmp_path_factory):
    return blob_images(tmp_path_factory.mktemp("blobs"), 6)


def adapter():
    from isal_core.tasks.mmdet_fcos import MMDetFCOSAdapter

    return MMDetFCOSAdapter(2, "resnet18", min_size=64, max_size=96, score_threshold=0.05)


@needs_mmdet
def test_mmdet_batched_influence_equals_a_per_image_loop_over_its_head(blobs):
    a = adapter()
    torch.manual_seed(0)
    model = a.build_model().eval()
    params = select_parameters(model, "head")
    assert sorted({n.rsplit(".", 1)[0] for n, _ in params}) == ["bbox_head.conv_centerness", "bbox_head.conv_cls",
                                                                  "bbox_head.conv_reg"]
    dataset = a.dataset(blobs)
    s_test = torch.randn(sum(p.numel() for _, p in params), generator=torch.Generator().manual_seed(1)) * 1e-2
    fast = influence(model, a, DataLoader(dataset, batch_size=3, collate_fn=a.collate_fn), s_test, params)
    loop = influence_loop(model, a, dataset, s_test, params)
    assert torch.allclose(fast, loop, rtol=1e-4, atol=1e-7) and fast.abs().min() > 0


@needs_mmdet
def test_mmdet_and_torchvision_adapters_give_the_same_ranking_interface(blobs):
    from isal_core.tasks.detection import DetectionAdapter

    for a in (adapter(), DetectionAdapter(2, min_size=64, max_size=96, score_threshold=0.05)):
        torch.manual_seed(0)
        model = a.build_model().eval()
        params = select_parameters(model, "head")
        scorer = InfluenceScorer(torch.randn(sum(p.numel() for _, p in params)) * 1e-2, [n for n, _ in params])
        scores = scorer.score(model, a, a.dataset(blobs), batch_size=3)
        assert scores.influence.shape == (len(blobs),) and len(scores.predictions) == len(blobs)
        p = scores.predictions[0]
        assert set(p) == {"boxes", "labels", "scores", "size"} and p["size"] == [80, 96]
        assert all(len(b) == 4 for b in p["boxes"]) and all(s >= 0.05 for s in p["scores"])
        ranking = influence_ranking(scores, a, seed=0)
        assert sorted(ranking.order.tolist()) == list(range(len(blobs)))
        assert isinstance(a.unscored(p), bool) and a.cost(p) == len(p["boxes"])


@needs_mmdet
def test_mmdet_training_lowers_the_loss(blobs):
    before, after, _ = loss_after_training(adapter(), blobs, steps=30)
    assert after < 0.9 * before
