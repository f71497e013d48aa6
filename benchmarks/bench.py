"""odecore against torchdiffeq, measured side by side; writes benchmarks/results.md.

    make bench            # installs torchdiffeq (a development dependency) and runs this

(`make bench` puts `tests/` on the path: the test problems are shared.)

One process, threads fixed, interleaved repetitions (medians, warm-up
excluded). Memory is the resident-set peak of a fresh process per
configuration, the only honest peak on a CPU.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torchdiffeq
from bench_report import DOPRI, NORM_REF_STEPS, report
from torch import nn
from torchdiffeq._impl.fixed_grid import FixedGridODESolver
from torchdiffeq._impl.misc import Perturb
from torchdiffeq._impl.odeint import SOLVERS
from torchdiffeq._impl.rk_common import rk4_step_func

from measure import in_fresh_process, peak_memory_mb, times
from nbutils import cpu_name
from odecore import NNODEF, ConvODEF, NeuralODE
from problems import Squash, rel_err  # tests/problems.py: `make bench` puts tests/ on the path

ROOT = Path(__file__).resolve().parents[1]


class ClassicRK4(FixedGridODESolver):
    """torchdiffeq's fixed grid with the classic RK4 tableau.

    torchdiffeq's own "rk4" steps with the 3/8 rule; odecore's rk4 is the
    classic tableau. Comparing like with like needs the same tableau.
    """

    order = 4

    def _step_func(self, func, t0, dt, t1, y0):
        f0 = func(t0, y0, perturb=Perturb.NEXT if self.perturb else Perturb.NONE)
        return rk4_step_func(func, t0, dt, t1, y0, f0=f0, perturb=self.perturb), f0


SOLVERS["rk4_classic"] = ClassicRK4


class Flipped(nn.Module):
    """torchdiffeq calls func(t, y); odecore's ODEF is f(z, t). Counts evaluations."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f
        self.nfe = 0

    def forward(self, t, y):
        self.nfe += 1
        return self.f(y, t)


# -------------------------------------------------------------------------
# Problems
# -------------------------------------------------------------------------
def mlp_problem(dtype, batch=512, dim=2, hidden=64, time_invariant=False):
    torch.manual_seed(0)
    func = NNODEF(dim, hidden, time_invariant=time_invariant).to(dtype)
    return func, torch.randn(batch, dim, dtype=dtype)


def conv_problem(dtype, batch=32):
    torch.manual_seed(0)
    func = ConvODEF(64).to(dtype).eval()  # eval mode: a fixed field
    return func, torch.randn(batch, 64, 6, 6, dtype=dtype)


# name: (odecore method, torchdiffeq method, step); "ref" is the accurate reference.
FIXED = {"euler": ("euler", "euler", 0.05), "rk4": ("rk4", "rk4_classic", 0.25),
         "ref": ("rk4", None, 1 / 400)}


def run_ours(func, z0, t, method, loss_w=None):
    """Solution and adjoint gradients (z0, params, t) through odecore; NFE fwd/bwd."""
    z0 = z0.clone().requires_grad_()
    t = t.clone().requires_grad_()
    func.zero_grad()
    opts = dict(method=method, **DOPRI) if method == "dopri5" else dict(
        method=FIXED[method][0], h_max=FIXED[method][2])
    # like with like: torchdiffeq's default adjoint norm is mixed (section 5 compares norms)
    ode = NeuralODE(func, adjoint_norm="mixed", **opts)
    z = ode(z0, t, return_whole_sequence=True)
    w = torch.ones_like(z) if loss_w is None else loss_w
    (z * w).sum().backward()
    grads = [z0.grad, t.grad] + [p.grad.clone() for p in func.parameters()]
    return z.detach(), grads, ode.nfe_forward, ode.nfe_backward


def run_td(func, z0, t, method, loss_w=None):
    wrapped = Flipped(func)
    z0 = z0.clone().requires_grad_()
    t = t.clone().requires_grad_()
    func.zero_grad()
    if method == "dopri5":
        kw = dict(method="dopri5", **DOPRI)
    else:
        kw = dict(method=FIXED[method][1], options=dict(step_size=FIXED[method][2]))
    z = torchdiffeq.odeint_adjoint(wrapped, z0, t, **kw)
    nfe_f = wrapped.nfe
    w = torch.ones_like(z) if loss_w is None else loss_w
    (z * w).sum().backward()
    grads = [z0.grad, t.grad] + [p.grad.clone() for p in func.parameters()]
    return z.detach(), grads, nfe_f, wrapped.nfe - nfe_f


# -------------------------------------------------------------------------
# 1. Agreement (float64)
# -------------------------------------------------------------------------
def agreement():
    rows = []
    t = torch.tensor([0.0, 0.5, 1.0], dtype=torch.float64)
    problems = {"NNODEF(2, 16)": lambda: mlp_problem(torch.float64, batch=16, hidden=16),
                "ConvODEF(64)": lambda: conv_problem(torch.float64, batch=2)}
    for name, make in problems.items():
        for method in ["euler", "rk4", "dopri5"]:
            func, z0 = make()
            w = torch.randn(3, *z0.shape, dtype=torch.float64)
            za, ga, *_ = run_ours(func, z0, t, method, w)
            zb, gb, *_ = run_td(func, z0, t, method, w)
            errs = [rel_err(a, b) for a, b in zip(ga, gb)]
            row = dict(problem=name, method=method, solution=rel_err(za, zb),
                       grad_z0=errs[0], grad_t=errs[1], grad_params=max(errs[2:]))
            if method == "dopri5":
                # Two adaptive solvers take different steps; judge each against an
                # accurate reference (classic RK4, h = 1/400) at the same tolerance.
                zr, gr, *_ = run_ours(func, z0, t, "ref", w)
                row["ours_vs_ref"] = max(map(rel_err, [za, *ga], [zr, *gr]))
                row["td_vs_ref"] = max(map(rel_err, [zb, *gb], [zr, *gr]))
            rows.append(row)
    return rows


# -------------------------------------------------------------------------
# 2. Speed of one training step (float32, adjoint)
# -------------------------------------------------------------------------
def interleaved(fns: dict, rounds: int, reps: int):
    """Round-robin over the contenders so drifts in machine load hit all alike."""
    for fn in fns.values():
        fn()
    samples = {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            samples[k] += times(fn, reps, warmup=0)
    return {k: statistics.median(v) for k, v in samples.items()}


def speed(rounds):
    rows = []
    t = torch.tensor([0.0, 1.0])
    problems = {"MLP field (batch 512, 2-D, hidden 64)": lambda: mlp_problem(torch.float32),
                "ConvODEF (batch 32, 64x6x6)": lambda: conv_problem(torch.float32)}
    for name, make in problems.items():
        func, z0 = make()
        for method in ["euler", "rk4", "dopri5"]:
            nfe = {}

            def ours():
                nfe["ours"] = run_ours(func, z0, t, method)[2:]

            def td():
                nfe["td"] = run_td(func, z0, t, method)[2:]
            med = interleaved({"ours": ours, "td": td}, rounds=rounds, reps=1)
            rows.append(dict(problem=name, method=method, ours_ms=1e3 * med["ours"],
                             td_ms=1e3 * med["td"], ratio=med["ours"] / med["td"],
                             nfe_ours=nfe["ours"], nfe_td=nfe["td"]))
            print(rows[-1], flush=True)
    return rows


# -------------------------------------------------------------------------
# 3. Per-sample time grids (the latent ODE decoder)
# -------------------------------------------------------------------------
def per_sample(rounds):
    torch.manual_seed(0)
    batch, T, latent = 32, 30, 4
    func = NNODEF(latent, 20, time_invariant=True)
    z0 = torch.randn(batch, latent)
    # irregular per-sample times in [0, 6]
    t = torch.sort(torch.rand(T, batch) * 6.0, dim=0).values
    t[0] = 0.0
    t = t.unsqueeze(-1)
    target = torch.randn(T, batch, latent)
    union, inverse = torch.unique(t.flatten(), sorted=True, return_inverse=True)
    idx = inverse.reshape(T, batch)
    rows = []
    for label, ours_kw, td_kw in [
        ("euler, one step per observation interval",
         dict(method="euler", h_max=100.0), dict(method="euler")),
        ("dopri5 rtol=1e-4, atol=1e-6", dict(method="dopri5", adjoint_norm="mixed", **DOPRI),
         dict(method="dopri5", **DOPRI)),
    ]:
        nfe = {}

        def ours():
            func.zero_grad()
            ode = NeuralODE(func, **ours_kw)
            ((ode(z0, t, True) - target) ** 2).mean().backward()
            nfe["ours"] = (ode.nfe_forward, ode.nfe_backward)

        def td():
            func.zero_grad()
            f = Flipped(func)
            zs = torchdiffeq.odeint_adjoint(f, z0, union, **td_kw)  # (U, batch, latent)
            n_f = f.nfe
            z = zs[idx, torch.arange(batch)]  # each sample's own times
            ((z - target) ** 2).mean().backward()
            nfe["td"] = (n_f, f.nfe - n_f)
        med = interleaved({"ours": ours, "td": td}, rounds=rounds, reps=1)
        rows.append(dict(setting=label, ours_ms=1e3 * med["ours"], td_ms=1e3 * med["td"],
                         ratio=med["ours"] / med["td"], nfe_ours=nfe["ours"],
                         nfe_td=nfe["td"], union=len(union)))
        print(rows[-1], flush=True)
    return rows


# -------------------------------------------------------------------------
# 4. Memory against the number of solver steps (fresh process each)
# -------------------------------------------------------------------------
def memory_child(lib: str, adjoint: bool, steps: int) -> float:
    torch.manual_seed(0)
    func = Squash(512)
    z0 = torch.randn(1024, 512, requires_grad=True)  # 2 MB of float32
    t = torch.tensor([0.0, 1.0])

    def step(n):
        if lib == "odecore":
            out = NeuralODE(func, method="euler", h_max=1.0 / n, adjoint=adjoint)(z0, t)
        else:
            solve = torchdiffeq.odeint_adjoint if adjoint else torchdiffeq.odeint
            out = solve(Flipped(func), z0, t, method="euler",
                        options=dict(step_size=1.0 / n))[-1]
        out.pow(2).mean().backward()
    step(1)  # warm-up with one step: kernels and allocator, little memory kept
    return peak_memory_mb(lambda: step(steps))


def memory(steps_list):
    rows = []
    for lib in ["odecore", "torchdiffeq"]:
        for adjoint in [True, False]:
            for steps in steps_list:  # a fresh process each: no peak hides another
                extra = in_fresh_process("bench:memory_child", lib, adjoint, steps)
                rows.append(dict(lib=lib, adjoint=adjoint, steps=steps, extra_mb=extra))
                print(rows[-1], flush=True)
    return rows


# -------------------------------------------------------------------------
# 5. The adjoint's error norm: mixed against seminorm (dopri5)
# -------------------------------------------------------------------------
NORMS = {  # label: (library, norm)
    "odecore mixed": ("odecore", "mixed"), "odecore seminorm": ("odecore", "seminorm"),
    "torchdiffeq default": ("torchdiffeq", "mixed"),
    "torchdiffeq seminorm": ("torchdiffeq", "seminorm")}


def norm_grads(func, z0, w, lib, norm, method="dopri5"):
    """Gradients (z0, then params) of <w, z(1)> by one library's adjoint; NFE fwd/bwd.

    t = [0, 1] needs no gradient (an ODE block in a classifier): torchdiffeq's
    seminorm keeps a_t in its norm, odecore's does not, and with no a_t to
    integrate the two seminorms measure the same parts (z and a).
    """
    t = torch.tensor([0.0, 1.0], dtype=z0.dtype)
    z0 = z0.clone().requires_grad_()
    func.zero_grad()
    if lib == "odecore":
        opts = dict(method="dopri5", **DOPRI) if method == "dopri5" else dict(
            method="rk4", h_max=1.0 / NORM_REF_STEPS)
        ode = NeuralODE(func, adjoint_norm=norm, **opts)
        (ode(z0, t) * w).sum().backward()
        nfe = (ode.nfe_forward, ode.nfe_backward)
    else:
        wrapped = Flipped(func)
        z = torchdiffeq.odeint_adjoint(
            wrapped, z0, t, method="dopri5", **DOPRI,
            adjoint_options=dict(norm="seminorm") if norm == "seminorm" else None)[-1]
        n_f = wrapped.nfe
        (z * w).sum().backward()
        nfe = (n_f, wrapped.nfe - n_f)
    return [z0.grad.clone()] + [p.grad.clone() for p in func.parameters()], nfe


def adjoint_norms():
    """Backward NFE and time (float32, one thread) and gradient error (float64)."""
    rows = []
    problems = {  # name: (float32 problem for NFE and time, float64 problem for the error)
        "MLP field (2-D, hidden 64)": (lambda: mlp_problem(torch.float32, batch=512),
                                       lambda: mlp_problem(torch.float64, batch=64)),
        "ConvODEF (64x6x6)": (lambda: conv_problem(torch.float32, batch=8),
                              lambda: conv_problem(torch.float64, batch=2)),
    }
    for name, (make32, make64) in problems.items():
        func, z0 = make32()
        w = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1))
        norm_grads(func, z0, w, "odecore", "seminorm")  # warm-up (kernels, allocator)
        timing = {}
        for label, (lib, norm) in NORMS.items():  # one run each: the slow ones take seconds
            out = []
            (s,) = times(lambda: out.append(norm_grads(func, z0, w, lib, norm)), 1, warmup=0)
            timing[label] = (s, out[0][1])
        func, z0 = make64()
        w = torch.randn(z0.shape, generator=torch.Generator().manual_seed(1), dtype=z0.dtype)
        ref, _ = norm_grads(func, z0, w, "odecore", "mixed", method="rk4")
        for label, (lib, norm) in NORMS.items():
            grads, nfe64 = norm_grads(func, z0, w, lib, norm)
            err = max(rel_err(g, r) for g, r in zip(grads, ref))
            seconds, nfe = timing[label]
            rows.append(dict(problem=name, contender=label, ms=1e3 * seconds, nfe=nfe,
                             nfe64=nfe64, grad_error=err))
            print(rows[-1], flush=True)
    return rows


def run_meta(threads, elapsed):
    """Where and when this run was made (kept in results.json, so --report-only can rebuild)."""
    return dict(date=dt.date.today().isoformat(), cpu=cpu_name(), threads=threads,
                capability=torch.backends.cpu.get_cpu_capability(),
                python=platform.python_version(), torch=torch.__version__,
                torchdiffeq=torchdiffeq.__version__, elapsed=elapsed)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results.md"))
    parser.add_argument("--report-only", action="store_true",
                        help="rewrite --out from the results.json beside it, measuring nothing")
    args = parser.parse_args()
    if args.report_only:
        results = json.loads(Path(args.out).with_suffix(".json").read_text())
        Path(args.out).write_text(report(results))
        print(f"wrote {args.out} from {Path(args.out).with_suffix('.json')}")
        return
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    results = {"agreement": agreement()}
    for r in results["agreement"]:
        print(r, flush=True)
    results["speed"] = speed(args.rounds)
    results["per_sample"] = per_sample(args.rounds)
    results["memory"] = memory([10, 100, 1000])
    results["norms"] = adjoint_norms()
    results["meta"] = run_meta(args.threads, time.perf_counter() - start)
    elapsed = results["meta"]["elapsed"]
    Path(args.out).write_text(report(results))
    Path(args.out).with_suffix(".json").write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out} in {elapsed:.0f} s")


if __name__ == "__main__":
    main()
