"""Headless Label Studio simulation: the offline protocol played through Label Studio and the backend.

`isal simulate --label-studio local|URL ...` runs the same protocol as the offline
`isal simulate` (isal_core.simulation.run), but every move goes through the product:

 1. a project per (strategy, seed) is created with label-studio-sdk: the run's train
    images as tasks (in train-split order, so task ids follow it), the initial set
    pre-annotated with the true labels (`initial_strategy: typiclust`: none), and for
    isal/gradsim the reference set R (test images, flagged "isal_reference": true);
 2. the ISAL backend (`python -m backend`, gunicorn, on loopback) is connected as the
    project's ML backend, with the protocol's settings as ISAL_* variables; with
    typiclust, "Start training" with no label runs its cold start and the initial set
    is what Label Studio serves next, checked against the offline rule's order;
 3. each round: Label Studio's "Start training" (POST /api/ml/<id>/train) makes the
    backend retrain on the project's annotations and write its influence scores as
    predictions; the driver waits for the job (backend /status), evaluates the model
    version the backend published (its checkpoint, on the evaluation split), then plays
    the annotator: `step` times it asks Label Studio for the next task
    (GET /api/projects/<id>/next) and annotates it with its true label through the SDK.

It writes the offline run's files (results.csv, state/, curves.png, savings.md), so the
two runs compare line by line; on a deterministic configuration they select the same
images in the same order (tests/test_simulate_label_studio.py). A killed run resumes:
the project id is kept in state/<strategy>-<seed>.label-studio.json, and annotations of
an unfinished round are read back from Label Studio in the order they were made.

With `local`, a Label Studio with SQLite is started under <out>/label-studio and kept.
With a URL, that server must run on this machine (it calls the backend on 127.0.0.1),
serve local files and --files-root must be its LOCAL_FILES_DOCUMENT_ROOT; the API key
comes from --api-key or LABEL_STUDIO_API_KEY.
"""
from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from tqdm.auto import tqdm

from isal_core.errors import ConfigError
from isal_core.simulation.config import SimulationConfig
from isal_core.simulation.dataset import SimulationData
from isal_core.simulation.report import write_report
from isal_core.simulation.run import Simulation
from isal_core.simulation.rundir import ResultsFile, RunState, check_config, recorded
from isal_core.train.checkpoints import load_checkpoint
from isal_core.utils.atomic import write_text

from ..errors import SimulationError, describe_api_error
from ..labelstudio.client import ApiError, LabelStudioAPI
from ..model import UNTRAINED
from ..tasktypes import choice_result
from .servers import BackendProcess, LabelStudioServer
from .simulation_project import (
    LS_STRATEGIES,
    Server,
    backend_env,
    backend_status,
    cold_start,
    create_project,
    task_indices,
)

log = logging.getLogger(__name__)

JOB_TIMEOUT = 6 * 3600.0


def check_strategies(config: SimulationConfig) -> None:
    if config.task != "classification":
        raise ConfigError(f"the Label Studio simulation plays an image classification project; task: {config.task} "
                          f"runs offline (without --label-studio)")
    other = [s for s in config.strategies if s not in LS_STRATEGIES]
    if other:
        raise ConfigError(f"the Label Studio simulation plays the ISAL backend: strategies {', '.join(LS_STRATEGIES)}; "
                         f"run {', '.join(other)} offline (without --label-studio)")


class LabelStudioSimulation:
    """One (strategy, seed) run through Label Studio and a backend process of its own."""

    def __init__(self, sim: Simulation, strategy: str, seed: int, server: Server, out: Path):
        self.sim, self.strategy, self.seed, self.server, self.out = sim, strategy, seed, server, out
        self.name = f"{strategy}-{seed}"
        self.state = RunState.load(out / "state" / f"{self.name}.json", strategy, seed, sim.initial(seed))
        self.link_path = out / "state" / f"{self.name}.label-studio.json"
        self.model_dir = out / "backend" / self.name
        self.index: dict[int, int] = {}  # task id -> train index, read when the run starts
        self.annotated: list[tuple[int, int]] = []  # (annotation id, train index) at that time

    def run(self, results: ResultsFile, bar) -> None:
        try:
            self._run(results, bar)
        except ApiError as exc:
            raise SimulationError(describe_api_error(exc)) from None

    def _run(self, results: ResultsFile, bar) -> None:
        results.restore(self.state)
        rounds = self.sim.config.rounds
        if all(self.state.finished(r) for r in range(1, rounds + 1)):
            bar.update(rounds)
            return
        with LabelStudioAPI(self.server.url, self.server.api_key, timeout=120) as api:
            pid = self._project(api)
            # Read once per invocation (every task with all its predictions is a heavy listing): the
            # task -> image map never changes, and annotations this driver did not make itself can
            # only belong to the first round it has to finish (an interrupted one).
            self.index, self.annotated = task_indices(api, pid)
            config, backend = self.sim.config, None
            try:
                if cold_start(config) and not self.state.finished(1):
                    backend, ml = self._backend(api, pid, backend, config.step)
                    self._cold_start(api, pid, ml, backend)
                for r in range(1, rounds + 1):
                    bar.set_postfix_str(f"{self.name} round {r} (Label Studio project {pid})")
                    if not self.state.finished(r):
                        # round r's model ranks the batch of round r + 1: the backend spreads that many
                        backend, ml = self._backend(api, pid, backend, config.step_at(r))
                        self._round(api, pid, ml, backend, r, results)
                    bar.update()
            finally:
                if backend is not None:
                    backend.stop()

    def _backend(self, api, pid: int, running: BackendProcess | None, batch: int) -> tuple[BackendProcess, int]:
        """A backend process whose ISAL_BATCH is `batch` (the protocol's step for the job it will run; with
        budgets it changes from round to round, and the backend reads it once, at start), and the project's
        ML backend pointed at it."""
        if running is not None and running.env["ISAL_BATCH"] == str(batch):
            return running, self.ml
        if running is not None:
            running.stop()
        env = {**backend_env(self.sim.config, self.strategy, self.seed, self.server, self.model_dir),
               "ISAL_BATCH": str(batch)}
        backend = BackendProcess(env, log_path=self.out / "backend" / f"{self.name}.log").start()
        self.ml = self._connect(api, pid, backend.url)
        return backend, self.ml

    def _project(self, api: LabelStudioAPI) -> int:
        if self.link_path.exists():
            link = json.loads(self.link_path.read_text())
            try:
                api.ls.projects.get(id=link["project"])
                return link["project"]
            except Exception as exc:  # gone (another server, deleted): the run cannot resume in it
                raise SimulationError(
                    f"{self.link_path} names Label Studio project {link['project']} at {link['url']}, which "
                    f"{self.server.url} does not have ({exc}); use the same server, or another --out") from None
        if self.state.has(2):
            raise SimulationError(f"{self.state.path} holds rounds but {self.link_path} is missing; use another --out")
        title = f"ISAL sim {self.name} {time.strftime('%Y%m%d-%H%M%S')}"[:50]  # Label Studio's limit
        pid = create_project(api, self.sim, self.strategy, self.seed, self.server.files_root, title)
        write_text(self.link_path, json.dumps({"url": self.server.url, "project": pid, "title": title}) + "\n")
        log.info("%s: created Label Studio project %d (%s)", self.name, pid, title)
        return pid

    def _connect(self, api: LabelStudioAPI, pid: int, url: str) -> int:
        """The project's ML backend, pointed at this run's backend process (a resumed run's has moved)."""
        for ml in api.ls.ml.list(project=pid):
            # Label Studio 1.23.2 answers 500 to an update without the project
            api.ls.ml.update(id=ml.id, project=pid, url=url, is_interactive=False)
            return ml.id
        return api.connect_ml_backend(pid, url, title="ISAL simulation")

    def _round(self, api, pid: int, ml: int, backend: BackendProcess, r: int, results: ResultsFile) -> None:
        start = time.perf_counter()
        if not self.state.has(r):
            added = self._annotate(api, pid, r)
            self.state.add(r, added, time.perf_counter() - start)
            self.state.save()
        version, seconds = self._train(api, pid, ml, backend, len(self.state.labeled(r)))
        model, _ = load_checkpoint(self.model_dir / str(pid) / version / "model.pt", self.sim.device, self.sim.adapter)
        metric = self.sim.evaluate(model)
        row = self.state.finish(r, metric, seconds)
        self.state.save()
        results.append(row)
        log.info("%s round %d via Label Studio: %d labels, metric %.4f, model %s", self.name, r, row["labels"],
                 metric, version)

    def _cold_start(self, api, pid: int, ml: int, backend: BackendProcess) -> None:
        """The initial labels through the product: "Start training" with no label (the backend's cold start
        job), then what Label Studio serves next, `initial` times; it must be the offline rule's order."""
        expected = self.state.labeled(1)
        served = [i for _, i in sorted(self.annotated)]  # an interrupted cold start's annotations first
        while (job := backend_status(backend, pid)["job"])["state"] != "idle" or job["pending"]:
            time.sleep(0.5)  # connecting the project started its cold start job
        if not served and backend_status(backend, pid)["model_version"] == UNTRAINED:
            self._train(api, pid, ml, backend, 0)
        train, classes = self.sim.data.train, self.sim.data.classes
        while len(served) < len(expected):
            task = api.next_task(pid)
            if (i := task and self.index.get(task["id"])) != expected[len(served)]:
                raise SimulationError(f"project {pid}: Label Studio served train index {i} as cold start label "
                                      f"{len(served) + 1}, the offline TypiClust order {expected[len(served)]}")
            api.create_annotation(task["id"], choice_result(classes[train[i].label]))
            served.append(i)

    def _annotate(self, api: LabelStudioAPI, pid: int, r: int) -> list[int]:
        """Play the annotator for round r: what Label Studio serves next, labeled truly, `step` times.
        Annotations made before an interruption count first, in the order they were made."""
        index = self.index
        before = set(self.state.labeled(r - 1))
        added = [i for _, i in sorted(self.annotated) if i not in before]
        train, classes = self.sim.data.train, self.sim.data.classes
        budget = min(self.sim.config.step_at(r - 1), len(index) - len(before))
        while len(added) < budget:
            task = api.next_task(pid)
            if task is None:
                raise SimulationError(f"Label Studio served no next task in project {pid} after {len(added)} of "
                                      f"{budget} annotations of round {r}")
            i = index.get(task["id"])
            if i is None or i in before or i in added:
                raise SimulationError(f"Label Studio served task {task['id']} (train index {i}), which is not an "
                                      f"unlabeled task of this run; is someone else annotating project {pid}?")
            api.create_annotation(task["id"], choice_result(classes[train[i].label]))
            added.append(i)
        return added

    def _train(self, api, pid: int, ml: int, backend: BackendProcess, n_labeled: int) -> tuple[str, float]:
        """Press "Start training" and wait for the backend's job; (model version, seconds)."""
        status = backend_status(backend, pid)
        started = status["job"]["jobs_started"]
        t0 = time.perf_counter()
        api.ls.ml.train(id=ml)
        deadline = time.monotonic() + JOB_TIMEOUT
        while True:
            status = backend_status(backend, pid)
            job = status["job"]
            if job["jobs_started"] > started and job["state"] == "idle" and not job["pending"]:
                break
            if not backend.running():
                raise SimulationError(f"the backend stopped during training; log {backend.log_path}:\n"
                                      f"{backend.log_tail(2000)}")
            if time.monotonic() > deadline:
                raise SimulationError(f"the backend's job for project {pid} ran over {JOB_TIMEOUT:.0f} s")
            time.sleep(0.5)
        if job["last_job"].get("status") != "done":
            raise SimulationError(f"the backend's training job failed: {job['last_error']} "
                                  f"(log {backend.log_path})")
        if status["counts"].get("labeled") != n_labeled:
            raise SimulationError(f"the backend trained on {status['counts'].get('labeled')} labeled tasks, the "
                                  f"simulation has labeled {n_labeled}; see {backend.log_path}")
        return status["model_version"], time.perf_counter() - t0


def simulate_label_studio(config: SimulationConfig, label_studio: str = "local", api_key: str | None = None,
                          files_root: str | None = None, data: SimulationData | None = None) -> Path:
    """Run (or resume) every (strategy, seed) run of `config` through Label Studio; returns
    the run directory (the offline run's files, plus backend/ and label-studio/)."""
    check_strategies(config)
    key = api_key or os.environ.get("LABEL_STUDIO_API_KEY")
    if label_studio != "local" and not (key and files_root):
        raise ConfigError("--label-studio URL needs --api-key (or LABEL_STUDIO_API_KEY) and --files-root "
                         "(that server's LOCAL_FILES_DOCUMENT_ROOT)")
    sim = Simulation(config, data)
    sim.check_plan()
    out = Path(config.out)
    identity = {**config.identity(), "dataset": sim.data.fingerprint(), "driver": "label-studio"}
    check_config(out, identity, recorded(sim.config, sim.adapter))
    local = None
    if label_studio == "local":
        local = LabelStudioServer(data_dir=out / "label-studio", keep_data=True).start()
        server = Server(local.url, local.legacy_token, local.files_root)
    else:
        server = Server(label_studio.rstrip("/"), key, Path(files_root).resolve())
    try:
        results = ResultsFile(out / "results.csv")
        title = f"{Path(sim.data.root).name}, {config.arch}, {config.epochs} epochs, through Label Studio"
        total = len(config.seeds) * len(config.strategies) * config.rounds
        with tqdm(total=total, desc="simulate (Label Studio)", unit="round", disable=not config.progress) as bar:
            for seed in config.seeds:
                for strategy in config.strategies:
                    LabelStudioSimulation(sim, strategy, seed, server, out).run(results, bar)
                write_report(out, results.rows(), title)
    finally:
        if local is not None:
            local.stop()
    return out
