"""torchrun with 2 CPU processes (gloo) ranks the pool exactly as one process does: rank 0 solves
s_test and broadcasts it, each rank scores its shard, rank 0 gathers and ranks."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
from PIL import Image

from isal_core.cli import main

REPO = Path(__file__).resolve().parent.parent
CLASSES = {"red": (200, 40, 40), "green": (40, 200, 40), "blue": (40, 40, 200)}


def noisy_images(root: Path, per_class: int, labeled: bool, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    for name, rgb in CLASSES.items():
        folder = root / name if labeled else root
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(rgb) + rng.normal(0, 60, (20, 20, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{name}_{seed}_{i}.png")
    return root


def select_args(tmp_path: Path, out: Path, *extra: str) -> list[str]:
    return ["select", "--labeled", str(tmp_path / "labeled"), "--reference", str(tmp_path / "reference"),
            "--pool", str(tmp_path / "pool"), "--batch-size", "8", "--device", "cpu", "--weights", "none", "--quiet",
            "--out", str(out),
            *extra]


def ranked(path: Path) -> list[tuple[str, float]]:
    with open(path) as f:
        return [(r["id"], float(r["influence"])) for r in csv.DictReader(f)]


def test_torchrun_two_processes_rank_like_one(tmp_path):
    noisy_images(tmp_path / "labeled", 8, True, 0)
    noisy_images(tmp_path / "reference", 3, True, 1)
    noisy_images(tmp_path / "pool", 13, False, 2)  # 39 samples: shards of 20 and 19
    ckpt = tmp_path / "model.pt"
    assert main(select_args(tmp_path, tmp_path / "train.csv", "--epochs", "3", "--min-steps", "0",
                            "--save-checkpoint", str(ckpt))) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, "-m", "isal_core.cli", *select_args(tmp_path, tmp_path / "one.csv",
                                                                                "--checkpoint", str(ckpt))],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert one.returncode == 0, one.stderr[-3000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "-m", "isal_core.cli",
                          *select_args(tmp_path, tmp_path / "two.csv", "--checkpoint", str(ckpt))],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "(2 processes)" in two.stdout
    a, b = ranked(tmp_path / "one.csv"), ranked(tmp_path / "two.csv")
    assert len(a) == 39 and [i for i, _ in a] == [i for i, _ in b]
    scale = max(abs(v) for _, v in a)
    assert all(abs(x - y) <= 1e-5 * max(abs(x), 1e-3 * scale) for (_, x), (_, y) in zip(a, b)), list(zip(a, b))[:5]


def train_probe(tmp_path: Path, arch: str, processes: int) -> dict:
    out = tmp_path / f"{arch}-{processes}.pt"
    cmd = [sys.executable, str(REPO / "tests" / "ddp_probe.py"), str(out), arch]
    if processes > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(processes),
               *cmd[1:]]
    run = subprocess.run(cmd, cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)},
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    import torch

    return torch.load(out, weights_only=True)


def relative_difference(a: dict, b: dict) -> float:
    import torch

    keys = [k for k, v in a.items() if v.is_floating_point()]
    num = torch.sqrt(sum(((a[k].double() - b[k].double()) ** 2).sum() for k in keys))
    den = torch.sqrt(sum((a[k].double() ** 2).sum() for k in keys))
    return float(num / den)


def test_ddp_training_with_two_processes_gives_the_one_process_model(tmp_path):
    """Without BatchNorm or random augmentation: the same weights within float tolerance. With BatchNorm
    (small_cnn), each rank normalises its half-batch: measured, and far from equal."""
    mlp = relative_difference(train_probe(tmp_path, "mlp", 1), train_probe(tmp_path, "mlp", 2))
    assert mlp < 1e-5, mlp
    bn = relative_difference(train_probe(tmp_path, "small_cnn", 1), train_probe(tmp_path, "small_cnn", 2))
    print(f"relative weight difference, 2 processes vs 1: mlp {mlp:.2e}, small_cnn (BatchNorm) {bn:.2e}")
    assert bn > 10 * mlp  # the documented difference is real: the probe would notice if it vanished


def test_a_backend_job_round_as_a_torchrun_group_equals_one_process(tmp_path):
    """ISAL_JOB_PROCS=2: the job's round (training, s_test, scoring, the metric on R) as a gloo group
    of 2 gives the ranking and scores of the same round in the job's own process (frozen features:
    a float64 head without BatchNorm, so DDP training is exact)."""
    import torch

    from backend.job.group import run_in_group
    from backend.settings import EngineSettings
    from backend.tasktypes.choices import ImageClassification
    from isal_core.data.images import ImageRecord
    from isal_core.learner import Learner
    from isal_core.nets.models import build_model

    torch.manual_seed(0)
    torch.save(build_model("small_cnn", 3).state_dict(), tmp_path / "backbone.pt")

    def records(folder: Path) -> list[ImageRecord]:
        names = list(CLASSES)
        return [ImageRecord(p.name, str(p), names.index(p.name.split("_")[0])) for p in sorted(folder.rglob("*.png"))]

    parts = {"labeled": records(noisy_images(tmp_path / "labeled", 4, True, 0)),
             "pool": records(noisy_images(tmp_path / "pool", 5, True, 2)),  # 15 samples: shards of 8 and 7
             "reference": records(noisy_images(tmp_path / "reference", 2, True, 1))}
    task_type = ImageClassification("choice", "image", "image", list(CLASSES))
    engine = EngineSettings(arch="small_cnn", weights=str(tmp_path / "backbone.pt"),
                            embedding_cache=str(tmp_path / "cache"), epochs=3, min_steps=0, batch_size=4, device="cpu",
                            job_procs=2,
                            strategy="isal_batch")  # influence scored on shards: what the group splits
    adapter = task_type.adapter(engine)
    learner = Learner(adapter, task_type.engine_settings(engine), engine.seed)
    labeled, pool, reference = (adapter.dataset(parts[k]) for k in ("labeled", "pool", "reference"))
    one = learner.round(engine.strategy, labeled, pool, reference, train_set=adapter.dataset(parts["labeled"], True))
    phases = []
    two, report = run_in_group(2, task_type, engine, parts, tmp_path / "job", phases.append)
    assert phases == ["training", "computing s_test", "scoring the pool", "ranking", "evaluating on R"]
    assert two.ranking.order.tolist() == one.ranking.order.tolist()
    a, b = one.scores.influence.double(), two.scores.influence.double()
    assert (a - b).abs().max() <= 1e-5 * a.abs().max()
    assert two.scores.predictions == one.scores.predictions
    assert report["metric"] == learner.evaluate(one.model, reference)
    assert report["embedding_cache"]["computed"] == 0  # this process embedded every image first
