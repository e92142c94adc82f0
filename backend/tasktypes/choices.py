"""Image classification: `<Image>` + one single-choice `<Choices>`, learned by isal_core's classifiers."""
from __future__ import annotations

from xml.sax.saxutils import quoteattr

from isal_core.tasks.frozen import classification_adapter

from ..errors import LabelError, UnsupportedConfig
from .base import SUPPORTED, ImageControl, image_of


class ImageClassification(ImageControl):
    """`<Image name=I value="$key"/>` + `<Choices name=C toName=I>` with static single choices (choice="multiple"
    is tagging: backend.tasktypes.tags, tried first)."""

    kind = "image_classification"

    def __init__(self, from_name: str, to_name: str, value_key: str, classes: list[str], required: bool = True):
        super().__init__(from_name, to_name, value_key, classes)
        self.required = required

    @classmethod
    def match(cls, interface):
        choices = [c for c in interface.controls if c.tag == "Choices"]
        if not choices:
            return None
        if len(choices) > 1:
            raise UnsupportedConfig(
                f"found {len(choices)} <Choices> ({', '.join(c.name for c in choices)}); the ISAL backend "
                f"learns from exactly one. Supported: {SUPPORTED}")
        control = choices[0]
        image, value_key = image_of(interface, control, SUPPORTED)
        labels = list(control.labels or [])
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise UnsupportedConfig(
                f"<Choices name=\"{control.name}\"> has {len(labels)} distinct static <Choice> value(s) "
                f"{labels}; dynamic or fewer than two choices cannot be learned. Supported: {SUPPORTED}")
        required = str(control.attr.get("required", "false")).lower() == "true"
        return cls(control.name, image, value_key, labels, required)

    def to_meta(self):
        return {**super().to_meta(), "required": self.required}

    def config_warnings(self):
        if self.required:
            return []
        return [f"<Choices name=\"{self.from_name}\"> is not required: Label Studio accepts an annotation with "
                f"no choice (clicking a pre-ticked choice un-ticks it), which the backend skips. Add "
                f"required=\"true\" to the <Choices> tag."]

    @classmethod
    def from_meta(cls, meta):
        return cls(meta["from_name"], meta["to_name"], meta["value_key"], meta["classes"], meta.get("required", True))

    def target(self, result):
        picked = [r for r in result or [] if r.get("from_name") == self.from_name and r.get("type") == "choices"]
        if not picked:
            return None
        choices = (picked[-1].get("value") or {}).get("choices") or []
        if len(choices) != 1:
            raise LabelError(f"expected one choice from <Choices name=\"{self.from_name}\">, got {choices}")
        if choices[0] not in self.index:
            raise LabelError(f"label {choices[0]!r} is not in the labeling config (choices: {self.classes})")
        return self.index[choices[0]]

    def prediction(self, output):
        return [{"from_name": self.from_name, "to_name": self.to_name, "type": "choices",
                 "value": {"choices": [self.classes[int(output)]]}}]

    def label_name(self, value):
        return None if value is None else self.classes[int(value)]

    def adapter(self, settings):
        return classification_adapter(settings, len(self.classes), getattr(settings, "device", "auto"),
                                      getattr(settings, "batch_size", 64))


def classification_config(classes: list[str]) -> str:
    """The labeling config ImageClassification reads: `$image` and one single choice per class, in order."""
    choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View><Image name="image" value="$image" zoom="true"/>'
            f'<Choices name="label" toName="image" choice="single" required="true" showInline="true">'
            f'{choices}</Choices></View>')


def choice_result(label: str) -> list[dict]:
    """An annotation `result` choosing `label` in classification_config."""
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]
