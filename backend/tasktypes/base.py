"""What a task type is: the translation between one kind of Label Studio labeling task and the engine.

A `TaskType` knows which object tag holds the media, how an annotation becomes a training
target, how one of the engine's predictions becomes a Label Studio result, and which engine
adapter (isal_core.tasks) learns the task. Everything about the model is the adapter's.
One module per labeling control (choices, rectangle_labels), each a TaskType with `match`;
the registry that tries them is the package's `__init__`, above them.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator
from typing import Any

from label_studio_sdk.label_interface import LabelInterface

from isal_core.settings import ModelSettings
from isal_core.tasks.base import TaskAdapter

from ..errors import MissingMedia, UnsupportedConfig

SUPPORTED = ("an <Image> with one single-choice <Choices> of at least two <Choice> values (image classification), "
             "an <Image> with one <Choices choice=\"multiple\"> (multi-label tagging), "
             "or an <Image> with one <RectangleLabels> (object detection)")


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

    def predictions(self, version: str, task_ids, outputs, scores, prelabel: bool = True,
                    clusters=None) -> Iterator[dict]:
        """One Label Studio prediction per task, generated lazily (10k tasks never sit in a list).

        Without `prelabel` the result is empty: the score still orders the queue, but Label
        Studio has no guess to pre-tick in the labeling screen. With `clusters`, each carries
        its task's cluster id, which Label Studio's uncertainty sampling serves by."""
        for n, (tid, output, score) in enumerate(zip(task_ids, outputs, scores)):
            entry = {"task": int(tid), "result": self.prediction(output) if prelabel else [], "score": float(score),
                     "model_version": version}
            if clusters is not None:
                entry["cluster"] = int(clusters[n])
            yield entry

    def label_name(self, value) -> Any:
        """A target or prediction as a person reads it (the class name; for boxes, their label names)."""
        return value

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


class ImageControl(TaskType):
    """A task type of one control (`from_name`) labeling one <Image> (`to_name`, reading data[value_key]) with a
    static list of classes: what a model version's meta.json saves of it, and restores."""

    def __init__(self, from_name: str, to_name: str, value_key: str, classes: list[str]):
        self.from_name, self.to_name, self.value_key = from_name, to_name, value_key
        self.classes = list(classes)
        self.index = {c: i for i, c in enumerate(self.classes)}

    def to_meta(self):
        return {"kind": self.kind, "from_name": self.from_name, "to_name": self.to_name,
                "value_key": self.value_key, "classes": self.classes}

    @classmethod
    def from_meta(cls, meta):
        return cls(meta["from_name"], meta["to_name"], meta["value_key"], meta["classes"])


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
