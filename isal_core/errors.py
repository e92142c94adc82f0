"""Every error the engine raises on purpose shares one base class, `IsalError`.

Each also derives from the builtin a caller would expect (ValueError for bad input,
ArithmeticError for a solver, FloatingPointError for NaN), so `except ValueError` keeps
working. The CLI prints an IsalError as `isal: error: <message>`; anything else is a
programming error and shows its traceback.
"""
from __future__ import annotations


class IsalError(Exception):
    """Base of the engine's errors; the message says what went wrong and what to do."""


class ConfigError(IsalError, ValueError):
    """A setting is unknown, out of range, or does not apply to the chosen option."""


class DataError(IsalError, ValueError):
    """Bad dataset input; the message names the offending path or item."""


class ImageDecodeError(DataError):
    """An image file is missing, truncated or not an image we can decode."""


class ModelError(IsalError, ValueError):
    """A model, parameter set or checkpoint that does not fit what was asked."""


class SelectionError(IsalError, ValueError):
    """An empty pool, reference or labeled set, or a budget the pool cannot meet."""


class NonFiniteError(IsalError, FloatingPointError):
    """The model produced NaN/inf where a number was needed; the message names where."""


class SolverError(IsalError, ArithmeticError):
    """An s_test solver could not produce a finite, trustworthy answer; the message says why."""
