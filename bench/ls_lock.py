"""What writing and deleting a version's predictions costs the annotators, on SQLite and on PostgreSQL.

    python -m bench.ls_lock [--sizes 500,1000,2000,5000] [--db sqlite|postgresql] [--predictions P]

Label Studio 1.23 deletes a model version's predictions (`DELETE /api/projects/<id>/model-versions/`)
in one database transaction with a counter update per prediction, which locks each task it touches
until it ends (SQLite: the whole database, PostgreSQL: the task rows), and an annotation of such a
task waits for all of it. The backend deletes one prediction per request instead
(LabelStudioAPI.delete_version_predictions). For each size N: N tasks, a version of N predictions,
then a deletion in one thread while annotations are submitted from another (the first 0.5 s in, then
one after another until it ends): Label Studio's (`delete_whole`, up to --whole-up-to) and the
backend's (`delete`); the same for a bulk import of N predictions (`import`). `--predictions P`: a
version predicts the first P tasks only (as the backend's LS_PREDICTIONS_PER_VERSION does). Prints each one's
seconds and the annotations' p50/p99/worst seconds and errors; ends with one line of JSON
(docs/results/bench/ls-lock[-postgresql].json). Run `--db postgresql` for Label Studio on a throwaway
PostgreSQL cluster (backend/tools/postgres.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import threading
import time

import numpy as np

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
    seconds = [s["seconds"] for s in submits]
    return {**outcome, "annotations": submits, "failed": sum("error" in s for s in submits),
            "p50_s": round(float(np.percentile(seconds, 50)), 3), "p99_s": round(float(np.percentile(seconds, 99)), 3),
            "worst_s": max(seconds)}


@contextlib.contextmanager
def label_studio_on(db: str):
    """A throwaway Label Studio on SQLite (its default) or on a throwaway PostgreSQL cluster."""
    if db == "sqlite":
        with LabelStudioServer() as server:
            yield server
        return
    from backend.tools.postgres import PostgresServer

    with PostgresServer() as pg, LabelStudioServer(database=pg.label_studio_env()) as server:
        yield server


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="500,1000,2000,5000")
    ap.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    ap.add_argument("--predictions", type=int, default=0,
                    help="predictions per version: the first P tasks (0 = every task; the backend's default writes "
                         "LS_PREDICTIONS_PER_VERSION, 500, and as many of the review's)")
    ap.add_argument("--whole-up-to", type=int, default=5000,
                    help="measure Label Studio's own one-transaction deletion of a version up to this size")
    args = ap.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    with label_studio_on(args.db) as server:
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

            def version(name):  # a version's predictions: one per task, or the first --predictions tasks
                return [{"task": t, "result": [], "score": 0.5, "model_version": name}
                        for t in ids[:args.predictions or None]]

            api.write_predictions(pid, version("old"), request_timeout=600)
            row = {"tasks": n, "predictions": len(version("")), "import": during(
                lambda: api.write_predictions(pid, version("new"), request_timeout=600), submit)}
            if row["predictions"] <= args.whole_up_to:  # Label Studio's own deletion of a version: one transaction
                row["delete_whole"] = during(lambda: api.request("DELETE", f"api/projects/{pid}/model-versions/",
                                                                 json={"model_version": "old"},
                                                                 request_options={"timeout_in_seconds": 3600}), submit)
                api.write_predictions(pid, version("old"), request_timeout=600)
            row["delete"] = during(lambda: api.delete_version_predictions(pid, "old"), submit)  # the backend's
            start = time.perf_counter()  # what a job's first step reads: every task, the annotated ones' annotations
            read = sum(1 for _ in api.tasks_with_annotations(pid))
            row["read_tasks_s"] = round(time.perf_counter() - start, 2)
            assert read == n, f"read {read} of {n} tasks"
            rows.append(row)
            print(f"{args.db} {n:>6} tasks: a job reads them in {row['read_tasks_s']} s", flush=True)
            for what, r in row.items():
                if isinstance(r, dict):
                    print(f"{args.db} {n:>6} tasks, {row['predictions']:>6} predictions: {what} {r['seconds']} s; "
                          f"{len(r['annotations'])} "
                          f"annotations meanwhile p50 {r['p50_s']} s, p99 {r['p99_s']} s, worst {r['worst_s']} s, "
                          f"{r['failed']} failed", flush=True)
    summary = {"bench": "ls_lock", "device": "cpu", "label_studio_db": args.db, "rows": rows}
    print(json.dumps({"db": args.db, "rows": [
        {"tasks": r["tasks"], "predictions": r["predictions"], **{
            f"{what}_{k}": r[what][k] for what in r if isinstance(r[what], dict)
            for k in ("seconds", "failed", "p50_s", "p99_s", "worst_s")}} for r in rows]}))
    name = "ls-lock" + ("" if args.db == "sqlite" else f"-{args.db}") + (
        f"-{args.sizes.replace(',', '_')}x{args.predictions}" if args.predictions else "")
    write_result(name, "ls_lock", summary, argv)
    return summary


if __name__ == "__main__":
    main()
