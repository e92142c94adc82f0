"""ISAL engine: influence of unlabeled samples on a reference loss, for active learning."""
from .adapter import ClassificationAdapter, NonFiniteError, TaskAdapter
from .params import select_parameters

__all__ = ["ClassificationAdapter", "NonFiniteError", "TaskAdapter", "select_parameters"]
