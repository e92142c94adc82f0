"""Label Studio JSON <-> engine, one class per kind of labeling task.

A `TaskType` is what the backend knows about a labeling config: which object tag holds
the media, how an annotation becomes a training target, how one of the engine's
predictions becomes a Label Studio result, and which engine adapter (isal_core) learns
the task. Everything about the model (building, training, loss, predictions) is the
adapter's. Image classification (`<Image>` + one single-choice `<Choices>`) is here;
detection (`<RectangleLabels>` on an `<Image>`) is backend.detection_task, a second
subclass in task_types() with its engine adapter (isal_core.detection).

Configs are parsed with label-studio-sdk's LabelInterface, so the backend reads them
exactly as Label Studio does.
"""
from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from typing import Any
from xml.sax.saxutils import quoteattr

from label_studio_sdk.label_interface import LabelInterface

from isal_core.adapter import TaskAdapter
from isal_core.frozen import classification_adapter
from isal_core.settings import ModelSettings

log = logging.getLogger(__name__)

SUPPORTED = ("an <Image> with one single-choice <Choices> of at least two <Choice> values (image classification), "
             "or an <Image> with one <RectangleLabels> (object detection)")


class UnsupportedConfig(ValueError):
    """The labeling config is not one the backend can learn from; the message says why and what works."""


class LabelError(ValueError):
    """An annotation does not fit the labeling config (e.g. a choice the config does not list)."""


class MissingMedia(ValueError):
    """A task has no usable media URL under the object tag's data key."""


class TaskType(ABC):
    """One kind of labeling task: the translation between Label Studio and the engine."""

    kind: str = "task"

    @classmethod
    @abstractmethod
    def match(cls, interface: LabelInterface) -> "TaskType | None":
        """This task type for the config, None if the config is not of this kind.

        Raise UnsupportedConfig when the config is of this kind but unusable, so the
        user reads the precise reason (e.g. multi-choice classification).
        """

    @abstractmethod
    def to_meta(self) -> dict:
        """JSON-able description, saved with every model version."""

    @classmethod
    @abstractmethod
    def from_meta(cls, meta: dict) -> "TaskType": ...

    def config_warnings(self) -> list[str]:
        """What in the config works but will cost the user (shown by /setup's log and /status)."""
        return []

    value_key: str = "image"  # the task data field the object tag reads ($image)

    def media_url(self, task: dict) -> str:
        """The task's media URL/path (data[value_key]); MissingMedia if absent."""
        value = (task.get("data") or {}).get(self.value_key)
        if not isinstance(value, str) or not value.strip():
            raise MissingMedia(f"task {task.get('id')} has no image URL under data[{self.value_key!r}]")
        return value

    @abstractmethod
    def target(self, result: list[dict]) -> Any:
        """Training target from one annotation's `result`; None if it holds none for our
        control; LabelError if it names something outside the config."""

    def target_with_problems(self, result: list[dict]) -> tuple[Any, list[str]]:
        """(target, what was skipped inside the annotation): detection skips single bad regions."""
        return self.target(result), []

    @abstractmethod
    def prediction(self, output: Any) -> list[dict]:
        """A Label Studio `result` list from one sample's prediction (the adapter's `predict`)."""

    @abstractmethod
    def adapter(self, settings: ModelSettings) -> TaskAdapter:
        """The engine adapter that learns this task with these model settings."""

    def adapter_from_meta(self, meta: dict, embedding_cache: str | None = None) -> TaskAdapter:
        """The adapter of a saved model version (its meta.json)."""
        settings = ModelSettings(arch=meta["arch"], image_size=int(meta["image_size"]), weights=meta.get("weights"),
                                 mode="frozen" if meta.get("adapter") == "frozen" else "finetune",
                                 head=meta.get("head", "linear"), embedding_cache=embedding_cache)
        return self.adapter(settings)

    def engine_settings(self, settings):
        """The engine settings a job of this task runs with (detection: influence over the head by default)."""
        return settings


class ImageClassification(TaskType):
    """`<Image name=I value="$key"/>` + `<Choices name=C toName=I>` with static single choices."""

    kind = "image_classification"

    def __init__(self, from_name: str, to_name: str, value_key: str, classes: list[str], required: bool = True):
        self.from_name, self.to_name, self.value_key = from_name, to_name, value_key
        self.classes = list(classes)
        self.index = {c: i for i, c in enumerate(self.classes)}
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
        if control.attr.get("choice", "single") not in ("single", "single-radio"):
            raise UnsupportedConfig(
                f"<Choices name=\"{control.name}\" choice=\"{control.attr['choice']}\"> is multi-label; the ISAL "
                f"backend trains single-label classifiers. Supported: {SUPPORTED}")
        labels = list(control.labels or [])
        if len(labels) < 2 or len(set(labels)) != len(labels):
            raise UnsupportedConfig(
                f"<Choices name=\"{control.name}\"> has {len(labels)} distinct static <Choice> value(s) "
                f"{labels}; dynamic or fewer than two choices cannot be learned. Supported: {SUPPORTED}")
        required = str(control.attr.get("required", "false")).lower() == "true"
        return cls(control.name, image, value_key, labels, required)

    def to_meta(self):
        return {"kind": self.kind, "from_name": self.from_name, "to_name": self.to_name,
                "value_key": self.value_key, "classes": self.classes, "required": self.required}

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

    def adapter(self, settings):
        return classification_adapter(settings, len(self.classes), getattr(settings, "device", "auto"),
                                      getattr(settings, "batch_size", 64))


def image_of(interface: LabelInterface, control, supported: str) -> tuple[str, str]:
    """(name, data key) of the one <Image value="$key"> a control labels; UnsupportedConfig saying why not."""
    objects = {o.name: o for o in interface.objects}
    targets = [objects.get(n) for n in control.to_name]
    if len(targets) != 1 or targets[0] is None or targets[0].tag != "Image":
        names = ", ".join(f"<{objects[n].tag} name={n}>" if n in objects else f"missing '{n}'" for n in control.to_name)
        raise UnsupportedConfig(f"<{control.tag} name=\"{control.name}\"> labels {names or 'nothing'}, not one "
                                f"<Image>. Supported: {supported}")
    value = targets[0].value or ""
    if not value.startswith("$") or len(value) < 2:
        raise UnsupportedConfig(f"<Image name=\"{targets[0].name}\" value=\"{value}\"> does not read a task field "
                                f"($field). Supported: {supported}")
    return targets[0].name, value[1:]


def classification_config(classes: list[str]) -> str:
    """The labeling config ImageClassification reads: `$image` and one single choice per class, in order."""
    choices = "".join(f"<Choice value={quoteattr(c)}/>" for c in classes)
    return (f'<View><Image name="image" value="$image" zoom="true"/>'
            f'<Choices name="label" toName="image" choice="single" required="true" showInline="true">'
            f'{choices}</Choices></View>')


def choice_result(label: str) -> list[dict]:
    """An annotation `result` choosing `label` in classification_config."""
    return [{"from_name": "label", "to_name": "image", "type": "choices", "value": {"choices": [label]}}]


def task_types() -> tuple[type[TaskType], ...]:
    """Task types tried in order; the first that matches the config wins (detection first: a <Choices>
    beside a <RectangleLabels> is refused there with the reason)."""
    from .detection_task import ObjectDetection  # it subclasses TaskType: imported once this module is

    return ObjectDetection, ImageClassification


def parse_label_config(xml: str) -> TaskType:
    """The TaskType for a labeling config, or UnsupportedConfig with a message for the user."""
    if not isinstance(xml, str) or not xml.strip():
        raise UnsupportedConfig(f"the labeling config is empty. Supported: {SUPPORTED}")
    try:
        interface = LabelInterface(xml)
    except Exception as exc:  # the SDK raises its own XML/validation errors
        raise UnsupportedConfig(f"the labeling config cannot be parsed: {exc}") from None
    for task_type in task_types():
        found = task_type.match(interface)
        if found is not None:
            return found
    tags = sorted({c.tag for c in interface.controls}) or ["no control tags"]
    raise UnsupportedConfig(f"the labeling config has {', '.join(tags)}. Supported: {SUPPORTED}")


def task_type_from_meta(meta: dict) -> TaskType:
    kind = meta.get("kind")
    by_kind = {t.kind: t for t in task_types()}
    if kind not in by_kind:
        raise ValueError(f"unknown task type {kind!r} in saved metadata; known: {sorted(by_kind)}")
    return by_kind[kind].from_meta(meta)
