"""ISAL engine: influence of unlabeled samples on a reference loss, for active learning.

    s_test = (H + damping I)^-1 grad l(R)        (stest: CG, LiSSA, Identity)
    I(z)   = -s_test . G_z                       (scoring.influence, vectorized)

The most negative I(z) is labeled first. A task plugs in through one `TaskAdapter`;
one round (fit, prepare s_test, score, rank) is `Learner.round`; its settings are one
schema, `EngineSettings`.
"""
from .errors import ConfigError, DataError, IsalError, ModelError, NonFiniteError, SelectionError, SolverError
from .influence.gradients import HessianOperator, reference_gradient
from .influence.params import select_parameters
from .influence.pool import influence
from .influence.scorer import InfluenceScorer, PoolScores
from .influence.stest import CG, Identity, LiSSA
from .learner import Learner, RoundResult
from .selection import ISAL, Ranking, SelectionContext, make_strategy
from .settings import EngineSettings
from .tasks.base import Metric, TaskAdapter
from .tasks.classification import ClassificationAdapter

__all__ = [
    "CG", "ClassificationAdapter", "ConfigError", "DataError", "EngineSettings", "HessianOperator", "ISAL",
    "Identity", "InfluenceScorer", "IsalError", "Learner", "LiSSA", "Metric", "ModelError", "NonFiniteError",
    "PoolScores", "Ranking", "RoundResult", "SelectionContext", "SelectionError", "SolverError", "TaskAdapter",
    "influence", "make_strategy", "reference_gradient", "select_parameters",
]
