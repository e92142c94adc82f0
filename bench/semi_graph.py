"""The semi learner's one-off cost per job: the kNN graph of a project's tasks, the spread and the trusted
training set, at several project sizes.

    python -m bench.semi_graph [--tasks 5000,20000,50000] [--dim 1280] [--labels 320]

The embeddings are random vectors of EfficientNet-Lite0's width (1,280, float32 as the cache holds them): the
graph's cost depends on the count and the width, not on the content. Prints and writes each size's seconds per
step and the process's peak RSS (docs/results/bench/semi-graph.json). Quadratic in the tasks: the similarities
are computed in chunks of semi.CHUNK rows, so the memory stays linear (one chunk's row block and the graph).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from isal_core.tasks.frozen import Embeddings
from isal_core.train import semi

from .common import PeakMemory, write_result


def one_size(n: int, dim: int, labels: int, classes: int = 10) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, dim, generator=g)
    y = torch.randint(0, classes, (labels,), generator=g)
    out = {"tasks": n}
    with PeakMemory(torch.device("cpu")) as mem:
        start = time.perf_counter()
        graph = semi.knn_graph(x, 20)
        out["graph_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        semi.spread(graph, torch.arange(labels), y, classes)
        out["spread_s"] = round(time.perf_counter() - start, 2)
        start = time.perf_counter()
        made = semi.training_set(Embeddings(x[:labels], y.tolist()), Embeddings(x[labels:], [None] * (n - labels)),
                                 torch.randint(0, classes, (n - labels,), generator=g), classes)
        out["training_set_s"] = round(time.perf_counter() - start, 2)  # graph and spread again, inside
    out.update(peak_rss_mb=round(mem.peak_mb), graph_edges=int(graph._nnz()), training_items=len(made))
    return out


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", default="5000,20000,50000")
    ap.add_argument("--dim", type=int, default=1280)
    ap.add_argument("--labels", type=int, default=320)
    args = ap.parse_args(argv)
    sizes = []
    for n in (int(t) for t in args.tasks.split(",")):
        sizes.append(one_size(n, args.dim, args.labels))
        print(json.dumps(sizes[-1]), flush=True)
    summary = {"bench": "semi_graph", "device": "cpu", "dim": args.dim,
               "labels": args.labels, "sizes": sizes}
    write_result("semi-graph", "semi_graph", summary, argv)
    return summary


if __name__ == "__main__":
    main()
