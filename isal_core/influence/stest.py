"""s_test = (H + damping * I)^-1 grad l(R): three solvers, one damped system.

Every solver answers the same question, so they can be swapped and compared:
- `CG`: conjugate gradient on the exact Hessian of a fixed labeled subset.
  Deterministic, stops on a residual tolerance; the default.
- `LiSSA`: the reference code's stochastic recursion (Agarwal et al.)
      h_{j+1} = v + (1 - d) h_j - H_j h_j / scale,   d = damping / scale,
  whose fixed point is scale * (H + damping I)^-1 v; we divide by scale at the end.
  The reference settings (damp 0.01, scale 1e4) are damping = 100 here.
- `Identity`: s_test = v, the paper's "Gradient Similarity" ablation.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..errors import ConfigError, SolverError
from ..settings import REFERENCE_DAMPING, InfluenceSettings
from .gradients import HessianOperator

log = logging.getLogger(__name__)


@dataclass
class SolveResult:
    s_test: Tensor
    info: dict = field(default_factory=dict)


@dataclass
class Identity:
    """H replaced by the identity: influence becomes gradient similarity."""

    name = "identity"

    def solve(self, op: HessianOperator | None, v: Tensor) -> SolveResult:
        return SolveResult(v.clone(), {"solver": self.name})


@dataclass
class CG:
    """Conjugate gradient on (H + damping I) x = v, H over the operator's batches.

    Deep nets' Hessians are indefinite; if a search direction has non-positive curvature
    (damping too small) CG stops at the previous iterate with a warning, as truncated CG
    does, and says so in info["stopped"]; at the first iteration it is an error.
    """

    damping: float = REFERENCE_DAMPING
    max_iter: int = 50
    tol: float = 1e-5
    callback: Callable[[int, Tensor], None] | None = None  # (iteration, x) after each step
    name = "cg"

    def solve(self, op: HessianOperator, v: Tensor) -> SolveResult:
        if self.damping < 0:
            raise SolverError("CG damping must be >= 0")
        v_norm = v.norm()
        x = torch.zeros_like(v)
        if v_norm == 0:
            return SolveResult(x, {"solver": self.name, "iterations": 0, "residual": 0.0})
        r = v.clone()
        p = r.clone()
        rr = r.dot(r)
        it, stopped = 0, None
        for it in range(1, self.max_iter + 1):
            ap = op.hvp(p) + self.damping * p
            curvature = p.dot(ap)
            if not torch.isfinite(curvature):
                raise SolverError(f"CG curvature is NaN/inf at iteration {it}")
            if curvature <= 0:
                message = (f"CG met non-positive curvature {float(curvature):.3g} at iteration {it}: "
                           f"H + {self.damping:g} I is not positive definite here; raise the damping")
                if it == 1:
                    raise SolverError(message)
                log.warning("%s; keeping the iterate before it (truncated CG)", message)
                stopped = "negative curvature"
                break
            alpha = rr / curvature
            x += alpha * p
            r -= alpha * ap
            if self.callback is not None:
                self.callback(it, x)
            rr_new = r.dot(r)
            if rr_new.sqrt() <= self.tol * v_norm:
                rr = rr_new
                break
            p = r + (rr_new / rr) * p
            rr = rr_new
        residual = float(rr.sqrt() / v_norm)
        if not torch.isfinite(x).all():
            raise SolverError("CG produced NaN/inf")
        return SolveResult(x, {"solver": self.name, "iterations": it, "residual": residual, "stopped": stopped})


@dataclass
class LiSSA:
    """Stochastic Neumann-series solver, as in the reference code.

    batch_size samples per Hessian estimate (the reference uses 1; 0 = the whole
    labeled set, a deterministic Neumann series), `depth` steps per
    chain, `repeats` chains averaged. A chain whose norm leaves the bound ||v|| / d
    (which a convergent recursion on a PSD Hessian never exceeds) or turns NaN/inf is
    diverging: with `backoff` > 0 the scale is multiplied by 10 (the damping, and so
    the answer, stays the same; convergence gets slower) and the chain restarts, with
    a warning; once backoff is spent a SolverError names the scale to raise.
    """

    damping: float = REFERENCE_DAMPING
    scale: float = 1e4
    depth: int = 250
    repeats: int = 4
    batch_size: int = 1
    seed: int = 0
    backoff: int = 3
    divergence_factor: float = 10.0
    callback: Callable[[int, Tensor], None] | None = None  # (chains done, running mean) after each chain
    name = "lissa"

    def solve(self, op: HessianOperator, v: Tensor) -> SolveResult:
        if self.scale <= 0 or self.damping < 0 or self.depth < 1 or self.repeats < 1:
            raise SolverError("LiSSA needs scale > 0, damping >= 0, depth >= 1, repeats >= 1")
        generator = torch.Generator().manual_seed(self.seed)
        samples = _sample_pool(op) if self.batch_size > 0 else []
        estimates, scales, norms = [], [], []
        for chain in range(self.repeats):
            scale = self.scale
            for attempt in range(self.backoff + 1):
                try:
                    h, history = self._chain(op, v, samples, scale, generator)
                    break
                except _Diverged as exc:
                    if attempt == self.backoff:
                        raise SolverError(
                            f"LiSSA diverged at step {exc.step} of chain {chain} with scale {scale:g} "
                            f"(|h| = {exc.norm:.3g} > bound {exc.bound:.3g}): the scale does not push the "
                            f"Hessian's top eigenvalue below 1; raise the LiSSA scale") from None
                    log.warning("LiSSA diverged with scale %g at step %d; retrying with scale %g",
                                scale, exc.step, scale * 10)
                    scale *= 10
            estimates.append(h / scale)
            scales.append(scale)
            norms.append(history)
            if self.callback is not None:
                self.callback(chain + 1, torch.stack(estimates).mean(0))
        s_test = torch.stack(estimates).mean(0)
        return SolveResult(s_test, {"solver": self.name, "scales": scales, "norms": norms})

    def _chain(self, op, v, samples, scale, generator):
        d = self.damping / scale
        bound = self.divergence_factor * float(v.norm()) / max(d, 1e-12)
        h = v.clone()
        history = []
        for step in range(self.depth):
            batch = _draw(samples, self.batch_size, generator) if samples else None
            h = v + (1 - d) * h - op.hvp(h, batch) / scale
            norm = float(h.norm())
            history.append(norm)
            if not math.isfinite(norm) or norm > bound:
                raise _Diverged(step, norm, bound)
        return h, history


class _Diverged(Exception):
    def __init__(self, step: int, norm: float, bound: float):
        self.step, self.norm, self.bound = step, norm, bound


def _sample_pool(op: HessianOperator) -> list:
    """The operator's batches split into single samples, for random minibatches."""
    singles = []
    for inputs, targets in op.batches:
        for i in range(len(targets)):
            singles.append((_index(inputs, i), _index(targets, i)))
    return singles


def _index(x, i):
    if isinstance(x, Tensor):
        return x[i:i + 1]
    if isinstance(x, (list, tuple)):
        return [x[i]]
    raise TypeError(f"cannot split batch element of type {type(x).__name__}")


def _draw(samples: list, batch_size: int, generator: torch.Generator):
    idx = torch.randint(len(samples), (batch_size,), generator=generator).tolist()
    picked = [samples[i] for i in idx]
    inputs = [p[0] for p in picked]
    targets = [p[1] for p in picked]
    if isinstance(inputs[0], Tensor):
        return torch.cat(inputs), torch.cat(targets)
    return sum(inputs, []), sum(targets, [])


SOLVERS = {"cg": CG, "lissa": LiSSA, "identity": Identity}


def make_solver(name: str, **options):
    """Solver by name; an option the solver does not take is a ConfigError, never dropped."""
    if name not in SOLVERS:
        raise ConfigError(f"unknown s_test solver {name!r}; choose from {sorted(SOLVERS)}")
    cls = SOLVERS[name]
    fields = getattr(cls, "__dataclass_fields__", {})
    unknown = sorted(k for k in options if k not in fields)
    if unknown:
        raise ConfigError(f"solver {name!r} takes no option(s) {unknown}; it takes {sorted(fields)}")
    return cls(**options)


def solver_from(settings: InfluenceSettings, seed: int = 0):
    """The solver `settings` choose, with its options (LiSSA's sampling seeded with `seed`)."""
    options = settings.solver_options()
    if settings.solver == "lissa":
        options["seed"] = seed
    return make_solver(settings.solver, **options)
