"""Backend settings from the environment (pydantic-settings).

Server settings keep label-studio-ml 2.x names (LABEL_STUDIO_URL, LABEL_STUDIO_API_KEY,
MODEL_DIR, BASIC_AUTH_USER/BASIC_AUTH_PASS, WORKERS, THREADS, PORT, LOG_LEVEL); engine
knobs carry the ISAL_ prefix. Defaults are sized for a CPU: a small CNN on 32x32 images,
a few dozen epochs, conjugate gradient on the damped Hessian of at most 1024 samples.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from isal_core.params import PARAMETER_SETS
from isal_core.stest import REFERENCE_DAMPING, SOLVERS

#: Strategies the backend serves. Both are influence functions, so a saved s_test scores
#: tasks that arrive after the job (see backend.scores); "gradsim" is ISAL with H = I.
BACKEND_STRATEGIES = ("isal", "gradsim")


class EngineSettings(BaseSettings):
    """ISAL_* knobs: what a training job trains and how it ranks the pool."""

    model_config = SettingsConfigDict(env_prefix="ISAL_", extra="ignore")

    arch: str = Field("small_cnn", description="classifier: small_cnn, resnet18_cifar or a torchvision name")
    epochs: int = Field(30, ge=1, description="training epochs per job (from scratch every job)")
    batch_size: int = Field(64, ge=1, description="training and scoring batch size")
    lr: float = Field(0.05, gt=0, description="SGD learning rate (momentum 0.9, wd 5e-4, x0.1 at 80%)")
    image_size: int = Field(32, ge=8, description="images are resized to image_size x image_size")
    strategy: str = Field("isal", description="isal (influence with the damped Hessian) or gradsim (H = I)")
    solver: str = Field("cg", description="s_test solver: cg, lissa or identity")
    damping: float = Field(REFERENCE_DAMPING, ge=0, description="damping added to the Hessian")
    params: str = Field("weights", description="parameters influence is taken over: weights, last, all, or names")
    top_k: int = Field(1, ge=1, description="pseudo-label top-k for the expected gradient (1 = argmax)")
    hessian_samples: int = Field(1024, ge=1, description="labeled samples that define the Hessian (seeded subset)")
    cg_iters: int = Field(50, ge=1, description="conjugate-gradient iteration cap")
    retrain_every: int = Field(40, ge=0, description="annotation events per automatic retrain; 0 = only START_TRAINING")
    min_labeled: int = Field(2, ge=1, description="fewest usable labeled tasks a job trains on")
    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    seed: int = Field(0, description="seed of training, Hessian subset and solver")
    download_workers: int = Field(8, ge=1, description="parallel image downloads per job")

    @field_validator("arch")
    @classmethod
    def _arch(cls, v: str) -> str:
        from isal_core.models import model_choices

        if v not in model_choices():
            raise ValueError(f"ISAL_ARCH {v!r} is not a known model; e.g. small_cnn, resnet18_cifar, resnet18")
        return v

    @field_validator("strategy")
    @classmethod
    def _strategy(cls, v: str) -> str:
        if v not in BACKEND_STRATEGIES:
            raise ValueError(f"ISAL_STRATEGY must be one of {BACKEND_STRATEGIES}, not {v!r}")
        return v

    @field_validator("solver")
    @classmethod
    def _solver(cls, v: str) -> str:
        if v not in SOLVERS:
            raise ValueError(f"ISAL_SOLVER must be one of {sorted(SOLVERS)}, not {v!r}")
        return v

    @field_validator("params")
    @classmethod
    def _params(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(f"ISAL_PARAMS must be one of {PARAMETER_SETS} or comma-separated parameter names")
        return v.strip()


class Settings(BaseSettings):
    """Server settings (label-studio-ml 2.x names) plus `engine` (ISAL_*)."""

    model_config = SettingsConfigDict(extra="ignore")

    label_studio_url: str | None = Field(
        None, description="Label Studio base URL; unset: the `hostname` Label Studio sends to /setup")
    label_studio_api_key: str | None = Field(
        None, description="legacy token or personal access token; unset: the `access_token` sent to /setup")
    model_dir: str = Field("model_dir", description="models, reference sets and the image cache")
    basic_auth_user: str | None = None
    basic_auth_pass: str | None = None
    host: str = Field("127.0.0.1", description="interface gunicorn binds (0.0.0.0 in a container)")
    port: int = Field(9090, ge=1, le=65535)
    workers: int = Field(1, ge=1, description="gunicorn workers; keep 1: jobs are coalesced per process")
    threads: int = Field(8, ge=1, description="gunicorn threads per worker")
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = "INFO"
    label_studio_timeout: float = Field(60.0, gt=0, description="seconds per Label Studio request")
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
