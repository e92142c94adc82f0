"""ISAL engine: influence of unlabeled samples on a reference loss, for active learning.

    s_test = (H + damping I)^-1 grad l(R)        (stest: CG, LiSSA, Identity)
    I(z)   = -s_test . G_z                       (scoring.influence, vectorized)

The most negative I(z) is labeled first (strategies.ISAL, beside the baselines).
"""
from .adapter import ClassificationAdapter, NonFiniteError, TaskAdapter
from .gradients import HessianOperator, reference_gradient
from .params import select_parameters
from .scoring import influence
from .stest import CG, Identity, LiSSA, SolverError
from .strategies import ISAL, Ranking, SelectionContext, make_strategy

__all__ = [
    "CG", "ClassificationAdapter", "HessianOperator", "ISAL", "Identity", "LiSSA", "NonFiniteError", "Ranking",
    "SelectionContext", "SolverError", "TaskAdapter", "influence", "make_strategy", "reference_gradient",
    "select_parameters",
]
