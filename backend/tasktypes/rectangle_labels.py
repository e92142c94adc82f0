"""Object detection projects: `<Image>` + `<RectangleLabels>`, learned by isal_core's FCOS adapter.

Annotations' rectangles become pixel boxes of the original image (backend.tasktypes.rectangles);
a region with a label outside the config, a rotated one or one without the image size is
skipped and counted, never the whole task. An annotation with no rectangle is an image
with no objects: a valid target. Predictions are rectangles with per-box scores; the
task-level score is the influence encoding shared with classification, so Label Studio
serves the top-ranked image first.
"""
from __future__ import annotations

from isal_core.tasks.detection import DetectionAdapter, detection_adapter
from isal_core.tasks.detection_defaults import detection_settings

from ..errors import UnsupportedConfig
from .base import ImageControl, image_of
from .rectangles import boxes_of, rectangle_results

SUPPORTED = "an <Image> with one <RectangleLabels> of at least one <Label> (object detection)"


class ObjectDetection(ImageControl):
    """`<Image name=I value="$key"/>` + `<RectangleLabels name=R toName=I>` with static labels."""

    kind = "object_detection"

    @classmethod
    def match(cls, interface):
        rectangles = [c for c in interface.controls if c.tag == "RectangleLabels"]
        if not rectangles:
            return None
        others = sorted({c.tag for c in interface.controls if c.tag != "RectangleLabels"})
        if len(rectangles) > 1 or others:
            raise UnsupportedConfig(
                f"the config has {len(rectangles)} <RectangleLabels>{' and ' + ', '.join(others) if others else ''}; "
                f"the ISAL backend learns one detection task, so it needs exactly one <RectangleLabels> and no other "
                f"control (a <Choices> beside it would be left unlearned). Supported: {SUPPORTED}")
        control = rectangles[0]
        image, value_key = image_of(interface, control, SUPPORTED)
        labels = list(control.labels or [])
        if not labels or len(set(labels)) != len(labels):
            raise UnsupportedConfig(f"<RectangleLabels name=\"{control.name}\"> has no distinct static <Label> "
                                    f"values ({labels}). Supported: {SUPPORTED}")
        return cls(control.name, image, value_key, labels)

    def target(self, result):
        return self.target_with_problems(result)[0]

    def target_with_problems(self, result):
        boxes, labels, problems = boxes_of(result or [], self.from_name, self.classes)
        return {"boxes": boxes, "labels": labels}, problems

    def prediction(self, output):
        height, width = output["size"]
        names = [self.classes[int(i)] for i in output["labels"]]
        return rectangle_results(output["boxes"], names, output["scores"], width, height, self.from_name,
                                 self.to_name)

    def label_name(self, value):
        return None if value is None else [self.classes[int(i)] for i in value.get("labels", [])]

    def adapter(self, settings):
        return detection_adapter(settings, len(self.classes))

    def adapter_from_meta(self, meta: dict, embedding_cache=None):
        return DetectionAdapter.from_meta(meta)

    def engine_settings(self, settings):
        return detection_settings(settings)


def rectangle_config(classes: list[str]) -> str:
    """A labeling config ObjectDetection reads: `$image` and one rectangle label per class."""
    from xml.sax.saxutils import quoteattr

    labels = "".join(f"<Label value={quoteattr(c)}/>" for c in classes)
    return (f'<View><Image name="image" value="$image" zoom="true"/>'
            f'<RectangleLabels name="label" toName="image">{labels}</RectangleLabels></View>')
