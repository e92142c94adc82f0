"""What a detection job runs when the user sets nothing: the backbone, and on a frozen body its head and training."""
from __future__ import annotations

from ..errors import ConfigError

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")

#: Training and head for a frozen, pretrained body (only FPN and head learn, on cached feature maps), where not
#: set: one tower convolution of 64 channels, 800 steps of 8 (bench.detection_round on 60 held-out BCCD trainval
#: photos: 200 steps mAP@0.5 0.725, 400 0.765 (3 seeds); 800 0.790 against 400's 0.770 (seeds 1, 2); a job on
#: 100 photos in about 2.5 minutes on 2 cores; the whole-network defaults, 4 convolutions of 256 channels and
#: 500 steps of 64, take about 16 s a step: over 2 hours a job).
FROZEN_DETECTION = {"head_convs": 1, "fpn_channels": 64, "epochs": 1, "min_steps": 800, "batch_size": 8, "lr": 0.01}


def detection_backbone(settings) -> str:
    """arch where set; else efficientnet_lite0 (frozen, pretrained) with weights, resnet18 from scratch without."""
    if "arch" in settings.model_fields_set:
        return settings.arch
    return "resnet18" if settings.weights is None else "efficientnet_lite0"


def with_body_defaults(settings):
    """FROZEN_DETECTION where not set, when the backbone is a frozen EfficientNet-Lite body."""
    if detection_backbone(settings) in RESNETS:
        return settings
    return settings.model_copy(update={k: v for k, v in FROZEN_DETECTION.items()
                                       if k not in settings.model_fields_set})


def detection_settings(settings):
    """Engine settings for a detection round: influence over the head unless params were set; weights
    initialise the backbone (no frozen-feature mode); FROZEN_DETECTION's training on a frozen body; no
    cluster serving unless asked for; the supervised learner (the semi learner's graph is over image embeddings,
    a detector's targets are boxes)."""
    if settings.learner == "semi" and "learner" in settings.model_fields_set:
        raise ConfigError("learner semi learns a classification head from the unlabeled pool; a detector trains "
                          "with the supervised learner: unset ISAL_LEARNER or set it to supervised")
    settings = with_body_defaults(settings)
    update = {"mode": "finetune", "learner": "supervised", **settings.whole_network_defaults()}
    if "params" not in settings.model_fields_set:
        update["params"] = "head"
    if "cluster_serving" not in settings.model_fields_set:
        update["cluster_serving"] = "off"
    return settings.model_copy(update=update)
