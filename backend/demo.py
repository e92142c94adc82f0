"""`python -m backend.demo`: Label Studio + the ISAL backend + a CIFAR-10 project, on this machine.

Starts a local Label Studio (SQLite, data under --data-dir, loopback only) and the
backend (gunicorn), creates a project of CIFAR-10 images served as local files, flags
about 10% of them (taken from the test split) as the reference set with
`"isal_reference": true` and pre-annotates those with their true labels, connects the
backend, and prints the URL and login. Label some images, press "Start training" in
the project's Settings > Model (or label ISAL_RETRAIN_EVERY of them), and the Label
Stream / "Label All Tasks" serves the most helpful image first. Ctrl-C stops both.

Images come from isal_core.cifar10: ../shared/data/cifar10-jpg.zip when it exists, else
torchvision's CIFAR-10 download.
"""
from __future__ import annotations

import argparse
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from isal_core.atomic import atomic_write
from isal_core.cifar10 import CLASSES, cifar10_root
from isal_core.data import load_records, read_bytes

from .local_ls import BackendProcess, LabelStudioServer, free_port
from .ls_client import LabelStudioAPI
from .tasktypes import choice_result, classification_config

REPO = Path(__file__).resolve().parent.parent
CIFAR_CLASSES = list(CLASSES)
PROJECT_TITLE = "ISAL demo: CIFAR-10"


def label_config(classes=CIFAR_CLASSES) -> str:
    return classification_config(classes)


@dataclass(frozen=True)
class Image:
    rel: str  # path under the files root, as served by /data/local-files/?d=<rel>
    label: str
    split: str  # "train" or "test"


def extract_cifar(dest: Path, rel_prefix: str, n_train: int, n_test: int, seed: int = 0,
                  root: str | None = None) -> list[Image]:
    """Write n_train train-split and n_test test-split CIFAR-10 images under dest (= files_root/rel_prefix).

    Deterministic for a seed: class-balanced picks (round robin over the classes). The
    images come from isal_core.cifar10 (the shared zip, else torchvision's download).
    """
    root = root or cifar10_root()
    rng = random.Random(seed)
    out: list[Image] = []
    for split, n in (("train", n_train), ("test", n_test)):
        classes, records = load_records(f"{root}/{split}")
        by_class = {c: [r for r in records if r.label == i] for i, c in enumerate(classes)}
        for pool in by_class.values():
            rng.shuffle(pool)
        for k in range(n):
            c = classes[k % len(classes)]
            record = by_class[c][k // len(classes)]
            member = f"{split}/{record.id}"
            target = dest / member
            if not target.exists():
                with atomic_write(target, "wb") as f:
                    f.write(read_bytes(record.path))
            out.append(Image(f"{rel_prefix}/{member}", c, split))
    return out


@dataclass
class DemoProject:
    id: int
    labels: dict[int, str]  # true label of every task
    reference: list[int]  # tasks flagged isal_reference (pre-annotated)


def make_cifar_project(api: LabelStudioAPI, files_root: Path, n_images: int = 400,
                       reference_fraction: float = 0.1, title: str = PROJECT_TITLE, seed: int = 0) -> DemoProject:
    """A CIFAR-10 classification project: ~reference_fraction of the images (test split) are the
    reference set, flagged and annotated with their true labels; the rest (train split) are unlabeled."""
    n_ref = max(1, round(n_images * reference_fraction))
    sub = f"cifar10-{seed}"
    images = extract_cifar(Path(files_root) / sub, sub, n_images - n_ref, n_ref, seed)
    pid = api.create_project(title, label_config(),
                             description="ISAL active learning demo: label what the backend serves first.")
    api.add_local_storage(pid, Path(files_root) / sub, title="CIFAR-10 images")
    rng = random.Random(seed)
    rng.shuffle(images)
    tasks = [{"image": f"/data/local-files/?d={im.rel}", "isal_reference": im.split == "test"} for im in images]
    ids = api.import_tasks(pid, tasks)
    labels = {tid: im.label for tid, im in zip(ids, images)}
    reference = [tid for tid, im in zip(ids, images) if im.split == "test"]
    for tid in reference:
        api.create_annotation(tid, choice_result(labels[tid]))
    return DemoProject(pid, labels, reference)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8080, help="Label Studio port")
    ap.add_argument("--backend-port", type=int, default=9090, help="ML backend port")
    ap.add_argument("--images", type=int, default=400, help="CIFAR-10 images in the project (10%% are reference)")
    ap.add_argument("--data-dir", default=str(REPO / ".isal" / "demo"), help="Label Studio data, models, images")
    args = ap.parse_args(argv)

    signal.signal(signal.SIGTERM, _interrupt)  # `kill` stops the demo as Ctrl-C does
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    port = args.port or free_port()
    server = LabelStudioServer(data_dir=data_dir / "label-studio", port=port, keep_data=True,
                               username="demo@example.com", password="isal-demo")
    backend = None
    try:
        server.start()
        backend_url = f"http://127.0.0.1:{args.backend_port}"
        env = {"LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.legacy_token,
               "MODEL_DIR": str(data_dir / "models")}
        backend = BackendProcess(env, args.backend_port, data_dir / "backend.log").start()
        with LabelStudioAPI(server.url, server.legacy_token) as api:
            pid = api.find_project(PROJECT_TITLE)
            if pid is None:
                print(f"[demo] creating the project with {args.images} CIFAR-10 images ...", flush=True)
                project = make_cifar_project(api, server.files_root, args.images)
                pid = project.id
                api.connect_ml_backend(pid, backend_url, title="ISAL")
                print(f"[demo] {len(project.reference)} reference images flagged and pre-annotated", flush=True)
            else:
                print(f"[demo] reusing project {pid} from {data_dir}", flush=True)
        print(f"""
ISAL demo is up.
  Label Studio  {server.url}/projects/{pid}   login {server.username} / {server.password}
  ML backend    {backend_url}   (status: {backend_url}/status, log: {data_dir / 'backend.log'})
Label a few dozen images, then Settings > Model > Start training (or label
{os.environ.get('ISAL_RETRAIN_EVERY', '40')} images); "Label All Tasks" then serves the most helpful image first.
Ctrl-C stops Label Studio and the backend; the data stays in {data_dir}.""", flush=True)
        while True:
            time.sleep(1)
            if not backend.running():
                raise RuntimeError(f"the backend stopped; see {data_dir / 'backend.log'}:\n{backend.log_tail()}")
    except KeyboardInterrupt:
        print("\n[demo] stopping ...", flush=True)
    finally:
        if backend is not None:
            backend.stop()
        server.stop()


if __name__ == "__main__":
    main()
