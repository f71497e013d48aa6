"""recovery: what notebook 01 needs around its story, kept out of the notebook.

1. threads and worker processes: `one_thread_on_cpu`, `start_method`, `run_jobs`;
2. its two pictures: `training_gif`, `field_figure`.

The notebook's progress bars and its "How this run was made" come from
`nbutils`. None of it is about ODEs (`odecore.py`) or the recipe (the notebook).
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from nbutils import figure_to_image, progress, save_gif, start_method

__all__ = ["one_thread_on_cpu", "start_method", "run_jobs", "training_gif", "field_figure"]


# ---------------------------------------------------------------------------
# 1. Threads and worker processes
# ---------------------------------------------------------------------------
def one_thread_on_cpu(device: torch.device | str) -> int:
    """One torch thread on the CPU; returns the thread count now in use.

    Notebook 01's states are 2-D and its models 16 units wide: every operation
    is microseconds of arithmetic, so a second thread only adds waiting (on the
    shared 2-core machine a 64-window training step took 23 ms on one thread
    and 570 ms on two while other processes ran). One thread also keeps
    forking safe (`start_method`).
    """
    if torch.device(device).type == "cpu":
        torch.set_num_threads(1)
    return torch.get_num_threads()


def _one_thread(fn: Callable, job):
    torch.set_num_threads(1)
    return fn(job)


def run_jobs(fn: Callable, jobs: Sequence, desc: str = "", device: torch.device | str = "cpu",
             max_workers: int = 4, quiet: bool = False, system: str | None = None) -> list:
    """`[fn(job) for job in jobs]`, one worker process per core where that is safe.

    The start method and the reason come from `start_method`; `run_jobs` prints
    them (unless `quiet`), so a reader knows whether the runs were parallel.
    Jobs must take their randomness from their arguments (seeds): the results
    are then the same either way.
    """
    jobs = list(jobs)
    method, why = start_method(fn, device, system)
    workers = min(os.cpu_count() or 1, len(jobs), max_workers)
    if workers < 2:
        method, why = None, "one job or one core: the runs go in turn"
    if not quiet:
        print(f"{desc}: {len(jobs)} run(s), " + (f"{workers} {why}" if method else why))
    if method is None:
        return [fn(job) for job in progress(jobs, desc=desc, disable=quiet)]
    context = multiprocessing.get_context(method)
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        results = pool.map(_one_thread, [fn] * len(jobs), jobs)
        return list(progress(results, total=len(jobs), desc=desc, disable=quiet))


# ---------------------------------------------------------------------------
# 2. Pictures
# ---------------------------------------------------------------------------
def _time_colorbar(fig, mappable, ax):
    bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04, shrink=0.85)
    bar.set_label("time $t$ of the observation")
    return bar


def training_gif(run: dict, path: str | Path, title: str) -> Path:
    """Observations coloured by time, and the learned trajectory every few steps."""
    import matplotlib.pyplot as plt

    obs, times = run["obs"].cpu(), run["times"].cpu()
    fig, ax = plt.subplots(figsize=(4.8, 4), dpi=72)
    points = ax.scatter(obs[:, 0, 0], obs[:, 0, 1], c=times, cmap="cividis", s=7)
    _time_colorbar(fig, points, ax)
    (line,) = ax.plot([], [], color="tab:red", lw=2, label="learned trajectory")
    lo, hi = obs.amin((0, 1)), obs.amax((0, 1))
    pad = 0.15 * (hi - lo)
    ax.set(xlim=(lo[0] - pad[0], hi[0] + pad[0]), ylim=(lo[1] - pad[1], hi[1] + pad[1]),
           xlabel="$z_1$", ylabel="$z_2$", aspect="equal")
    ax.legend(loc="upper right", fontsize=7)
    fig.tight_layout()
    frames = []
    for step, z in run["snaps"]:
        z = z.clamp(-1e3, 1e3)
        line.set_data(z[:, 0, 0], z[:, 0, 1])
        ax.set_title(f"{title}, step {step + 1}", fontsize=10)
        frames.append(figure_to_image(fig))
    plt.close(fig)
    frames += [frames[-1]] * 4  # linger on the result
    return save_gif(frames, path, fps=6)


def field_figure(true_f, run: dict, path: str | Path, title: str, n: int = 25) -> None:
    """True and learned vector fields side by side, each with the trajectories."""
    import matplotlib.pyplot as plt

    truth, z, obs = (run[k].cpu() for k in ("truth", "z", "obs"))
    lo, hi = truth.amin((0, 1)).float(), truth.amax((0, 1)).float()
    pad = 0.2 * (hi - lo)
    xs = torch.linspace(lo[0] - pad[0], hi[0] + pad[0], n)
    ys = torch.linspace(lo[1] - pad[1], hi[1] + pad[1], n)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    grid = torch.stack([X.flatten(), Y.flatten()], -1)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.6), sharex=True, sharey=True)
    for ax, f, name in zip(axes, (true_f, run["model"].func), ("true", "learned")):
        dev = next(f.parameters()).device
        with torch.no_grad():
            v = f(grid.to(dev), torch.tensor(0.0, device=dev)).cpu().reshape(n, n, 2)
        ax.streamplot(xs.numpy(), ys.numpy(), v[..., 0].numpy(), v[..., 1].numpy(),
                      color=v.norm(dim=-1).numpy(), cmap="Greys", density=1.1, linewidth=0.7)
        points = ax.scatter(obs[:, 0, 0], obs[:, 0, 1], c=run["times"].cpu(), cmap="cividis",
                            s=6, zorder=2)
        ax.plot(truth[:, 0, 0], truth[:, 0, 1], color="tab:blue", lw=2, zorder=3,
                label="true trajectory")
        if name == "learned":
            ax.plot(z[:, 0, 0], z[:, 0, 1], "--", color="tab:red", lw=2, zorder=4,
                    label="learned trajectory")
        ax.set(title=f"{name} dynamics (streamlines: speed, dark = fast)", xlabel="$z_1$",
               aspect="equal")
        ax.title.set_fontsize(10)
        ax.legend(loc="upper left", bbox_to_anchor=(0.0, -0.13), fontsize=8, ncol=2)
    axes[0].set_ylabel("$z_2$")
    _time_colorbar(fig, points, list(axes))
    fig.suptitle(title)
    fig.savefig(path, dpi=80, bbox_inches="tight")
    plt.show()
