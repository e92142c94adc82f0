"""Pixels <-> Label Studio percent coordinates: an exact round trip, and annotations read back safely."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from backend.tasktypes.rectangles import boxes_of, rectangle_results, to_percent, to_pixels


@st.composite
def image_and_box(draw):
    width, height = draw(st.integers(1, 10000)), draw(st.integers(1, 10000))
    x1 = draw(st.floats(0, width, allow_nan=False))
    y1 = draw(st.floats(0, height, allow_nan=False))
    x2 = draw(st.floats(x1, width, allow_nan=False))
    y2 = draw(st.floats(y1, height, allow_nan=False))
    return width, height, [x1, y1, x2, y2]


@given(image_and_box())
@settings(max_examples=500, deadline=None)
def test_pixels_to_percent_and_back_is_exact(case):
    width, height, box = case
    value = to_percent(box, width, height)
    assert all(0.0 <= value[k] <= 100.0 + 1e-9 for k in ("x", "y", "width", "height"))
    back = to_pixels(value, width, height)
    assert back == pytest.approx(box, abs=1e-6, rel=0)
    again = to_percent(back, width, height)  # and percent -> pixels -> percent
    assert [again[k] for k in value] == pytest.approx(list(value.values()), abs=1e-6, rel=0)


def test_predictions_are_rectangles_and_annotations_convert_back_with_problems_named():
    results = rectangle_results([[10, 20, 110, 70]], ["RBC"], [0.8], 640, 480, "label", "image")
    region = results[0]
    assert region["type"] == "rectanglelabels" and region["value"]["rectanglelabels"] == ["RBC"]
    assert region["value"]["x"] == pytest.approx(10 / 640 * 100) and region["score"] == 0.8
    zebra = {**region, "value": {**region["value"], "rectanglelabels": ["zebra"]}}
    rotated = {**region, "value": {**region["value"], "rotation": 30}}
    unsized = {k: v for k, v in region.items() if k != "original_width"}
    choice = {"from_name": "other", "type": "choices", "value": {"choices": ["x"]}}
    boxes, labels, problems = boxes_of([region, zebra, rotated, unsized, choice], "label", ["Platelets", "RBC"])
    assert boxes == [pytest.approx([10, 20, 110, 70])] and labels == [1]
    assert len(problems) == 3 and "'zebra' is not in the labeling config" in problems[0]
    assert "rotated" in problems[1] and "original_width" in problems[2]
