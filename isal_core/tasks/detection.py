"""Object detection through the adapter: torchvision's FCOS (the paper's detector).

Influence needs a per-image loss, and torchvision's FCOS loss is one number for the
batch (normalised by the batch's foreground count). `DetectionAdapter.forward` runs the
network once for the whole batch (transform, backbone, FPN, head, anchors) and `loss`
applies FCOS's own loss (focal classification + GIoU box regression + centerness) to
each image's slice of the head outputs: every image's loss depends on its own outputs
only, so the scorer's one-backward-per-batch trick gives each image's s_test . G_z,
equal to a per-image loop (tests/test_detection.py).

Pseudo-targets (UUIC) are the predicted boxes whose score passes `score_threshold`. An
image with none is *unscored*: it is ranked after every scored image, in a seeded random
order, so it is drawn only when the scored pool is short (the reference behaviour).

Boxes are [x1, y1, x2, y2] in the original image's pixels everywhere outside this module;
the resize to the network's input happens here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection import FCOS
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.fcos import FCOSHead
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from ..errors import ConfigError, DataError
from ..nets.efficientnet_lite import FrozenBody, MapCache
from .classification import Metric, TaskAdapter
from .detection_defaults import RESNETS, detection_backbone, with_body_defaults

#: The head's three final convolutions: class logits, box regression, centerness.
HEAD_PARAMS = ["head.classification_head.cls_logits.weight", "head.classification_head.cls_logits.bias",
               "head.regression_head.bbox_reg.weight", "head.regression_head.bbox_reg.bias",
               "head.regression_head.bbox_ctrness.weight", "head.regression_head.bbox_ctrness.bias"]
#: EfficientNet-Lite bodies are pretrained (the packaged ImageNet weights) and frozen: only FPN and head learn.
BACKBONES = ("efficientnet_lite0", "efficientnet_lite2", *RESNETS)


@dataclass
class DetectionOutputs:
    """One forward pass over a batch, before post-processing."""

    model: FCOS
    head: dict[str, Tensor]  # cls_logits [B, A, C], bbox_regression [B, A, 4], bbox_ctrness [B, A, 1]
    anchors: list[Tensor]
    per_level: list[int]  # anchors per FPN level
    sizes: list[tuple[int, int]]  # (h, w) the network saw
    original: list[tuple[int, int]]  # (h, w) of the images as given
    _found: list | None = field(default=None, repr=False)  # post-processed once: pseudo-boxes and predictions

    def __len__(self) -> int:
        return len(self.sizes)

    def image(self, i: int) -> dict[str, Tensor]:
        return {k: v[i:i + 1] for k, v in self.head.items()}

    def detections(self) -> list[dict[str, Tensor]]:
        """FCOS's post-processing (score filter, top-k, NMS), boxes in original pixels (computed once)."""
        if self._found is not None:
            return self._found
        split = {k: list(v.split(self.per_level, dim=1)) for k, v in self.head.items()}
        anchors = [list(a.split(self.per_level)) for a in self.anchors]
        found = self.model.postprocess_detections(split, anchors, self.sizes)
        self._found = self.model.transform.postprocess(found, self.sizes, self.original)
        return self._found


def scale_boxes(boxes: Tensor, source: tuple[int, int], target: tuple[int, int]) -> Tensor:
    """Boxes from an image of (h, w) `source` to one of (h, w) `target`."""
    sy, sx = target[0] / source[0], target[1] / source[1]
    return boxes * boxes.new_tensor([sx, sy, sx, sy])


def collate(items):
    """(list of images, list of target dicts, indices): detection images differ in size."""
    images, targets, indices = zip(*items)
    return list(images), list(targets), torch.as_tensor(indices)


class LiteFPN(nn.Module):
    """A frozen EfficientNet-Lite body and a feature pyramid (P3-P5 from strides 8-32, P6 and P7 on top)."""

    def __init__(self, body: nn.Module, channels: int):
        super().__init__()
        self.body, self.out_channels = body, channels
        self.fpn = FeaturePyramidNetwork(body.channels, channels, extra_blocks=LastLevelP6P7(channels, channels))

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        return self.fpn(self.body(x))


class DetectionAdapter(TaskAdapter):
    """FCOS on a feature pyramid over a ResNet (trained, or initialised from weights) or a frozen pretrained
    EfficientNet-Lite; targets are {"boxes": [N, 4] pixels, "labels": [N]} per image."""

    collate_fn = staticmethod(collate)
    review_unit = "box"

    def __init__(self, num_classes: int, backbone: str = "resnet18", min_size: int = 256, max_size: int = 320,
                 score_threshold: float = 0.5, detections_per_img: int = 100, weights: str | None = None,
                 head_convs: int = 4, fpn_channels: int = 256):
        if backbone not in BACKBONES:
            raise ConfigError(f"unknown detection backbone {backbone!r}; one of {', '.join(BACKBONES)}")
        if backbone not in RESNETS and weights is None:
            raise ConfigError(f"the {backbone} detection backbone is frozen: it needs pretrained weights")
        if not 0.0 < score_threshold < 1.0:
            raise ConfigError(f"score_threshold must be in (0, 1), got {score_threshold}")
        self.num_classes, self.backbone = num_classes, backbone
        self.min_size, self.max_size = min_size, max_size
        self.score_threshold, self.detections_per_img = score_threshold, detections_per_img
        self.weights = weights
        self.head_convs, self.fpn_channels = head_convs, fpn_channels
        self._backbone_weights = None
        self.maps = MapCache()  # a frozen body's feature maps, kept across the models of every round

    @classmethod
    def from_meta(cls, meta: dict) -> DetectionAdapter:
        return cls(int(meta["num_classes"]), meta["backbone"], int(meta["min_size"]), int(meta["max_size"]),
                   float(meta["score_threshold"]), weights=meta.get("weights"),
                   head_convs=int(meta.get("head_convs", 4)), fpn_channels=int(meta.get("fpn_channels", 256)))

    def to_meta(self) -> dict:
        # arch and image_size: what every model version names (the backbone and the shorter side)
        return {"adapter": "detection", "num_classes": self.num_classes, "backbone": self.backbone,
                "arch": self.backbone, "image_size": self.min_size, "min_size": self.min_size,
                "max_size": self.max_size, "score_threshold": self.score_threshold, "weights": self.weights,
                "weights_identity": self._backbone_weights.identity if self._backbone_weights else None,
                "head_convs": self.head_convs, "fpn_channels": self.fpn_channels}

    def build_model(self) -> nn.Module:
        c = self.fpn_channels
        if self.backbone not in RESNETS:  # frozen and pretrained, with the originals' normalisation
            from ..nets.models import build_model

            net = build_model(self.backbone, 1000)
            self.prepare()
            net.load_state_dict(self._backbone_weights.state_dict)
            pre = self._backbone_weights.preprocessing
            return FCOS(LiteFPN(FrozenBody(net, self.maps), c), self.num_classes, min_size=self.min_size,
                        max_size=self.max_size, image_mean=list(pre.mean), image_std=list(pre.std),
                        score_thresh=min(0.05, self.score_threshold), detections_per_img=self.detections_per_img,
                        head=FCOSHead(c, 1, self.num_classes, num_convs=self.head_convs))
        # pretrained: BatchNorm frozen at its statistics (torchvision's detection rule); from scratch a
        # frozen BatchNorm is the identity and a ResNet without normalisation barely trains, so it learns
        norm = FrozenBatchNorm2d if self.weights is not None else nn.BatchNorm2d
        resnet = getattr(torchvision.models, self.backbone)(weights=None, norm_layer=norm)
        stage2 = resnet.inplanes // 8  # torchvision's rule: the channels of layer2..layer4
        body = BackboneWithFPN(resnet, {"layer2": "0", "layer3": "1", "layer4": "2"}, [stage2 * 2, stage2 * 4,
                               stage2 * 8], c, extra_blocks=LastLevelP6P7(c, c))
        if self.weights is not None:
            self._load_backbone(body.body)
        head = FCOSHead(c, 1, self.num_classes, num_convs=self.head_convs)
        return FCOS(body, self.num_classes, min_size=self.min_size, max_size=self.max_size, head=head,
                    score_thresh=min(0.05, self.score_threshold), detections_per_img=self.detections_per_img)

    def prepare(self, progress=None) -> None:
        """Load the backbone's pretrained classifier weights once (downloaded the first time)."""
        from ..nets.backbones import load_weights

        if self.weights is not None and self._backbone_weights is None:
            self._backbone_weights = load_weights(self.backbone, self.weights, self.min_size, progress)

    def _load_backbone(self, body: nn.Module) -> None:
        """Classifier weights (a torchvision name or a file, backbones.load_weights) into the ResNet body."""
        self.prepare()
        missing, _ = body.load_state_dict(self._backbone_weights.state_dict, strict=False)  # (fc is not used)
        if missing:
            raise ConfigError(f"weights {self.weights!r} do not fit a {self.backbone} backbone: missing "
                              f"{missing[:4]}{' ...' if len(missing) > 4 else ''}")

    def dataset(self, records, train=False):
        from ..data.boxes import DetectionDataset

        return DetectionDataset(records, self.num_classes)

    def forward(self, model: nn.Module, inputs: list[Tensor]) -> DetectionOutputs:
        original = [tuple(img.shape[-2:]) for img in inputs]
        images, _ = model.transform(inputs)
        features = list(model.backbone(images.tensors).values())
        head = model.head(features)
        anchors = model.anchor_generator(images, features)
        per_level = [f.size(2) * f.size(3) for f in features]
        return DetectionOutputs(model, head, anchors, per_level, [tuple(s) for s in images.image_sizes], original)

    def loss(self, outputs: DetectionOutputs, targets: list[dict[str, Tensor]]) -> Tensor:
        """FCOS's loss of each image on its own: classification + box regression + centerness."""
        losses = []
        for i, target in enumerate(targets):
            scaled = {"boxes": scale_boxes(target["boxes"].to(outputs.anchors[i].dtype), outputs.original[i],
                                           outputs.sizes[i]), "labels": target["labels"]}
            parts = outputs.model.compute_loss([scaled], outputs.image(i), [outputs.anchors[i]], outputs.per_level)
            losses.append(sum(parts.values()))
        return torch.stack(losses)

    def pseudo_targets(self, outputs: DetectionOutputs, top_k: int = 1) -> list[dict[str, Tensor]]:
        """The predicted boxes scoring at least `score_threshold` (none: an unscored image)."""
        targets = []
        for found in outputs.detections():
            keep = found["scores"] >= self.score_threshold
            targets.append({"boxes": found["boxes"][keep].detach(), "labels": found["labels"][keep].detach()})
        return targets

    def predict(self, outputs: DetectionOutputs) -> list[dict]:
        """The boxes scoring at least `score_threshold` (the pseudo-labels), in original pixels, with the
        image's (height, width)."""
        out = []
        for d, size in zip(outputs.detections(), outputs.original):
            keep = d["scores"] >= self.score_threshold
            out.append({"boxes": d["boxes"][keep].tolist(), "labels": d["labels"][keep].tolist(),
                        "scores": d["scores"][keep].tolist(), "size": list(size)})
        return out

    def unscored(self, prediction: dict) -> bool:
        return not any(s >= self.score_threshold for s in prediction["scores"])

    def cost(self, prediction: dict) -> int:
        """Boxes an annotator would draw, as predicted (the cost before labeling)."""
        return sum(s >= self.score_threshold for s in prediction["scores"])


    def confidence(self, outputs) -> Tensor:
        """The mean max-class score of each image's detected boxes (0 with none): least-confidence
        sampling for detection, the uncertainty baseline of detection active learning."""
        return torch.stack([d["scores"].mean() if len(d["scores"]) else d["scores"].new_zeros(())
                            for d in outputs.detections()])

    def cluster(self, prediction: dict) -> int:
        raise ConfigError("cluster serving is not available for detection yet: set cluster_serving off")

    def check_targets(self, targets, what):
        for t in targets:
            if t is None or "boxes" not in t:
                raise DataError(f"{what} holds unlabeled images; it needs true boxes")
        return targets

    def check_finite(self, outputs: DetectionOutputs, indices) -> None:
        for name, value in outputs.head.items():
            if not torch.isfinite(value).all():
                from ..errors import NonFiniteError

                raise NonFiniteError(f"the detector's {name} are NaN/inf for images {indices.tolist()[:20]}")

    def metric(self) -> Metric:
        return MeanAP()

    def embed(self, model: nn.Module, inputs: list[Tensor]) -> Tensor:
        """The mean of the last FPN level's features per image (for the coreset baseline)."""
        images, _ = model.transform(inputs)
        features = list(model.backbone(images.tensors).values())
        return features[-1].mean(dim=(2, 3))


def detection_adapter(settings, num_classes: int) -> DetectionAdapter:
    """The adapter for these model settings: arch is the backbone (detection_backbone), weights pretrained
    classifier weights for it, the head FROZEN_DETECTION's on a frozen body unless set."""
    settings = with_body_defaults(settings)
    return DetectionAdapter(num_classes, detection_backbone(settings), settings.min_size, settings.max_size,
                            settings.score_threshold, weights=settings.weights, head_convs=settings.head_convs,
                            fpn_channels=settings.fpn_channels)


class MeanAP(Metric):
    """mAP@0.5 (the paper's VOC metric), with mAP@[.5:.95] kept in `last` (torchmetrics, COCO style)."""

    name = "mAP@0.5"

    def __init__(self):
        from torchmetrics.detection import MeanAveragePrecision

        self._map = MeanAveragePrecision(box_format="xyxy", iou_type="bbox", backend="pycocotools")
        self.last: dict[str, float] = {}

    def update(self, outputs: DetectionOutputs, targets: Any) -> None:
        preds = [{k: v.detach().cpu() for k, v in d.items()} for d in outputs.detections()]
        truth = [{"boxes": t["boxes"].cpu().float(), "labels": t["labels"].cpu()} for t in targets]
        self._map.update(preds, truth)

    def compute(self) -> float:
        result = self._map.compute()
        self.last = {"map_50": float(result["map_50"]), "map": float(result["map"])}
        return self.last["map_50"]
