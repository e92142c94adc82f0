"""Reading the frozen-feature embedding cache: the .npy entries against the torch.save entries they replaced.

    python -m bench.embedding_cache [--entries 5100] [--dim 512]

A job after the first reads one cache entry per task (a 5,000-task project: about 5,100
with R and the labeled set). Writes N random vectors both ways, then reads them back with a
fresh `EmbeddingCache` (what a job does: np.load, the finiteness check, the access-time
touch) and with torch.load (the earlier format), interleaved, 3 times each; prints the best
seconds of each and their ratio.
"""
from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from isal_core.tasks.frozen import EmbeddingCache

from .common import write_result


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--entries", type=int, default=5100)
    ap.add_argument("--dim", type=int, default=512)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        vectors = torch.randn(args.entries, args.dim)
        digests = [f"{i:064x}" for i in range(args.entries)]
        cache = EmbeddingCache(Path(tmp) / "npy")
        legacy = Path(tmp) / "pt"
        legacy.mkdir()
        for digest, v in zip(digests, vectors):
            cache.put("bb", digest, v)
            torch.save(v.clone(), legacy / f"{digest}.pt")

        def read_npy():
            fresh = EmbeddingCache(cache.folder)  # a new job: nothing in memory yet
            return [fresh.get("bb", d) for d in digests]

        def read_pt():
            return [torch.load(legacy / f"{d}.pt", map_location="cpu", weights_only=True) for d in digests]

        seconds = {"npy": [], "torch_save": []}
        for _ in range(3):
            for name, read in (("torch_save", read_pt), ("npy", read_npy)):
                start = time.perf_counter()
                got = read()
                seconds[name].append(time.perf_counter() - start)
                assert torch.equal(torch.stack(got), vectors)
    best = {k: round(min(v), 3) for k, v in seconds.items()}
    summary = {"bench": "embedding_cache", "entries": args.entries, "dim": args.dim, "seconds": best,
               "ratio_torch_save_over_npy": round(best["torch_save"] / best["npy"], 2)}
    print(json.dumps(summary))
    write_result("embedding-cache", "embedding_cache", summary, argv)
    return summary


if __name__ == "__main__":
    main()
