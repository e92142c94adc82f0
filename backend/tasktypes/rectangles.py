"""Label Studio rectangles <-> pixel boxes.

Label Studio stores a rectangle as x, y, width, height in percent of the image's
original size (`original_width`, `original_height` in the result), top-left origin. The
engine's boxes are [x1, y1, x2, y2] in pixels of that same original image, so a
round trip is two affine maps (tests/test_rectangles.py checks it to 1e-6 on random
boxes and sizes). Rotated rectangles are not boxes: they are refused with a reason.
"""
from __future__ import annotations

from collections.abc import Sequence


def to_percent(box: Sequence[float], width: int, height: int) -> dict:
    """[x1, y1, x2, y2] pixels -> Label Studio's {x, y, width, height} in percent."""
    x1, y1, x2, y2 = (float(v) for v in box)
    return {"x": 100.0 * x1 / width, "y": 100.0 * y1 / height,
            "width": 100.0 * (x2 - x1) / width, "height": 100.0 * (y2 - y1) / height}


def to_pixels(value: dict, width: int, height: int) -> list[float]:
    """Label Studio's {x, y, width, height} in percent -> [x1, y1, x2, y2] pixels."""
    if float(value.get("rotation") or 0.0) != 0.0:
        raise ValueError(f"a rotated rectangle ({value['rotation']} degrees) is not an axis-aligned box")
    x, y = float(value["x"]) * width / 100.0, float(value["y"]) * height / 100.0
    return [x, y, x + float(value["width"]) * width / 100.0, y + float(value["height"]) * height / 100.0]


def rectangle_results(boxes, labels: Sequence[str], scores, width: int, height: int, from_name: str,
                      to_name: str) -> list[dict]:
    """A prediction's `result` list: one rectanglelabels region per box, with its own score."""
    return [{"from_name": from_name, "to_name": to_name, "type": "rectanglelabels",
             "original_width": width, "original_height": height, "image_rotation": 0,
             "value": {**to_percent(box, width, height), "rotation": 0, "rectanglelabels": [label]},
             "score": float(score)}
            for box, label, score in zip(boxes, labels, scores)]


def boxes_of(result: Sequence[dict], from_name: str, classes: Sequence[str]):
    """(boxes in pixels, class indices, problems) from an annotation's `result`; regions of other
    controls are ignored, unknown labels and rotated boxes are skipped and named in `problems`."""
    boxes, labels, problems = [], [], []
    for region in result:
        if region.get("from_name") != from_name or region.get("type") != "rectanglelabels":
            continue
        value = region.get("value") or {}
        names = value.get("rectanglelabels") or []
        width, height = region.get("original_width"), region.get("original_height")
        if not names or names[0] not in classes:
            problems.append(f"label {names[0] if names else None!r} is not in the labeling config")
        elif not width or not height:
            problems.append("a rectangle without original_width/original_height")
        else:
            try:
                boxes.append(to_pixels(value, int(width), int(height)))
                labels.append(classes.index(names[0]))
            except (KeyError, TypeError, ValueError) as exc:
                problems.append(f"a rectangle that is not a box: {exc}")
    return boxes, labels, problems
