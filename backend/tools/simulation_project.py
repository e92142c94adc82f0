"""The Label Studio project of a headless simulation run, its images and tasks, and the backend process that
serves it (backend.tools.simulate_label_studio)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import requests
import torch

from isal_core.data.images import ImageRecord, read_bytes
from isal_core.selection import STRATEGIES
from isal_core.simulation.config import USES_R, SimulationConfig
from isal_core.simulation.dataset import SimulationData
from isal_core.simulation.run import Simulation
from isal_core.utils.atomic import atomic_write

from ..errors import SimulationError
from ..job.tasks import REFERENCE_FLAG
from ..labelstudio.client import LabelStudioAPI
from ..settings import engine_env
from ..tasktypes import choice_result, classification_config
from .servers import BackendProcess

#: Simulation strategy -> the backend's ISAL_STRATEGY: every strategy the backend serves; isal_l1 is ISAL
#: with no flagged reference task, where the backend falls back to the first labeled set L1 (isal_labeled,
#: R = the current labeled set, has no backend twin).
LS_STRATEGIES = {**{s: s for s in STRATEGIES}, "isal_l1": "isal", "auto": "auto"}
INDEX_KEY = "isal_sim"  # task data: {"split": "train"|"test", "index": i} in the dataset's split


def export_images(data: SimulationData, split: str, indices: list[int], folder: Path) -> dict[int, str]:
    """Copy the images (bytes unchanged, so both runs decode the same pixels) to
    folder/<split>/<index><ext>; returns {index: path relative to folder}."""
    records = data.train if split == "train" else data.test
    rel = {}
    for i in indices:
        record: ImageRecord = records[i]
        name = f"{split}/{i:06d}{Path(record.path).suffix.lower() or '.jpg'}"
        target = folder / name
        if not target.exists():
            with atomic_write(target, "wb") as f:
                f.write(read_bytes(record.path))
        rel[i] = name
    return rel


def create_project(api: LabelStudioAPI, sim: Simulation, strategy: str, seed: int, files_root: Path,
                   title: str) -> int:
    """A project holding this run's images: R first (flagged, annotated; isal/gradsim only),
    then the seed's universe in train-split order, its initial set annotated (with a cold start:
    none; Label Studio serves it, backend.tools.simulate_label_studio)."""
    data, classes = sim.data, sim.data.classes
    sub = f"isal-sim/{title.replace(' ', '_')}"
    folder = files_root / sub
    universe = sorted(sim.universe(seed))
    # the initial set annotated at import, unless the backend's cold start is to serve it
    initial = set() if sim.config.initial_strategy == "typiclust" else set(sim.initial(seed))
    reference = data.reference if strategy in USES_R else []
    files = {("test", i): r for i, r in export_images(data, "test", reference, folder).items()}
    files.update({("train", i): r for i, r in export_images(data, "train", universe, folder).items()})
    pid = api.create_project(title, classification_config(classes),
                             description=f"ISAL headless simulation ({strategy}, seed {seed}, run directory "
                                         f"{sim.config.out}): tasks are annotated with their true labels.")
    api.add_local_storage(pid, folder, title="simulation images")

    def task(split: str, i: int, annotated: bool, flagged: bool) -> dict:
        records = data.train if split == "train" else data.test
        url = f"/data/local-files/?d={sub}/{files[(split, i)]}"
        t = {"data": {"image": url, INDEX_KEY: {"split": split, "index": i}, REFERENCE_FLAG: flagged}}
        if annotated:
            t["annotations"] = [{"result": choice_result(classes[records[i].label])}]
        return t

    tasks = [task("test", i, True, True) for i in reference] + [task("train", i, i in initial, False) for i in universe]
    ids = []
    for start in range(0, len(tasks), 2000):  # Label Studio recounts the project per request: few, large ones
        ids += api.import_tasks(pid, tasks[start:start + 2000])
    if len(ids) != len(tasks) or ids != sorted(ids):
        raise SimulationError(f"Label Studio returned {len(ids)} task ids for {len(tasks)} tasks, or out of order; "
                              "the simulation relies on task ids following the import order")
    return pid


def task_indices(api: LabelStudioAPI, pid: int) -> tuple[dict[int, int], list[tuple[int, int]]]:
    """({task id: train index}, [(annotation id, train index)] of annotated train tasks)."""
    index, annotated = {}, []
    for t in api.iter_tasks(pid):
        where = (t.get("data") or {}).get(INDEX_KEY) or {}
        if where.get("split") != "train":
            continue
        index[t["id"]] = where["index"]
        live = [a["id"] for a in t.get("annotations") or [] if not a.get("was_cancelled")]
        if live:
            annotated.append((min(live), where["index"]))
    return index, annotated


@dataclass
class Server:
    """Where Label Studio is and how the driver reaches it."""

    url: str
    api_key: str
    files_root: Path


def backend_env(config: SimulationConfig, strategy: str, seed: int, server: Server, model_dir: Path) -> dict:
    """The backend's ISAL_* settings for this protocol: it trains and ranks as Simulation does (every
    engine setting of the protocol, from the one schema), plus the backend's own."""
    return {
        "LABEL_STUDIO_URL": server.url, "LABEL_STUDIO_API_KEY": server.api_key, "MODEL_DIR": str(model_dir),
        **engine_env(config), "ISAL_STRATEGY": LS_STRATEGIES[strategy], "ISAL_SEED": str(seed),
        "ISAL_RETRAIN_EVERY": "0", "ISAL_MIN_LABELED": "1", "ISAL_PRELABEL": "never",
        # the batch a batch-aware strategy spreads out is the protocol's step (LabelStudioSimulation._backend sets
        # each round's); no job at connection time
        "ISAL_BATCH": str(config.step), "ISAL_COLD_START": "on" if cold_start(config) else "off",
        # the same intra-op thread count as this process, so float reductions run alike
        "OMP_NUM_THREADS": str(torch.get_num_threads()), "THREADS": "4", "LOG_LEVEL": "INFO",
    }


def cold_start(config: SimulationConfig) -> bool:
    """Initial labels by the backend's cold start, served by Label Studio (offline: Simulation.initial)."""
    return config.initial_strategy == "typiclust"


def backend_status(backend: BackendProcess, pid: int) -> dict:
    try:
        response = requests.get(f"{backend.url}/status", params={"project": pid}, timeout=30)
    except requests.RequestException as exc:
        raise SimulationError(f"the backend at {backend.url} does not answer: {exc}") from None
    if response.status_code != 200:
        raise SimulationError(f"the backend's /status answered HTTP {response.status_code}: {response.text[:300]}")
    return response.json()
