"""FCOS on mmdet 3.x (the paper's own stack), used when mmdet is installed.

The same ranking interface as the torchvision adapter (it subclasses DetectionAdapter:
pseudo-boxes, predictions, unscored images, costs and mAP are shared); only the network
differs. mmdet's FCOS loss, like torchvision's, is normalised over the batch, so `loss`
applies the head's `loss_by_feat` to each image's slice of the per-level outputs; the
head's final convolutions (`conv_cls`, `conv_reg`, `conv_centerness`) are plain Conv2d
layers, so the scorer's fast path works unchanged. Images are resized here with FCOS's
rule (shorter side min_size, longer at most max_size), as mmdet's pipeline would.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError, NonFiniteError
from .detection import DetectionAdapter, scale_boxes


def mmdet_available() -> bool:
    try:
        import mmcv.ops  # noqa: F401  (mmdet's FCOS needs the compiled ops)
        import mmdet  # noqa: F401
    except Exception:  # ImportError, or a broken mmcv build
        return False
    return True


def fcos_config(num_classes: int, depth: int = 18, score_thr: float = 0.05) -> dict:
    """mmdet's FCOS (fcos_r50-caffe_fpn_gn-head) with a ResNet of `depth`, no pretrained init."""
    channels = [64, 128, 256, 512] if depth in (18, 34) else [256, 512, 1024, 2048]
    return dict(
        type="FCOS",
        data_preprocessor=dict(type="DetDataPreprocessor", mean=[123.675, 116.28, 103.53], std=[58.395, 57.12, 57.375],
                               bgr_to_rgb=False, pad_size_divisor=32),
        backbone=dict(type="ResNet", depth=depth, num_stages=4, out_indices=(0, 1, 2, 3), frozen_stages=-1,
                      norm_cfg=dict(type="BN", requires_grad=False), norm_eval=True, style="pytorch"),
        neck=dict(type="FPN", in_channels=channels, out_channels=256, start_level=1, add_extra_convs="on_output",
                  num_outs=5, relu_before_extra_convs=True),
        bbox_head=dict(type="FCOSHead", num_classes=num_classes, in_channels=256, stacked_convs=4, feat_channels=256,
                       strides=[8, 16, 32, 64, 128],
                       loss_cls=dict(type="FocalLoss", use_sigmoid=True, gamma=2.0, alpha=0.25, loss_weight=1.0),
                       loss_bbox=dict(type="IoULoss", loss_weight=1.0),
                       loss_centerness=dict(type="CrossEntropyLoss", use_sigmoid=True, loss_weight=1.0)),
        test_cfg=dict(nms_pre=1000, min_bbox_size=0, score_thr=score_thr, nms=dict(type="nms", iou_threshold=0.5),
                      max_per_img=100))


@dataclass
class MMDetOutputs:
    """Per-level head outputs of a batch (cls_scores, bbox_preds, centernesses) and its image metas."""

    model: nn.Module
    head: tuple[list[Tensor], list[Tensor], list[Tensor]]
    metas: list[dict]
    original: list[tuple[int, int]]
    _found: list | None = field(default=None, repr=False)  # post-processed once

    def __len__(self) -> int:
        return len(self.metas)

    def image(self, i: int):
        return [[level[i:i + 1] for level in part] for part in self.head]

    def detections(self) -> list[dict[str, Tensor]]:
        if self._found is not None:
            return self._found
        found = self.model.bbox_head.predict_by_feat(*self.head, batch_img_metas=self.metas, rescale=False)
        self._found = [{"boxes": scale_boxes(r.bboxes, m["img_shape"], size), "scores": r.scores,
                        "labels": r.labels} for r, m, size in zip(found, self.metas, self.original)]
        return self._found


class MMDetFCOSAdapter(DetectionAdapter):
    """DetectionAdapter's interface on mmdet's FCOS (ResNet-18/34/50/101 FPN)."""

    DEPTHS = {"resnet18": 18, "resnet34": 34, "resnet50": 50, "resnet101": 101}

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if not mmdet_available():
            raise ConfigError("the mmdet adapter needs mmdet 3.x and mmcv with its ops: pip install mmengine==0.10.7 "
                              "mmdet==3.3.0 and an mmcv 2.1 build for your torch")

    def to_meta(self) -> dict:
        return {**super().to_meta(), "adapter": "mmdet_fcos"}

    def build_model(self) -> nn.Module:
        from mmdet.registry import MODELS
        from mmdet.utils import register_all_modules
        from mmengine.config import ConfigDict

        register_all_modules()
        cfg = fcos_config(self.num_classes, self.DEPTHS[self.backbone], min(0.05, self.score_threshold))
        model = MODELS.build(ConfigDict(cfg))
        model.init_weights()
        return model

    def _resize(self, image: Tensor) -> Tensor:
        h, w = image.shape[-2:]
        scale = min(self.min_size / min(h, w), self.max_size / max(h, w))
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0]

    def forward(self, model: nn.Module, inputs: list[Tensor]) -> MMDetOutputs:
        from mmdet.structures import DetDataSample

        original = [tuple(img.shape[-2:]) for img in inputs]
        resized = [self._resize(img) * 255.0 for img in inputs]
        samples = []
        for img, size in zip(resized, original):
            sample = DetDataSample()
            shape = tuple(img.shape[-2:])
            sample.set_metainfo({"img_shape": shape, "ori_shape": size,
                                 "scale_factor": (shape[1] / size[1], shape[0] / size[0])})
            samples.append(sample)
        data = model.data_preprocessor({"inputs": resized, "data_samples": samples}, training=False)
        head = model.bbox_head(model.extract_feat(data["inputs"]))
        return MMDetOutputs(model, head, [s.metainfo for s in data["data_samples"]], original)

    def loss(self, outputs: MMDetOutputs, targets: list[dict[str, Tensor]]) -> Tensor:
        from mmengine.structures import InstanceData

        losses = []
        for i, target in enumerate(targets):
            meta = outputs.metas[i]
            truth = InstanceData(bboxes=scale_boxes(target["boxes"].float(), outputs.original[i], meta["img_shape"]),
                                 labels=target["labels"])
            parts = outputs.model.bbox_head.loss_by_feat(*outputs.image(i), [truth], [meta])
            losses.append(sum(parts.values()))
        return torch.stack(losses)

    def check_finite(self, outputs: MMDetOutputs, indices) -> None:
        if not all(torch.isfinite(level).all() for part in outputs.head for level in part):
            raise NonFiniteError(f"the detector's outputs are NaN/inf for images {indices.tolist()[:20]}")

    def embed(self, model: nn.Module, inputs: list[Tensor]) -> Tensor:
        """The mean of the last FPN level's features per image (for the coreset baseline)."""
        resized = [self._resize(img) * 255.0 for img in inputs]
        data = model.data_preprocessor({"inputs": resized}, training=False)
        return model.extract_feat(data["inputs"])[-1].mean(dim=(2, 3))
