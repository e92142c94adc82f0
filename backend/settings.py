"""Backend settings from the environment (pydantic-settings).

Server settings keep label-studio-ml 2.x names (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY,
MODEL_DIR, BASIC_AUTH_USER/BASIC_AUTH_PASS, WORKERS, THREADS, PORT, LOG_LEVEL); engine
knobs carry the ISAL_ prefix, with the engine's defaults: frozen features of a pretrained
ResNet-18 and a linear head, ranked by influence with the batch spread out and served by
cluster (the variant measured best), conjugate gradient on the damped Hessian.
"""
from __future__ import annotations

import json
import os
from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from isal_core.selection import STRATEGIES
from isal_core.settings import SOLVER_OPTIONS
from isal_core.settings import EngineSettings as Engine

ENV_PREFIX = "ISAL_"
#: ISAL_ variables that are not settings: the engine reads them itself (isal_core.nets.backbones).
NOT_SETTINGS = ("ISAL_OFFLINE",)


class EngineSettings(Engine, BaseSettings):
    """ISAL_<FIELD> for every engine setting (isal_core.settings, the one schema and its
    defaults), plus what only the backend has: the strategy it serves, its seed, and
    when and how jobs run. An ISAL_ variable that names no setting is an error."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", validate_assignment=True)

    strategy: str = Field("auto", description="the ranking: auto (the measured best: typiclust on frozen features, "
                                              "isal_batch for a whole network and for detection), isal_batch "
                                              "(influence, the batch spread out by k-center), isal_typical, isal, "
                                              "gradsim (H = I), typiclust, probcover, badge, coreset, entropy, "
                                              "margin, least_confidence or random")
    seed: int = Field(0, description="seed of training, the Hessian subset and the solver")
    retrain_every: int = Field(40, ge=0, description="annotation events per automatic retrain; 0 = only START_TRAINING")
    min_labeled: int = Field(2, ge=1, description="fewest usable labeled tasks a job trains on")
    download_workers: int = Field(8, ge=1, description="parallel image downloads per job")
    job_procs: int = Field(1, ge=1, description="processes a job trains and scores with: more than 1 runs it as "
                                                "a torchrun group (one per GPU; gloo on CPU)")
    prelabel: Literal["auto", "always", "never"] = Field(
        "auto", description="include the model's guess in predictions (Label Studio pre-ticks it): auto = only "
                            "when its metric on the reference set reaches prelabel_min_metric")
    prelabel_min_metric: float = Field(0.8, ge=0, description="auto pre-labeling threshold (accuracy for "
                                                              "classification)")
    cold_start: Literal["auto", "on", "off"] = Field(
        "auto", description="order a project with too few labels for a model by TypiClust on the frozen "
                            "embeddings (typical and diverse first), when it is connected and on Start training; "
                            "auto = on with frozen features")
    review: bool = Field(True, description="each job also ranks the labeled tasks by how likely their annotation "
                                           "is wrong: predictions on them, the Data Manager tab 'ISAL: annotations "
                                           "to review', GET /review")
    hygiene: bool = Field(True, description="each job also finds near-duplicates, leaks into R and outliers on the "
                                            "frozen embeddings and serves them last: the Data Manager tab 'ISAL: "
                                            "duplicates and outliers', GET /hygiene, the map on the project page")
    review_signal: Literal["auto", "combined", "influence", "loss", "oof_loss", "oof_combined"] = Field(
        "auto", description="what the review ranks by: influence on R with the annotated label, the model's "
                            "loss on it (detection: its disagreement with the box), the mean of their ranks "
                            "(combined), the loss from heads fit on the other folds (oof_loss), or its mean rank "
                            "with influence (oof_combined); auto = oof_combined on frozen features, combined for "
                            "another classifier, loss for detection (see docs/results.md, annotation review)")
    target_metric: float = Field(0.9, gt=0, lt=1, description="the metric on R the project page forecasts the "
                                                             "labels for (accuracy, or mAP@0.5 for detection)")
    cluster_field: bool = Field(False, description="also write each prediction's cluster id (Label Studio's "
                                                   "uncertainty sampling then reorders by it; one request per "
                                                   "prediction, slow); the served order is in the score either way")

    batch: int = Field(0, ge=0, description="tasks a batch-aware strategy (isal_batch, badge, coreset) spreads "
                                            "out, and the clusters of the cold start (0 = ISAL_RETRAIN_EVERY, or 40)")

    @property
    def budget(self) -> int:
        """The batch: what annotators label before the next automatic retrain."""
        return self.batch or self.retrain_every or 40

    @property
    def cold_starts(self) -> bool:
        return self.cold_start == "on" or (self.cold_start == "auto" and self.frozen)

    def prelabel_decision(self, metric: dict | None) -> dict:
        """Whether predictions carry the model's guess, which Label Studio pre-ticks: {"policy", "on", "reason"}.
        A weak model's guess gets submitted by hurried annotators, so by default (auto) only a model whose metric
        on R (`metric`: {name, value, on}; None: no model) reaches ISAL_PRELABEL_MIN_METRIC prelabels."""
        policy, threshold = self.prelabel, self.prelabel_min_metric
        if metric is None:
            return {"policy": policy, "on": False, "reason": "a cold start has no model to guess with"}
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

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        if v not in STRATEGIES + ("auto",):
            raise ValueError(f"ISAL_STRATEGY must be auto or one of {', '.join(STRATEGIES)}, not {v!r}")
        return v

    @model_validator(mode="before")
    @classmethod
    def _no_unknown_variables(cls, values):
        unknown = sorted(k for k in os.environ if k.startswith(ENV_PREFIX) and k not in NOT_SETTINGS
                         and k[len(ENV_PREFIX):].lower() not in cls.model_fields)
        if unknown:
            known = ", ".join(ENV_PREFIX + k.upper() for k in cls.model_fields)
            raise ValueError(f"unknown setting(s) {', '.join(unknown)} in the environment (misspelled?); "
                             f"known: {known}")
        return values


def engine_env(settings: Engine) -> dict[str, str]:
    """The ISAL_* variables that give a backend these engine settings (the inverse of EngineSettings)."""
    out = {}
    for name in Engine.model_fields:
        value = getattr(settings, name)
        applies = SOLVER_OPTIONS.get(name, settings.solver) == settings.solver and not (
            settings.solver == "identity" and name in ("damping", "hessian_samples"))
        if name == "weights" and value is None:
            out[ENV_PREFIX + "WEIGHTS"] = "none"  # from scratch, on purpose (unset means the default weights)
        elif value is not None and applies:
            out[ENV_PREFIX + name.upper()] = json.dumps(value) if isinstance(value, list) else str(value)
    return out


class Settings(BaseSettings):
    """Server settings (label-studio-ml 2.x names) plus `engine` (ISAL_*)."""

    model_config = SettingsConfigDict(extra="ignore")

    label_studio_url: str | None = Field(
        None, description="Label Studio base URL; unset: the `hostname` Label Studio sends to /setup")
    label_studio_api_key: str | None = Field(
        None, description="legacy token or personal access token; unset: the `access_token` sent to /setup. It "
                          "goes only to LABEL_STUDIO_URL: a /setup `hostname` is reached with its own token alone")
    label_studio_hosts: str = Field("", description="comma list of Label Studio hosts (host, host:port or a URL) a "
                                                    "/setup `hostname` may name when LABEL_STUDIO_URL is unset; "
                                                    "empty: any, each with the token it sent")
    model_dir: str = Field("model_dir", description="models, reference sets and the image cache")
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    host: str = Field("127.0.0.1", description="interface gunicorn binds (0.0.0.0 in a container)")
    port: int = Field(9090, ge=1, le=65535)
    workers: int = Field(1, ge=1, description="gunicorn workers (job state is shared: one job per project across them)")
    threads: int = Field(8, ge=1, description="gunicorn threads per worker")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    label_studio_timeout: float = Field(60.0, gt=0, description="seconds per Label Studio request")
    download_allowed_hosts: str = Field("", description="comma list of other hosts (host, host:port or *.domain) "
                                                        "task files may be downloaded from; default: Label Studio only")
    download_max_mb: float = Field(100.0, gt=0, description="largest task file downloaded, in MB")
    predict_budget_s: float = Field(60.0, ge=0, description="seconds /predict spends scoring new tasks (Label Studio "
                                                              "waits 100 s); the rest answer 0.5 and 'deferred'")
    keep_versions: int = Field(10, ge=0, description="newest model versions kept per project, the current one "
                                                     "always (0 = all)")
    keep_ls_versions: int = Field(2, ge=0, description="newest versions whose predictions Label Studio keeps per "
                                                       "project, the one it serves by always (0 = all)")
    ls_predictions_per_version: int = Field(
        500, ge=0, description="tasks a version writes a prediction for: the first of the served order, and as many "
                               "of the review's (0 = every task); each one is deleted later with a request of its "
                               "own, and with several annotators Label Studio serves at random among them")
    job_nice: int = Field(10, ge=0, le=19, description="niceness of `python -m backend.worker`: its training yields "
                          "the CPU to the web process and to a Label Studio on the same machine (0 = none)")
    job_runner: Literal["worker", "web", "external"] = Field(
        "web", description="worker: jobs run in `python -m backend.worker` (python -m backend starts it; its "
                           "default); web: on a thread of the process that took the request (in-process apps); "
                           "external: the web only queues, like worker, but python -m backend runs gunicorn "
                           "alone: the job workers run elsewhere (another container: docker/docker-compose.yml)")
    redis_url: str | None = Field(None, description="redis://host:port/db: job state in Redis and jobs through RQ "
                                                    "(several workers, several machines); unset: "
                                                    "MODEL_DIR/jobs.sqlite")
    job_stale_s: float = Field(60.0, gt=0, description="a running job whose process sent no heartbeat for this "
                               "long (another machine's worker) is run again; a dead process on this host at once")
    cache_max_mb: float = Field(10240.0, ge=0, description="image cache cap in MB, least recently used first "
                                                           "(0 = none)")
    embedding_cache_max_mb: float = Field(2048.0, ge=0, description="embedding cache cap in MB, least recently used "
                                                                    "first (0 = none; 5.2 KB an image at 1,280-d)")
    engine: EngineSettings = Field(default_factory=EngineSettings)

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper(cls, v):
        return v.upper() if isinstance(v, str) else v

    @model_validator(mode="after")
    def _auth_pair(self) -> "Settings":
        if bool(self.basic_auth_user) != bool(self.basic_auth_pass):
            raise ValueError("set both BASIC_AUTH_USER and BASIC_AUTH_PASS, or neither")
        return self

    @property
    def basic_auth(self) -> tuple[str, str] | None:
        if self.basic_auth_user and self.basic_auth_pass:
            return self.basic_auth_user, self.basic_auth_pass
        return None
