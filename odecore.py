"""odecore: the Neural ODE machinery every notebook shares.

Read it top to bottom like the math of the tutorial post it follows:

1. solvers (`ode_solve`, `odeint`): Euler, RK4 and adaptive Dormand-Prince 5(4),
   whose steps `step_history` records;
2. `ODEF`: dynamics f(z, t) that can also return vector-Jacobian products;
3. `ODEAdjoint`: the adjoint method as a `torch.autograd.Function`;
4. `NeuralODE`: the module a model holds;
5. `LinearODEF`, `NNODEF`, `ConvODEF`: dynamics several notebooks use.

The notebooks' own helpers (budget, device, data, seeding, plots, GIFs) live
in `nbutils.py`; measurements (time, memory, what a tolerance costs) in
`measure.py`.

Time grids. `t` is either `(T,)`, one grid shared by the whole batch, or
`(T, batch, 1)`, one grid per sample. Every solver hands `f` the time in the
same form: a 0-d tensor for a shared grid, a `(batch, 1)` tensor for
per-sample grids. Per-sample grids are integrated in a normalised time
s in [0, 1] per interval (t = t_i + s * (t_{i+1} - t_i)), so the whole batch
steps together while each sample covers its own interval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor, nn

__all__ = [
    "ODESolveError", "SolverOptions", "ode_solve", "odeint", "mixed_norm", "seminorm", "ODEF",
    "ODEAdjoint", "NeuralODE", "LinearODEF", "NNODEF", "ConvODEF", "METHODS", "ADJOINT_NORMS",
    "Step", "step_history",
]

METHODS = ("euler", "rk4", "dopri5")


class ODESolveError(RuntimeError):
    """A solve that cannot go on: a non-finite state, or a tolerance it cannot meet."""


# ---------------------------------------------------------------------------
# 1. Solvers
# ---------------------------------------------------------------------------
@dataclass(frozen=True)
class SolverOptions:
    """How to solve, with the course's defaults written once (`odeint`, `ode_solve`
    and `NeuralODE` take these fields as keyword arguments).

    `method`: "euler" or "rk4" (fixed steps of at most `h_max` per interval of
    the time grid) or "dopri5" (adaptive, to `rtol` and `atol`); `max_steps`:
    the most steps one interval may take before the solve fails with an error
    saying where; `adjoint_norm`: the error norm of the adjoint's backward
    dopri5 solve, a key of `ADJOINT_NORMS` (see `ODEAdjoint`).
    """

    method: str = "euler"
    h_max: float = 0.05
    rtol: float = 1e-5
    atol: float = 1e-7
    max_steps: int = 100_000
    adjoint_norm: str = "seminorm"

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown method {self.method!r}; choose one of {METHODS}")
        if not self.h_max > 0:
            raise ValueError(f"h_max must be positive, got {self.h_max}")
        if self.rtol < 0 or self.atol < 0 or (self.rtol == 0 and self.atol == 0):
            raise ValueError(f"need rtol >= 0, atol >= 0, not both zero; got {self.rtol}, "
                             f"{self.atol}")
        if self.adjoint_norm not in ADJOINT_NORMS:
            raise ValueError(f"unknown adjoint_norm {self.adjoint_norm!r}; choose one of "
                             f"{tuple(ADJOINT_NORMS)}")
        for name, kind in (("h_max", float), ("rtol", float), ("atol", float),
                           ("max_steps", int)):
            object.__setattr__(self, name, kind(getattr(self, name)))


# The solvers integrate a list of tensors y' = G(s, y) from s = 0 to s = span
# (or back). A list lets the adjoint carry (z, a, a_p..., a_t) with each part
# in its own shape, so the parameter adjoint never needs a (batch, n_params)
# tensor.

State = list  # list[Tensor]


def _axpy(y: State, h: float, coeffs: Sequence[float], ks: Sequence[State]) -> State:
    """y + h * sum_j coeffs[j] * ks[j], part by part, skipping zero coefficients.

    Without a graph, `torch._foreach_add` updates every part in one call: with a
    parameter adjoint per weight tensor, per-part Python loops would dominate
    small models. When backpropagating through the solver, plain `torch.add`
    is used instead: its backward needs no saved tensors, while the foreach
    version keeps two state-sized tensors alive per step.
    """
    out = y
    if torch.is_grad_enabled():
        for c, k in zip(coeffs, ks):
            if c != 0.0:
                out = [torch.add(a, b, alpha=h * c) for a, b in zip(out, k)]
        return list(out)
    for c, k in zip(coeffs, ks):
        if c != 0.0:
            out = torch._foreach_add(out, k, alpha=h * c)
    return list(out)


def _fixed_steps(G: Callable, y: State, span: float, n: int, method: str) -> State:
    h = span / n
    for k in range(n):
        s = k * h
        if method == "euler":
            y = _axpy(y, h, (1.0,), (G(s, y),))
        else:  # classic RK4 (not the 3/8 rule)
            k1 = G(s, y)
            k2 = G(s + h / 2, _axpy(y, h / 2, (1.0,), (k1,)))
            k3 = G(s + h / 2, _axpy(y, h / 2, (1.0,), (k2,)))
            k4 = G(s + h, _axpy(y, h, (1.0,), (k3,)))
            y = _axpy(y, h / 6, (1.0, 2.0, 2.0, 1.0), (k1, k2, k3, k4))
    return y


# Dormand-Prince 5(4) tableau; the last row of A equals B5, so the derivative
# at the accepted point is reused as the next step's first stage (FSAL).
_DP_C = (0.0, 1 / 5, 3 / 10, 4 / 5, 8 / 9, 1.0)
_DP_A = (
    (1 / 5,),
    (3 / 40, 9 / 40),
    (44 / 45, -56 / 15, 32 / 9),
    (19372 / 6561, -25360 / 2187, 64448 / 6561, -212 / 729),
    (9017 / 3168, -355 / 33, 46732 / 5247, 49 / 176, -5103 / 18656),
)
_DP_B5 = (35 / 384, 0.0, 500 / 1113, 125 / 192, -2187 / 6784, 11 / 84)
# The embedded 4th-order weights are the set torchdiffeq uses (Hairer's code has
# another valid set, 5179/57600, ...): the same error estimate means the same steps,
# so NFE can be compared one to one (benchmarks/results.md).
_DP_B4 = (1951 / 21600, 0.0, 22642 / 50085, 451 / 720, -12231 / 42400, 649 / 6300, 1 / 60)
_DP_E = tuple(b5 - b4 for b5, b4 in zip(_DP_B5 + (0.0,), _DP_B4))


# Error norms: a step controller measures a step's error estimate `err` between
# the states `y0` and `y1` with one of these; 1 or less accepts the step.
Norm = Callable[[State, State, State, float, float], float]


def mixed_norm(err: State, y0: State, y1: State, rtol: float, atol: float) -> float:
    """Max over the parts of each part's RMS scaled error (torchdiffeq's mixed norm)."""
    with torch.no_grad():  # step control is not part of the gradient
        return _worst(float((e / (atol + rtol * torch.maximum(a.abs(), b.abs())))
                            .pow(2).mean().sqrt()) for e, a, b in zip(err, y0, y1))


def seminorm(err: State, y0: State, y1: State, rtol: float, atol: float) -> float:
    """The mixed norm of the first two parts alone: the adjoint's z and a (see `ODEAdjoint`)."""
    return mixed_norm(err[:2], y0[:2], y1[:2], rtol, atol)


ADJOINT_NORMS: dict[str, Norm] = {"seminorm": seminorm, "mixed": mixed_norm}


def _worst(values) -> float:
    """The largest value, or inf if any is NaN: Python's max(0.0, nan) is 0.0, which
    would accept a step whose error estimate is NaN as a perfect one."""
    worst = 0.0
    for v in values:
        if math.isnan(v):
            return math.inf
        worst = max(worst, v)
    return worst


def _first_step(G, y0: State, f0: State, span: float, rtol: float, atol: float,
                norm: Norm) -> float:
    """Hairer, Norsett & Wanner's starting step (II.4), for order 5, on the step's norm.

    Their RMS norms scaled by atol + rtol |y0| are `norm(x, y0, y0, ...)`.
    """
    d0, d1 = norm(y0, y0, y0, rtol, atol), norm(f0, y0, y0, rtol, atol)
    h0 = 1e-6 if d0 < 1e-5 or d1 < 1e-5 else 0.01 * d0 / d1
    h0 = min(h0, abs(span))
    direction = math.copysign(1.0, span)
    f1 = G(direction * h0, _axpy(y0, direction * h0, (1.0,), (f0,)))
    d2 = norm([a - b for a, b in zip(f1, f0)], y0, y0, rtol, atol) / h0
    if not math.isfinite(d2):  # f is not finite one small step on: start small, let the
        return h0              # controller shrink the step to where it fails and say so
    h1 = max(1e-6, h0 * 1e-3) if max(d1, d2) <= 1e-15 else (0.01 / max(d1, d2)) ** (1 / 5)
    return min(100 * h0, h1)


def _step_factor(ratio: float) -> float:
    """Next step / this step: 0.9 ratio^(-1/5), within [0.2, 10]; never shrink on accept."""
    if not math.isfinite(ratio):
        return 0.2
    if ratio == 0:
        return 10.0
    lo, hi = (1.0, 10.0) if ratio <= 1.0 else (0.2, 1.0)
    return min(hi, max(lo, 0.9 * ratio ** -0.2))


class Solved(NamedTuple):
    """What solving one interval returns: the state at its end, and the step the
    controller proposes next (dopri5; None for fixed steps). The next interval
    starts from that step, so an adaptive solve over a grid does not restart
    its step size at every grid time."""

    y: State
    h_next: float | None


class Step(NamedTuple):
    """One dopri5 step tried: where it started (`t`, the first sample's time for
    per-sample grids), its size `h` in solver time, the error ratio (the norm of
    the error estimate; at most 1 accepts) and whether it was accepted."""

    t: float
    h: float
    ratio: float
    accepted: bool


_HISTORIES: list[list[Step]] = []  # the open `step_history` blocks


@contextmanager
def step_history() -> Iterator[list[Step]]:
    """Record every dopri5 step tried inside the block, accepted or rejected, as `Step`s:
    `with odecore.step_history() as steps: odeint(...)`. A read-only view of the step
    controller, for teaching and diagnosis; the solve itself is unchanged."""
    steps: list[Step] = []
    _HISTORIES.append(steps)
    try:
        yield steps
    finally:
        _HISTORIES.remove(steps)


def _dopri5(G, y: State, span: float, opts: SolverOptions, where: Callable[[float], str],
            norm: Norm = mixed_norm, h: float | None = None,
            clock: Callable[[float], float] | None = None) -> Solved:
    """Adaptive Dormand-Prince 5(4) from s = 0 to s = span, landing exactly on span.

    `h` is the first step to try (else Hairer's starting step); `norm` measures
    each step's error estimate; `clock` maps solver time to real time for
    `step_history`.
    """
    rtol, atol, max_steps = opts.rtol, opts.atol, opts.max_steps
    direction = math.copysign(1.0, span)
    s, end = 0.0, abs(span)
    k1 = G(0.0, y)
    if not all(torch.isfinite(k).all() for k in k1):
        raise ODESolveError(f"the dynamics returned a non-finite derivative {where(0.0)}")
    h = h or _first_step(G, y, k1, span, rtol, atol, norm)
    nonfinite = False
    for _ in range(max_steps):
        last = h >= end - s
        if last:  # clip to land on the interval's end; remember the proposal
            h_proposed, h = h, end - s
        if h <= 1e-12 * end and not last:
            why = ("the state or its derivative turned NaN or infinite" if nonfinite
                   else f"cannot meet rtol={rtol:g}, atol={atol:g}")
            raise ODESolveError(f"dopri5 step size underflow {where(direction * s)}: {why}")
        ks = [k1]
        for c, arow in zip(_DP_C[1:], _DP_A):
            ks.append(G(direction * (s + c * h), _axpy(y, direction * h, arow, ks)))
        y_new = _axpy(y, direction * h, _DP_B5, ks)
        k_new = G(direction * (s + h), y_new)
        hd = direction * h
        err = _axpy([k * (hd * _DP_E[0]) for k in k1], hd, _DP_E[1:], ks[1:] + [k_new])
        ratio = norm(err, y, y_new, rtol, atol)
        nonfinite = not math.isfinite(ratio)
        for history in _HISTORIES:
            t_here = clock(direction * s) if clock else direction * s
            history.append(Step(t_here, direction * h, ratio, ratio <= 1.0))
        if ratio <= 1.0:  # accept
            y, k1 = y_new, k_new
            if last:
                # the next interval starts with the controller's step, not the clipped one
                return Solved(y, max(h_proposed, h * _step_factor(ratio)))
            s = s + h
        h = h * _step_factor(ratio)
    raise ODESolveError(
        f"dopri5 exceeded max_steps={max_steps} {where(direction * s)} "
        f"(rtol={rtol:g}, atol={atol:g})")


def _n_fixed_steps(max_dt: float, h_max: float, max_steps: int) -> int:
    # A relative slack of 1e-4 absorbs float32 rounding of the interval (4.4 - 4.2
    # is 0.20000029 in float32), so h_max = 0.2 still means one step there.
    n = max(1, math.ceil(max_dt / h_max * (1 - 1e-4)))
    if n > max_steps:
        raise ValueError(
            f"an interval of length {max_dt:g} with h_max={h_max:g} needs {n} steps, "
            f"more than max_steps={max_steps}")
    return n


class _Interval:
    """Maps solver time s to real time for one interval [t0, t1] of a grid.

    Shared grid (t0 0-d): s runs over [0, t1 - t0] and t = t0 + s.
    Per-sample grids (t0 of shape (batch, 1)): s runs over [0, 1],
    t = t0 + s * dt, and derivatives are scaled by dt (chain rule).
    """

    def __init__(self, t0: Tensor, t1: Tensor, z_dim: int):
        self.t0, self.t1 = t0, t1
        # Backpropagating into a shared grid through the solver (adjoint=False)
        # needs the step to be a tensor too, so use the scaled form then.
        if t0.dim() == 0 and not (t0.requires_grad or t1.requires_grad):
            self.scale = None
            self.span = float((t1 - t0).detach())
            self.max_dt = abs(self.span)
        else:
            dt = t1 - t0
            self.dt = dt
            self.scale = dt.reshape(-1, *([1] * (z_dim - 1)))
            self.span = 1.0
            self.max_dt = float(dt.detach().abs().max())

    def time(self, s: float) -> Tensor:
        if self.scale is None:
            return self.t0 + s
        return self.t0 + s * self.dt

    def clock(self, s: float) -> float:
        """Real time at solver time s (the first sample's, for per-sample grids)."""
        return _first(self.time(s).detach())

    def where(self, s: float) -> str:
        return (f"at t={self.clock(s):.6g} (integrating from t={_first(self.t0):.6g} "
                f"to t={_first(self.t1):.6g})")


def _first(t: Tensor) -> float:
    return float(t.flatten()[0])


def _integrate(G, y: State, iv: _Interval, opts: SolverOptions, reverse: bool = False,
               norm: Norm = mixed_norm, h: float | None = None) -> Solved:
    """Integrate y' = G(s, y) over one interval, from its start, or back from its end."""
    span = -iv.span if reverse else iv.span
    if reverse:  # s counts from the interval's end, so shift the clock
        G0, G = G, (lambda s, y: G0(iv.span + s, y))
        where = (lambda s: iv.where(iv.span + s))
        clock = (lambda s: iv.clock(iv.span + s))
    else:
        where, clock = iv.where, iv.clock
    if opts.method == "dopri5":
        return _dopri5(G, y, span, opts, where, norm, h, clock)
    n = _n_fixed_steps(iv.max_dt, opts.h_max, opts.max_steps)
    return Solved(_fixed_steps(G, y, span, n, opts.method), None)


def _forward_field(f: Callable, iv: _Interval) -> Callable:
    if iv.scale is None:
        return lambda s, y: [f(y[0], iv.time(s))]
    return lambda s, y: [f(y[0], iv.time(s)) * iv.scale]


def _check_finite(z: Tensor, what: str, iv: _Interval | None = None) -> None:
    if not torch.isfinite(z).all():
        span = "" if iv is None else (
            f" between t={_first(iv.t0):.6g} and t={_first(iv.t1):.6g}")
        raise ODESolveError(f"{what} became NaN or infinite{span}")


def _check_inputs(z0: Tensor, t: Tensor) -> Tensor:
    """Validate (z0, t) and return t in z0's dtype; errors name what is wrong."""
    if not isinstance(z0, Tensor) or not isinstance(t, Tensor):
        raise TypeError(f"z0 and t must be tensors, got {type(z0).__name__} and {type(t).__name__}")
    if not z0.is_floating_point():
        raise TypeError(f"z0 must be a floating-point tensor, got dtype {z0.dtype}")
    if z0.dim() < 1:
        raise ValueError(f"z0 must have a batch dimension, got shape {tuple(z0.shape)}")
    if t.device != z0.device:
        raise ValueError(f"z0 is on {z0.device} but t is on {t.device}; move them to one device")
    if t.dim() == 1:
        pass
    elif t.dim() == 3 and t.shape[2] == 1:
        if t.shape[1] != z0.shape[0]:
            raise ValueError(
                f"per-sample time grid t of shape {tuple(t.shape)} has batch {t.shape[1]} "
                f"but z0 of shape {tuple(z0.shape)} has batch {z0.shape[0]}")
    else:
        raise ValueError(
            f"t must have shape (T,) or (T, batch, 1), got {tuple(t.shape)}")
    if t.shape[0] < 2:
        raise ValueError(f"t needs at least 2 time points, got {t.shape[0]}")
    if not t.is_floating_point():
        t = t.to(z0.dtype)
    t = t.to(z0.dtype)
    if not torch.isfinite(t).all():
        raise ValueError("t contains NaN or infinite values")
    d = (t[1:] - t[:-1]).detach()
    if not ((d > 0).all() or (d < 0).all()):
        raise ValueError(
            "t must be strictly monotonic (all increasing or all decreasing), "
            f"got consecutive differences from {float(d.min()):.4g} to {float(d.max()):.4g}")
    if not torch.isfinite(z0).all():
        raise ValueError("z0 contains NaN or infinite values")
    return t


def _count(f: Callable, n: int = 1) -> None:
    if isinstance(f, ODEF):
        f.nfe += n


def _solve_path(f: Callable, z0: Tensor, t: Tensor, opts: SolverOptions) -> Tensor:
    """States at every time of the grid, shape (T, *z0.shape); differentiable."""

    def counted(z, tt):
        _count(f)
        return f(z, tt)

    zs, z, h = [z0], z0, None
    for i in range(t.shape[0] - 1):
        iv = _Interval(t[i], t[i + 1], z0.dim())
        (z,), h = _integrate(_forward_field(counted, iv), [z], iv, opts, h=h)
        _check_finite(z, "the state", iv)
        zs.append(z)
    return torch.stack(zs)


_D = SolverOptions()  # the defaults, read by the signatures below


def ode_solve(z0: Tensor, t0, t1, f: Callable, method: str = _D.method, h_max: float = _D.h_max,
              rtol: float = _D.rtol, atol: float = _D.atol, max_steps: int = _D.max_steps
              ) -> Tensor:
    """z(t1) from z(t0) = z0 under dz/dt = f(z, t): the post's `ode_solve`.

    `t0`, `t1` are numbers, 0-d tensors or `(batch, 1)` tensors (one interval
    per sample). Fixed-step methods take ceil(|t1 - t0| / h_max) equal steps.
    The options are `SolverOptions`'.
    """
    t0 = torch.as_tensor(t0, dtype=z0.dtype, device=z0.device)
    t1 = torch.as_tensor(t1, dtype=z0.dtype, device=z0.device)
    t = torch.stack([t0, t1])
    return odeint(f, z0, t, method, h_max, rtol, atol, max_steps)[-1]


def odeint(f: Callable, z0: Tensor, t: Tensor, method: str = _D.method, h_max: float = _D.h_max,
           rtol: float = _D.rtol, atol: float = _D.atol, max_steps: int = _D.max_steps
           ) -> Tensor:
    """States at every time of `t` (`(T,)` or `(T, batch, 1)`), shape `(T, *z0.shape)`.

    Differentiable by plain autograd through the solver's operations; use
    `NeuralODE(adjoint=True)` for constant-memory gradients. The options are
    `SolverOptions`'.
    """
    opts = SolverOptions(method, h_max, rtol, atol, max_steps)
    return _solve_path(f, z0, _check_inputs(z0, t), opts)


# ---------------------------------------------------------------------------
# 2. Dynamics
# ---------------------------------------------------------------------------
class ODEF(nn.Module):
    """Base class for dynamics dz/dt = f(z, t); subclasses define `forward(z, t)`.

    `nfe` counts evaluations; `NeuralODE` reads it to report the forward and
    backward pass separately.
    """

    def __init__(self) -> None:
        super().__init__()
        self.nfe = 0

    def forward_with_grad(self, z: Tensor, t: Tensor, grad_outputs: Tensor,
                          params: Sequence[Tensor] | None = None, need_t: bool = True):
        """f(z, t) and the vector-Jacobian products a·df/dz, a·df/dt, a·df/dp.

        a·df/dp is a tuple with one tensor per parameter, in that parameter's
        shape, summed over the batch by autograd (the post instead expanded a
        `(batch, n_params)` tensor). a·df/dt has t's shape.
        """
        params = tuple(p for p in self.parameters() if p.requires_grad) if params is None \
            else tuple(params)
        _count(self)
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            t = t.detach().requires_grad_(need_t)
            out = self(z, t)
            inputs = (z, t) + params if need_t else (z,) + params
            if out.requires_grad:
                grads = torch.autograd.grad(out, inputs, grad_outputs, allow_unused=True)
            else:  # f of t alone, and t needs no gradient: out has no graph, every vjp is 0
                grads = [None] * len(inputs)
        grads = [torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs)]
        if need_t:
            return out.detach(), grads[0], grads[1], tuple(grads[2:])
        return out.detach(), grads[0], None, tuple(grads[1:])

    def flatten_parameters(self) -> Tensor:
        """All parameters as one flat vector, as in the post (handy for inspection)."""
        return torch.cat([p.flatten() for p in self.parameters()])


# ---------------------------------------------------------------------------
# 3. The adjoint method
# ---------------------------------------------------------------------------
class ODEAdjoint(torch.autograd.Function):
    """Gradients of z(t_i) by solving the adjoint system backwards in time.

    The forward solve keeps no graph and saves only the states at the requested
    times; the backward pass integrates the augmented state (z, a, a_p, a_t)
    from t_N back to t_0 one interval at a time, adding each observation's
    dL/dz(t_i) to a as it passes t_i. Memory is O(1) in the number of steps.

    Step control on a seminorm (`opts.adjoint_norm`, default "seminorm"): with
    dopri5, the backward solve's error estimate measures z and a only. The
    parameter and time adjoints a_p, a_t are integrals, d(a_p)/dt = -a·df/dp,
    that nothing else in the system reads, so their local errors do not
    propagate; yet a_p starts at zero, so atol alone scales its error and the
    mixed norm (every part, as torchdiffeq's default) forces tiny steps for
    accuracy that the gradient does not need. Kidger, Chen & Lyons, "Hey, that's
    not an ODE: faster ODE adjoints via seminorms" (ICML 2021) leave them out,
    and report a median 40% fewer backward evaluations at unchanged accuracy;
    "mixed" keeps every part in the norm.
    """

    @staticmethod
    def forward(ctx, z0: Tensor, t: Tensor, func: ODEF, opts: SolverOptions,
                *params: Tensor) -> Tensor:
        with torch.no_grad():
            z = _solve_path(func, z0, t, opts)
        # Parameters are kept by reference (they are leaves of func's graph).
        ctx.func, ctx.opts, ctx.params = func, opts, params
        ctx.save_for_backward(t, z)
        return z

    @staticmethod
    def backward(ctx, grad_z: Tensor):
        t, z = ctx.saved_tensors
        func, opts, params = ctx.func, ctx.opts, ctx.params
        norm = ADJOINT_NORMS[opts.adjoint_norm]  # the seminorm measures z and a alone
        need_t = ctx.needs_input_grad[1]
        need_p = [ctx.needs_input_grad[4 + i] for i in range(len(params))]
        params_g = [p for p, need in zip(params, need_p) if need]
        nfe0, n_p = func.nfe, len(params_g)
        shared = t.dim() == 1
        sum_dims = tuple(range(1, z.dim() - 1))  # a sample's state dims (per-sample t)

        def time_grad(i: int) -> Tensor:
            # dL/dt_i from observation i alone: f(z_i, t_i) · dL/dz_i.
            _count(func)
            with torch.no_grad():
                prod = func(z[i], t[i]) * grad_z[i]
            if shared:
                return prod.sum()
            return (prod.sum(dim=sum_dims) if sum_dims else prod).reshape(-1, 1)

        with torch.no_grad():
            a = torch.zeros_like(z[0])
            a_p = [torch.zeros_like(p) for p in params_g]
            a_t = torch.zeros_like(t[0]) if need_t else None
            t_grad = torch.zeros_like(t) if need_t else None
            h = None  # dopri5's step, carried from interval to interval
            for i in range(t.shape[0] - 1, 0, -1):
                a = a + grad_z[i]
                if need_t:
                    t_grad[i] = time_grad(i)
                    a_t = a_t - t_grad[i]
                iv = _Interval(t[i - 1], t[i], z.dim() - 1)

                def G(s, y, iv=iv):
                    # da/dt = -a·df/dz etc.: one vjp with -a gives every minus sign.
                    v = -y[1] if iv.scale is None else y[1] * -iv.scale
                    f, vz, vt, vp = func.forward_with_grad(y[0], iv.time(s), v, params_g, need_t)
                    if iv.scale is not None:
                        f = f * iv.scale
                    out = [f, vz, *vp]
                    if need_t:
                        out.append(vt)
                    return out

                y = [z[i], a] + a_p + ([a_t] if need_t else [])
                y, h = _integrate(G, y, iv, opts, reverse=True, norm=norm, h=h)
                a, a_p = y[1], y[2:2 + n_p]
                if need_t:
                    a_t = y[-1]
                _check_finite(a, "the adjoint state", iv)
            a = a + grad_z[0]
            if need_t:
                t_grad[0] = a_t
        func.nfe_backward = func.nfe - nfe0
        it = iter(a_p)
        grad_params = [next(it) if need else None for need in need_p]
        return (a, t_grad, None, None, *grad_params)


# ---------------------------------------------------------------------------
# 4. NeuralODE
# ---------------------------------------------------------------------------
class NeuralODE(nn.Module):
    """z(t) from z(t_0) under learned dynamics `func`, as a layer.

    `adjoint=True` uses `ODEAdjoint` (constant memory); `adjoint=False`
    backpropagates through the solver's operations (the paper's RK-Net).
    After a forward (and backward) pass, `nfe_forward` and `nfe_backward`
    give the function evaluations of that pass. `adjoint_norm` sets the
    backward dopri5 solve's error norm: "seminorm" (z and a only, the default)
    or "mixed" (every part of the augmented state); see `ODEAdjoint`.
    """

    def __init__(self, func: ODEF, method: str = _D.method, h_max: float = _D.h_max,
                 rtol: float = _D.rtol, atol: float = _D.atol, adjoint: bool = True,
                 max_steps: int = _D.max_steps, adjoint_norm: str = _D.adjoint_norm):
        super().__init__()
        if not isinstance(func, ODEF):
            raise TypeError(f"func must be an ODEF, got {type(func).__name__}")
        self.func = func
        self.adjoint = adjoint
        self.opts = SolverOptions(method, h_max, rtol, atol, max_steps, adjoint_norm)
        self.nfe_forward = 0

    @property
    def nfe_backward(self) -> int:
        return getattr(self.func, "nfe_backward", 0) if self.adjoint else 0

    def forward(self, z0: Tensor, t: Tensor | None = None,
                return_whole_sequence: bool = False) -> Tensor:
        if t is None:
            t = torch.tensor([0.0, 1.0], dtype=z0.dtype, device=z0.device)
        t = _check_inputs(z0, t)
        nfe0 = self.func.nfe
        self.func.nfe_backward = 0
        if self.adjoint:
            params = [p for p in self.func.parameters()]
            z = ODEAdjoint.apply(z0, t, self.func, self.opts, *params)
        else:
            z = _solve_path(self.func, z0, t, self.opts)
        self.nfe_forward = self.func.nfe - nfe0
        return z if return_whole_sequence else z[-1]


# ---------------------------------------------------------------------------
# 5. Dynamics shared by several notebooks
# ---------------------------------------------------------------------------
class LinearODEF(ODEF):
    """dz/dt = W z: the linear dynamics of notebook 01 and the spiral data."""

    def __init__(self, W: Tensor):
        super().__init__()
        d = W.shape[0]
        self.lin = nn.Linear(d, d, bias=False)
        W = torch.as_tensor(W)
        self.lin.weight = nn.Parameter(W.clone() if W.is_floating_point() else W.float())

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        return self.lin(x)


class NNODEF(ODEF):
    """dz/dt = MLP(z[, t]) with ELU activations, as in the post."""

    def __init__(self, in_dim: int, hid_dim: int, time_invariant: bool = False):
        super().__init__()
        self.time_invariant = time_invariant
        self.lin1 = nn.Linear(in_dim + (0 if time_invariant else 1), hid_dim)
        self.lin2 = nn.Linear(hid_dim, hid_dim)
        self.lin3 = nn.Linear(hid_dim, in_dim)
        self.elu = nn.ELU(inplace=True)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        if not self.time_invariant:
            # t is 0-d (shared grid) or (batch, 1) (per-sample grids).
            x = torch.cat((x, t.expand(*x.shape[:-1], 1)), dim=-1)
        h = self.elu(self.lin1(x))
        h = self.elu(self.lin2(h))
        return self.lin3(h)


class ConvODEF(ODEF):
    """The post's dynamics for images: two 3x3 convolutions, each fed the time.

    The time enters as one constant extra channel. GroupNorm instead of the
    post's BatchNorm: a function of (z, t) alone, the same in training and
    evaluation (notebook 02 shows why that matters).
    """

    def __init__(self, dim: int):
        super().__init__()
        self.conv1 = nn.Conv2d(dim + 1, dim, kernel_size=3, padding=1, bias=False)
        self.norm1 = nn.GroupNorm(min(32, dim), dim)
        self.conv2 = nn.Conv2d(dim + 1, dim, kernel_size=3, padding=1, bias=False)
        self.norm2 = nn.GroupNorm(min(32, dim), dim)

    @staticmethod
    def with_time(x: Tensor, t: Tensor) -> Tensor:
        """x with t appended as a channel; t is 0-d (shared grid) or (batch, 1) (per sample)."""
        bs, _, h, w = x.shape
        return torch.cat((x, t.to(x.dtype).reshape(-1, 1, 1, 1).expand(bs, 1, h, w)), dim=1)

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        h = self.norm1(torch.relu(self.conv1(self.with_time(x, t))))
        return self.norm2(torch.relu(self.conv2(self.with_time(h, t))))
