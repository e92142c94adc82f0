"""Label Studio JSON <-> engine: the task types, tried in order on a labeling config.

    parse_label_config(xml) -> TaskType      task_type_from_meta(meta) -> TaskType

Configs are parsed with label-studio-sdk's LabelInterface, so the backend reads them
exactly as Label Studio does. Each task type is a module of its own (`choices`:
classification, `tags`: multi-label tagging, `rectangle_labels`: detection) that imports only `base`; this registry
sits above them. To add one, write a TaskType subclass and add it to TASK_TYPES.
"""
from __future__ import annotations

from label_studio_sdk.label_interface import LabelInterface

from ..errors import UnsupportedConfig
from .base import SUPPORTED, TaskType
from .choices import ImageClassification, choice_result, classification_config
from .rectangle_labels import ObjectDetection, rectangle_config
from .tags import ImageTagging, tagging_config, tags_result

__all__ = ["SUPPORTED", "TASK_TYPES", "ImageClassification", "ImageTagging", "ObjectDetection", "TaskType",
           "choice_result", "classification_config", "parse_label_config", "rectangle_config", "tagging_config",
           "tags_result", "task_type_from_meta"]

#: Tried in order; the first that matches the config wins (detection first: a <Choices> beside a
#: <RectangleLabels> is refused there with the reason; tagging before classification, which refuses the rest).
TASK_TYPES: tuple[type[TaskType], ...] = (ObjectDetection, ImageTagging, ImageClassification)


def parse_label_config(xml: str) -> TaskType:
    """The TaskType for a labeling config, or UnsupportedConfig with a message for the user."""
    if not isinstance(xml, str) or not xml.strip():
        raise UnsupportedConfig(f"the labeling config is empty. Supported: {SUPPORTED}")
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises its own XML/validation errors
        raise UnsupportedConfig(f"the labeling config cannot be parsed: {exc}") from None
    for task_type in TASK_TYPES:
        found = task_type.match(interface)
        if found is not None:
            return found
    tags = sorted({c.tag for c in interface.controls}) or ["no control tags"]
    raise UnsupportedConfig(f"the labeling config has {', '.join(tags)}. Supported: {SUPPORTED}")


def task_type_from_meta(meta: dict) -> TaskType:
    kind = meta.get("kind")
    by_kind = {t.kind: t for t in TASK_TYPES}
    if kind not in by_kind:
        raise ValueError(f"unknown task type {kind!r} in saved metadata; known: {sorted(by_kind)}")
    return by_kind[kind].from_meta(meta)
