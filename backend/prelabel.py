"""Whether predictions carry the model's guess, which Label Studio pre-ticks in the labeling screen.

A model trained on a handful of labels guesses badly, and an annotator who just presses
Submit saves its wrong guess: active learning that degrades label quality costs more
than it saves. So by default (`ISAL_PRELABEL=auto`) a version's predictions carry the
guess only when the model's metric on the reference set reaches ISAL_PRELABEL_MIN_METRIC;
below it they carry the score that orders the queue and an empty result.
"""
from __future__ import annotations


def prelabel_decision(policy: str, threshold: float, metric: dict) -> dict:
    """{"policy", "on", "reason"} for a version whose reference metric is `metric` ({name, value, on})."""
    if policy == "always":
        return {"policy": policy, "on": True, "reason": "ISAL_PRELABEL=always"}
    if policy == "never":
        return {"policy": policy, "on": False, "reason": "ISAL_PRELABEL=never"}
    on = metric["value"] >= threshold
    relation = "reaches" if on else "is below"
    return {"policy": policy, "on": on, "threshold": threshold,
            "reason": f"{metric['name']} {metric['value']:.3f} on the reference set ({metric['on']}) {relation} "
                      f"ISAL_PRELABEL_MIN_METRIC={threshold:g}: predictions {'carry' if on else 'do not carry'} "
                      f"the model's guess"}
