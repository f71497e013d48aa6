"""The report `bench.py` writes: results.md from the measured rows, with the targets each
section is read against. Separate from the measuring, so that `bench.py --report-only`
rebuilds the page from results.json without measuring anything."""

from __future__ import annotations

from measure import markdown_table

__all__ = ["DOPRI", "NORM_REF_STEPS", "report"]

# Settings of the measurements that the report states (bench.py measures with them).
DOPRI = dict(rtol=1e-4, atol=1e-6)
NORM_REF_STEPS = 1600  # classic RK4 at h = 1/1600: no step control, so no norm


def norm_targets(rows):
    """The issue's targets for section 5 (ConvODEF), checked against this run's numbers."""
    conv = {r["contender"]: r for r in rows if r["problem"].startswith("ConvODEF")}
    semi, mixed = conv["odecore seminorm"], conv["odecore mixed"]
    td_semi = conv["torchdiffeq seminorm"]
    cut = 1 - semi["nfe"][1] / mixed["nfe"][1]
    over = semi["nfe"][1] / td_semi["nfe"][1] - 1
    err_ratio = semi["grad_error"] / mixed["grad_error"]
    ok = lambda cond: "met" if cond else "missed"  # noqa: E731
    return [
        "Targets (ConvODEF):",
        "",
        f"- odecore's seminorm backward NFE at least 40% below its mixed norm's: "
        f"{semi['nfe'][1]} against {mixed['nfe'][1]}, {100 * cut:.0f}% fewer, {ok(cut >= 0.4)};",
        f"- no more than 10% above torchdiffeq's seminorm: {semi['nfe'][1]} against "
        f"{td_semi['nfe'][1]}, {100 * over:+.0f}%, {ok(over <= 0.1)};",
        f"- gradient error no worse than 3 times the mixed norm's: {semi['grad_error']:.1e} "
        f"against {mixed['grad_error']:.1e}, {err_ratio:.2f} times, {ok(err_ratio <= 3)}.",
    ]


# -------------------------------------------------------------------------
# Report
# -------------------------------------------------------------------------
def speed_targets(rows):
    """The issue's targets for section 2, checked against this run's numbers."""
    fixed = [r for r in rows if r["method"] != "dopri5"]
    mlp = [r for r in fixed if r["problem"].startswith("MLP")]
    dopri = [r for r in rows if r["method"] == "dopri5"]
    nfe_gap = max(abs(o - t) / t for r in dopri for o, t in zip(r["nfe_ours"], r["nfe_td"]))
    ok = lambda cond: "met" if cond else "missed"  # noqa: E731
    worst_mlp = max(r["ratio"] for r in mlp)
    ratios = lambda rs: ", ".join(f"{r['ratio']:.2f}" for r in rs)  # noqa: E731
    lines = [
        "Targets:",
        "",
        f"- fixed-grid adjoint step no slower than torchdiffeq's on every row (ratio <= 1.0): "
        f"largest ratio {max(r['ratio'] for r in fixed):.2f}, "
        f"{ok(max(r['ratio'] for r in fixed) <= 1.0)};",
        f"- at least 1.3 times faster on the small MLP field (ratio <= 0.77): "
        f"{ratios(mlp)}, {ok(worst_mlp <= 0.77)};",
        f"- dopri5 within 1.2 times: {ratios(dopri)}, "
        f"{ok(max(r['ratio'] for r in dopri) <= 1.2)}; NFE within 10%: largest gap "
        f"{100 * nfe_gap:.0f}%, {ok(nfe_gap <= 0.10)}.",
    ]
    if worst_mlp > 0.77:
        # every number here is this run's: the explanation follows the measurement
        extra = [r["td_ms"] / r["ours_ms"] - 1 for r in mlp]
        mlp_dopri = [r["ratio"] for r in dopri if r["problem"].startswith("MLP")]
        lines += [
            "",
            "Why the MLP target is missed: both libraries do the same arithmetic (the same "
            f"NFE, {', '.join('{} / {}'.format(*r['nfe_ours']) for r in mlp)}, the same ELU "
            "and linear kernels and their backward), and on this CPU that arithmetic is most "
            "of the step: a profile of odecore's Euler step (torch.profiler and cProfile, not "
            "part of `make bench`) puts ELU's expm1, the 512 x 64 x 64 matrix products and "
            "their backward at about four fifths of it, odecore's own Python (solver loop, "
            "state updates, closures) at a few percent. torchdiffeq's extra cost is its "
            "flattening of the augmented state and its wrappers inside the graph: "
            f"{100 * min(extra):.0f}% to {100 * max(extra):.0f}% in this run's fixed-grid "
            "MLP rows; no bookkeeping change can make a 1.3x difference out of that. The gap "
            "opens where torchdiffeq's per-step overhead is larger: dopri5, ratio "
            f"{', '.join(f'{v:.2f}' for v in mlp_dopri)} on the MLP field in this run.",
        ]
    return lines


def report(results):
    m = results["meta"]
    lines = [
        "# odecore against torchdiffeq",
        "",
        f"Measured {m['date']} by `make bench` on {m['cpu']}, {m['threads']} thread(s), CPU "
        f"only, PyTorch CPU kernels {m['capability']}; Python {m['python']}, torch "
        f"{m['torch']}, torchdiffeq {m['torchdiffeq']}. Whole run: {m['elapsed']:.0f} s.",
        "",
        "## 1. Agreement (float64, maximum relative difference)",
        "",
        "Same initial state, times [0, 0.5, 1] and dynamics through both libraries; "
        "gradients of a random linear functional of the three states by each library's "
        "adjoint. Euler h=0.05 and RK4 h=0.25 on the same fixed grid (torchdiffeq's `rk4` "
        "steps with the 3/8 rule, so both use the classic tableau here); dopri5 with "
        f"rtol={DOPRI['rtol']:g}, atol={DOPRI['atol']:g}: two adaptive solvers take different "
        "steps, so each is also compared with an accurate reference (classic RK4, h = 1/400; "
        "largest relative error over the solution and all gradients). ConvODEF is notebook "
        "02's, imported from `mnist.py` (GroupNorm, so the field is a fixed function).",
        "",
        markdown_table(["problem", "method", "solution", "dL/dz0", "dL/dt", "dL/dparams",
               "odecore vs reference", "torchdiffeq vs reference"],
              [[r["problem"], r["method"], f"{r['solution']:.1e}", f"{r['grad_z0']:.1e}",
                f"{r['grad_t']:.1e}", f"{r['grad_params']:.1e}",
                f"{r['ours_vs_ref']:.1e}" if "ours_vs_ref" in r else "",
                f"{r['td_vs_ref']:.1e}" if "td_vs_ref" in r else ""]
               for r in results["agreement"]]),
        "",
        "## 2. One training step (float32, forward + adjoint backward)",
        "",
        "Median over interleaved repetitions (warm-up excluded). Ratio below 1: odecore "
        "faster. NFE: forward / backward function evaluations. Sections 1 to 3 run odecore's "
        "adjoint with the mixed norm, torchdiffeq's default, so that both do the same "
        "arithmetic; section 5 compares the norms.",
        "",
        markdown_table(["problem", "method", "odecore ms", "torchdiffeq ms", "ratio", "NFE odecore",
               "NFE torchdiffeq"],
              [[r["problem"], r["method"], f"{r['ours_ms']:.1f}", f"{r['td_ms']:.1f}",
                f"{r['ratio']:.2f}", "{} / {}".format(*r["nfe_ours"]),
                "{} / {}".format(*r["nfe_td"])] for r in results["speed"]]),
        "",
        *speed_targets(results["speed"]),
        "",
        "## 3. Per-sample time grids (latent ODE decoder: batch 32, 30 irregular times each)",
        "",
        "odecore solves `(T, batch, 1)` grids directly; torchdiffeq solves on the sorted "
        "union of all samples' times and gathers each sample's states.",
        "",
        markdown_table(["setting", "odecore ms", "torchdiffeq ms", "ratio", "NFE odecore",
               "NFE torchdiffeq", "union size"],
              [[r["setting"], f"{r['ours_ms']:.1f}", f"{r['td_ms']:.1f}", f"{r['ratio']:.2f}",
                "{} / {}".format(*r["nfe_ours"]), "{} / {}".format(*r["nfe_td"]), r["union"]]
               for r in results["per_sample"]]),
        "",
        "## 4. Peak memory of a training step against the number of Euler steps",
        "",
        "dz/dt = tanh(z)·w on a 1024 x 512 state (2 MB), t in [0, 1]: a large state and a "
        "cheap step. Memory a training step adds at its peak "
        "(MB): a fresh process per configuration, warmed up with a one-step solve, then the "
        "resident-set high-water mark reset and read around the step "
        "(`measure.peak_memory_mb`), with `MALLOC_MMAP_THRESHOLD_=65536` so that freed "
        "blocks go back to the system and the resident set tracks live memory.",
        "",
    ]
    steps = sorted({r["steps"] for r in results["memory"]})
    mem_rows = []
    for lib in ["odecore", "torchdiffeq"]:
        for adjoint in [True, False]:
            extra = [r["extra_mb"] for r in results["memory"]
                     if r["lib"] == lib and r["adjoint"] == adjoint]
            mem_rows.append([lib, "adjoint" if adjoint else "backprop through solver",
                             *[f"{p:.1f}" for p in extra],
                             f"{extra[-1] - extra[0]:+.1f} MB"])
    lines.append(markdown_table(["library", "gradient", *[f"{s} steps" for s in steps],
                        f"change {steps[0]} to {steps[-1]}"], mem_rows))
    adj = [r["extra_mb"] for r in results["memory"] if r["lib"] == "odecore" and r["adjoint"]]
    spread = max(adj) / min(adj) - 1
    lines += ["", f"Target: odecore's adjoint flat within 20% from {steps[0]} to {steps[-1]} "
              f"steps: spread {100 * spread:.1f}%, {'met' if spread <= 0.2 else 'missed'}."]
    if results.get("norms"):
        lines += [
            "",
            "## 5. The adjoint's error norm (dopri5, rtol={:g}, atol={:g})".format(
                DOPRI["rtol"], DOPRI["atol"]),
            "",
            "The backward solve's step control under two norms: *mixed* measures every part "
            "of the augmented state (z, a, and one part per parameter tensor of a_theta; "
            "torchdiffeq's default), *seminorm* only z and a (Kidger, Chen & Lyons, ICML 2021; "
            "odecore's default, torchdiffeq's `adjoint_options=dict(norm=\"seminorm\")`). "
            "Loss <w, z(1)> with a random cotangent w (fixed seed), t = [0, 1] needing no "
            "gradient. NFE and time: float32, one run each after one warm-up, batch 512 "
            "(MLP) and 8 (ConvODEF). Gradient error: float64 (batch 64 and 2), the largest "
            "relative error over dL/dz0 and every parameter's gradient, against odecore's "
            f"adjoint with classic RK4 at h = 1/{NORM_REF_STEPS} (no step control, so "
            "independent of either norm). ConvODEF is freshly initialised: its ReLUs make "
            "the field rough and the backward solve costly.",
            "",
            markdown_table(["problem", "contender", "ms (float32)", "NFE fwd / bwd (float32)",
                   "NFE fwd / bwd (float64)", "gradient error (float64)"],
                  [[r["problem"], r["contender"], f"{r['ms']:.0f}",
                    "{} / {}".format(*r["nfe"]), "{} / {}".format(*r["nfe64"]),
                    f"{r['grad_error']:.1e}"] for r in results["norms"]]),
            "",
            *norm_targets(results["norms"]),
        ]
    lines.append("")
    return "\n".join(lines)
