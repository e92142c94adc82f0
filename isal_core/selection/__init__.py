"""Selection strategies by name: ISAL, its variants and the baselines it is compared with.

    make_strategy("isal", settings, seed)   ->  a Strategy: .rank(SelectionContext) -> Ranking

The factory lives here, above the leaves it imports (baselines, diversity, isal), which
import only `base`: a registry without import circles (as baal's `get_heuristic`).
"""
from __future__ import annotations

from ..errors import ConfigError
from ..influence.stest import solver_from
from ..settings import InfluenceSettings
from .base import Ranking, ScoreStrategy, SelectionContext, Strategy, check_budget, influence_ranking
from .baselines import Entropy, LeastConfidence, Margin, Random
from .coldstart import TypicalISAL, TypiClust
from .coverage import ProbCover
from .diversity import BADGE, Coreset
from .isal import ISAL, BatchISAL, GradientSimilarity

__all__ = ["SELF_SPREADING", "resolve_strategy", "serves_clusters", "BADGE", "BASELINES", "BATCH_STRATEGIES",
           "INFLUENCE_STRATEGIES", "ISAL", "STRATEGIES", "BatchISAL", "Coreset", "Entropy", "GradientSimilarity",
           "LeastConfidence", "Margin", "ProbCover", "Random", "Ranking", "ScoreStrategy", "SelectionContext",
           "Strategy", "TypiClust", "TypicalISAL", "check_budget", "influence_ranking", "make_strategy"]

#: Baselines by name; "isal" and "gradsim" (ISAL with H = I) take the influence settings.
BASELINES = {"random": Random, "entropy": Entropy, "margin": Margin, "least_confidence": LeastConfidence,
             "coreset": Coreset}
INFLUENCE_STRATEGIES = ("gradsim", "isal")
#: Batch-aware strategies: BADGE, ISAL whose batch is spread by k-center, and the typicality and coverage
#: strategies of the low-budget literature (TypiClust, ProbCover).
BATCH_STRATEGIES = ("badge", "isal_batch", "isal_typical", "typiclust", "probcover")
STRATEGIES = tuple(BASELINES) + INFLUENCE_STRATEGIES + BATCH_STRATEGIES
#: Strategies that spread a batch over clusters of their own: automatic cluster serving leaves their order alone.
SELF_SPREADING = ("typiclust", "probcover")


def resolve_strategy(name: str, settings) -> str:
    """"auto" -> the strategy measured best for these settings on the validation split (docs/results.md): TypiClust
    for a head on frozen features (on EfficientNet-Lite0 features at 10 to 320 labels it led isal_batch, isal and
    isal_typical), isal_batch for a whole network and for detection. Any other name is itself."""
    if name != "auto":
        return name
    return "typiclust" if settings.frozen else "isal_batch"


def serves_clusters(strategy: str, settings) -> bool:
    """Whether the served order is spread over clusters: `cluster_serving` on, or auto with frozen features for a
    strategy that does not spread its batch over clusters of its own."""
    return settings.serves_clusters and (settings.cluster_serving == "on" or strategy not in SELF_SPREADING)


def make_strategy(name: str, settings: InfluenceSettings | None = None, seed: int = 0,
                  reference: str = "given") -> Strategy:
    """A strategy by name; ISAL's solver and options come from `settings` (defaults when None)."""
    if name == "random":
        return Random(seed=seed)
    if name in BASELINES:
        return BASELINES[name]()
    if name in ("badge", "typiclust", "probcover"):
        return {"badge": BADGE, "typiclust": TypiClust, "probcover": ProbCover}[name](seed=seed)
    if name == "isal_batch":
        return BatchISAL(make_strategy("isal", settings, seed, reference))
    if name == "isal_typical":
        return TypicalISAL(make_strategy("isal", settings, seed, reference))
    if name not in INFLUENCE_STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    settings = settings or InfluenceSettings()
    common = dict(params=settings.params, top_k=settings.top_k, reference=reference, seed=seed)
    if name == "gradsim":
        return GradientSimilarity(**common)
    return ISAL(solver=solver_from(settings, seed), hessian_samples=settings.hessian_samples or None, **common)
