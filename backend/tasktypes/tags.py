"""Multi-label image tagging: `<Image>` + one `<Choices choice="multiple">`, learned by a sigmoid per tag.

An annotation's target is the list of its ticked tags: none ticked is a valid answer (no tag), not a skip. A
prediction ticks the tags the model gives p >= 0.5 (none: an empty result, which Label Studio accepts). The
engine's side is isal_core.tasks.multilabel (a head on frozen features; UUIC's label the thresholded tags).
"""
from __future__ import annotations

from xml.sax.saxutils import quoteattr

from isal_core.settings import ModelSettings
from isal_core.tasks.multilabel import AUTO_STRATEGY, multilabel_adapter

from ..errors import LabelError, UnsupportedConfig
from .base import SUPPORTED, ImageControl, image_of


class ImageTagging(ImageControl):
    """`<Image name=I value="$key"/>` + `<Choices name=C toName=I choice="multiple">` with static choices."""

    kind = "image_tagging"

    @classmethod
    def match(cls, interface):
        choices = [c for c in interface.controls if c.tag == "Choices"]
        if len(choices) != 1 or choices[0].attr.get("choice") != "multiple":
            return None  # single choice, or several <Choices>: ImageClassification says what it takes
        control = choices[0]
        image, value_key = image_of(interface, control, SUPPORTED)
        labels = list(control.labels or [])
        if not labels or len(set(labels)) != len(labels):
            raise UnsupportedConfig(
                f"<Choices name=\"{control.name}\" choice=\"multiple\"> has {len(labels)} distinct static <Choice> "
                f"value(s) {labels}; dynamic or no choices cannot be learned. Supported: {SUPPORTED}")
        return cls(control.name, image, value_key, labels)

    def target(self, result):
        picked = [r for r in result or [] if r.get("from_name") == self.from_name and r.get("type") == "choices"]
        tags = (picked[-1].get("value") or {}).get("choices") or [] if picked else []
        unknown = [t for t in tags if t not in self.index]
        if unknown:
            raise LabelError(f"tag(s) {unknown} not in the labeling config (choices: {self.classes})")
        return sorted({self.index[t] for t in tags})

    def prediction(self, output):
        if not output:
            return []
        return [{"from_name": self.from_name, "to_name": self.to_name, "type": "choices",
                 "value": {"choices": [self.classes[int(t)] for t in output]}}]

    def label_name(self, value):
        return None if value is None else [self.classes[int(t)] for t in value]

    def adapter(self, settings):
        return multilabel_adapter(settings, len(self.classes), getattr(settings, "device", "auto"),
                                  getattr(settings, "batch_size", 64))

    def engine_settings(self, settings):
        """ISAL_STRATEGY=auto is the engine's default for tagging (tasks.multilabel.AUTO_STRATEGY, chosen on the
        mosaic protocol's validation split)."""
        if getattr(settings, "strategy", None) == "auto":
            return settings.model_copy(update={"strategy": AUTO_STRATEGY})
        return settings

    def adapter_from_meta(self, meta: dict, embedding_cache: str | None = None):
        settings = ModelSettings(arch=meta["arch"], image_size=int(meta["image_size"]), weights=meta.get("weights"),
                                 mode="frozen", head=meta.get("head", "linear"), embedding_cache=embedding_cache)
        return self.adapter(settings)


def tagging_config(tags: list[str]) -> str:
    """A labeling config ImageTagging reads: `$image` and one multiple-choice <Choices> of the tags."""
    choices = "".join(f"<Choice value={quoteattr(t)}/>" for t in tags)
    return (f'<View><Image name="image" value="$image" zoom="true"/>'
            f'<Choices name="tags" toName="image" choice="multiple" showInline="true">{choices}</Choices></View>')


def tags_result(tags: list[str]) -> list[dict]:
    """An annotation `result` ticking `tags` in tagging_config (none: an empty result)."""
    return [{"from_name": "tags", "to_name": "image", "type": "choices", "value": {"choices": list(tags)}}] if tags \
        else []
