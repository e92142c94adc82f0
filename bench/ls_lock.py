"""What deleting a version's predictions costs the annotators of a Label Studio on SQLite (its default).

    python -m bench.ls_lock [--sizes 500,1000,2000,5000]

Label Studio 1.23 deletes a model version's predictions (`DELETE /api/projects/<id>/model-versions/`,
what a job's pruning calls) in one database transaction with a counter update per prediction, so
SQLite's single writer lock is held for the whole deletion, and an annotation submitted meanwhile
waits for it (measured 2026-12-04: 22 s at 2,000 predictions, then saved; at 5,000 the client's 60 s
timeout ran out first). For each size N:
N tasks, a version of N predictions, then the deletion in one thread while annotations are
submitted from another (the first 0.5 s in, then one after another until the deletion ends);
prints the deletion's seconds and each annotation's seconds or error. The same for a bulk import of
N predictions. Ends with one line of JSON (docs/results/bench/ls-lock.json).
"""
from __future__ import annotations

import argparse
import json
import threading
import time

from backend.labelstudio.client import LabelStudioAPI
from backend.tools.demo import choice_result, label_config
from backend.tools.servers import LabelStudioServer

from .common import write_result


def during(action, submit, first_after: float = 0.5) -> dict:
    """Run `action` in a thread; meanwhile submit annotations (from `first_after` s in) until it ends."""
    done, outcome = threading.Event(), {}

    def run():
        start = time.perf_counter()
        try:
            action()
        except Exception as exc:  # noqa: BLE001 (measured, reported)
            outcome["error"] = repr(exc)[:200]
        outcome["seconds"] = round(time.perf_counter() - start, 2)
        done.set()

    thread = threading.Thread(target=run)
    thread.start()
    time.sleep(first_after)
    submits = []
    while not done.is_set() or not submits:
        start = time.perf_counter()
        try:
            submit()
            submits.append({"seconds": round(time.perf_counter() - start, 2)})
        except Exception as exc:  # noqa: BLE001
            submits.append({"seconds": round(time.perf_counter() - start, 2),
                            "error": f"{getattr(exc, 'status_code', '')} {str(getattr(exc, 'body', exc))[:160]}"})
    thread.join()
    return {**outcome, "annotations": submits, "failed": sum("error" in s for s in submits),
            "worst_s": max(s["seconds"] for s in submits)}


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,1000,2000,5000")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with LabelStudioServer() as server:
        ls = server.client()
        api = LabelStudioAPI(server.url, server.legacy_token, timeout=600)
        for n in sizes:
            pid = ls.projects.create(title=f"lock {n}", label_config=label_config()).id
            for s in range(0, n, 5000):
                ls.projects.import_tasks(id=pid, request=[{"data": {"image": f"http://127.0.0.1:9/{i}.jpg"}}
                                                          for i in range(s, min(n, s + 5000))])
            ids = [t["id"] for t in api.iter_tasks(pid, fields="task_only", include="id")]
            queue = iter(ids)

            def submit():
                ls.annotations.create(id=next(queue), result=choice_result("cat"))

            def version(name):
                return [{"task": t, "result": [], "score": 0.5, "model_version": name} for t in ids]

            api.write_predictions(pid, version("old"), request_timeout=600)
            write = during(lambda: api.write_predictions(pid, version("new"), request_timeout=600), submit)
            delete = during(lambda: api.delete_version_predictions(pid, "old"), submit)
            rows.append({"predictions": n, "import": write, "delete": delete})
            print(f"{n:>6} predictions: import {write['seconds']} s, annotations meanwhile worst "
                  f"{write['worst_s']} s, {write['failed']} of {len(write['annotations'])} failed; delete "
                  f"{delete['seconds']} s, annotations meanwhile worst {delete['worst_s']} s, "
                  f"{delete['failed']} of {len(delete['annotations'])} failed", flush=True)
    summary = {"bench": "ls_lock", "device": "cpu", "label_studio_db": "sqlite", "rows": rows}
    print(json.dumps({"rows": [{"n": r["predictions"], "delete_s": r["delete"]["seconds"],
                                "delete_failed": r["delete"]["failed"], "delete_worst_s": r["delete"]["worst_s"],
                                "import_s": r["import"]["seconds"], "import_failed": r["import"]["failed"]}
                               for r in rows]}))
    write_result("ls-lock", "ls_lock", summary, argv)
    return summary


if __name__ == "__main__":
    main()
