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
from .coldstart import TypiClust
from .coverage import ProbCover
from .diversity import BADGE, Coreset
from .isal import ISAL, BatchISAL, GradientSimilarity

__all__ = ["BADGE", "BASELINES", "BATCH_STRATEGIES", "INFLUENCE_STRATEGIES", "ISAL", "STRATEGIES", "BatchISAL",
           "Coreset", "Entropy", "GradientSimilarity", "LeastConfidence", "Margin", "ProbCover", "Random", "Ranking",
           "ScoreStrategy", "SelectionContext", "Strategy", "TypiClust", "check_budget", "influence_ranking",
           "make_strategy"]

#: Baselines by name; "isal" and "gradsim" (ISAL with H = I) take the influence settings.
BASELINES = {"random": Random, "entropy": Entropy, "margin": Margin, "least_confidence": LeastConfidence,
             "coreset": Coreset}
INFLUENCE_STRATEGIES = ("gradsim", "isal")
#: Batch-aware strategies: BADGE, ISAL whose batch is spread by k-center, and the typicality and coverage
#: strategies of the low-budget literature (TypiClust, ProbCover).
BATCH_STRATEGIES = ("badge", "isal_batch", "typiclust", "probcover")
STRATEGIES = tuple(BASELINES) + INFLUENCE_STRATEGIES + BATCH_STRATEGIES


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
    if name not in INFLUENCE_STRATEGIES:
        raise ConfigError(f"unknown strategy {name!r}; choose from {', '.join(STRATEGIES)}")
    settings = settings or InfluenceSettings()
    common = dict(params=settings.params, top_k=settings.top_k, reference=reference, seed=seed)
    if name == "gradsim":
        return GradientSimilarity(**common)
    return ISAL(solver=solver_from(settings, seed), hessian_samples=settings.hessian_samples or None, **common)
