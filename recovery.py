"""recovery: notebook 01's settings per budget and its two pictures, kept out of the notebook.

`settings(budget)`, `training_gif` and `field_figure`. Its worker processes
come from `workers`, its progress bars and its "How this run was made" from
`nbutils`. None of it is about ODEs (`odecore.py`) or the recipe (the notebook).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch

from nbutils import figure_to_image, for_budget, save_gif

__all__ = ["Settings", "settings", "training_gif", "field_figure"]


@dataclass(frozen=True)
class Settings:
    """One budget of notebook 01: seeds, training steps of each experiment, GIF frames,
    and the ablation's variants for each experiment ("all", or a list of names)."""

    seeds: tuple[int, ...] = (0, 1, 2)
    linear_steps: int = 300
    nonlinear_steps: int = 600
    frames: int = 30
    ablate: dict = field(default_factory=dict)


def settings(budget: str) -> Settings:
    """smoke: everything once, in seconds; quick: the committed run; full: longer, the
    whole ablation."""
    table = {
        "smoke": Settings(seeds=(0,), linear_steps=30, nonlinear_steps=30, frames=5),
        "quick": Settings(ablate={"linear": "all", "nonlinear": ["one window per step"]}),
        "full": Settings(linear_steps=500, nonlinear_steps=3000, frames=40,
                         ablate={"linear": "all", "nonlinear": "all"}),
    }
    return for_budget(table, budget)


def _time_colorbar(fig, mappable, ax):
    bar = fig.colorbar(mappable, ax=ax, fraction=0.046, pad=0.04, shrink=0.85)
    bar.set_label("time $t$ of the observation")
    return bar


def training_gif(run: dict, path: str | Path, title: str) -> Path:
    """Observations coloured by time, and the learned trajectory every few steps."""
    import matplotlib.pyplot as plt

    obs, times = run["obs"].cpu(), run["times"].cpu()
    fig, ax = plt.subplots(figsize=(5.2, 4.4), dpi=72)
    points = ax.scatter(obs[:, 0, 0], obs[:, 0, 1], c=times, cmap="cividis", s=7)
    _time_colorbar(fig, points, ax)
    (line,) = ax.plot([], [], color="tab:red", lw=2, label="learned trajectory")
    lo, hi = obs.amin((0, 1)), obs.amax((0, 1))
    pad = 0.15 * (hi - lo)
    ax.set(xlim=(lo[0] - pad[0], hi[0] + pad[0]), ylim=(lo[1] - pad[1], hi[1] + pad[1]),
           xlabel="$z_1$", ylabel="$z_2$", aspect="equal")
    ax.legend(loc="upper right", fontsize=7)
    ax.set_title(f"{title}, step {run['snaps'][-1][0] + 1}", fontsize=10)  # room for the title
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


def field_figure(true_f, run: dict, path: str | Path, title: str, n: int = 25) -> dict:
    """True and learned vector fields with the trajectories, and where they differ.

    The third panel maps |learned f - true f|, in units of the true field's mean
    speed along the trajectory. Returns that difference's mean on the trajectory
    and off it (grid points farther from it than a tenth of the plot's width):
    the data constrain the field only where they are.
    """
    import matplotlib.pyplot as plt

    truth, z, obs = (run[k].cpu() for k in ("truth", "z", "obs"))
    lo, hi = truth.amin((0, 1)).float(), truth.amax((0, 1)).float()
    pad = 0.2 * (hi - lo)
    xs = torch.linspace(lo[0] - pad[0], hi[0] + pad[0], n)
    ys = torch.linspace(lo[1] - pad[1], hi[1] + pad[1], n)
    X, Y = torch.meshgrid(xs, ys, indexing="xy")
    grid = torch.stack([X.flatten(), Y.flatten()], -1)
    path_points = truth[:, 0].float()

    def field(f, points):
        dev = next(f.parameters()).device
        with torch.no_grad():
            return f(points.to(dev, next(f.parameters()).dtype),
                     torch.tensor(0.0, device=dev)).cpu().float()

    learned_f = run["model"].func
    scale = field(true_f, path_points).norm(dim=-1).mean()
    diff_grid = (field(learned_f, grid) - field(true_f, grid)).norm(dim=-1) / scale
    diff_path = (field(learned_f, path_points) - field(true_f, path_points)).norm(dim=-1) / scale
    far = torch.cdist(grid, path_points).amin(1) > 0.1 * float((hi - lo).max() + 2 * pad.max())
    fig, axes = plt.subplots(1, 3, figsize=(16, 4.9), sharex=True, sharey=True)
    for ax, f, name in zip(axes, (true_f, learned_f), ("true", "learned")):
        v = field(f, grid).reshape(n, n, 2)
        ax.streamplot(xs.numpy(), ys.numpy(), v[..., 0].numpy(), v[..., 1].numpy(),
                      color="0.6", density=1.1, linewidth=0.7)
        points = ax.scatter(obs[:, 0, 0], obs[:, 0, 1], c=run["times"].cpu(), cmap="cividis",
                            s=6, zorder=2)
        ax.plot(truth[:, 0, 0], truth[:, 0, 1], color="tab:blue", lw=2, zorder=3,
                label="true trajectory")
        if name == "learned":
            ax.plot(z[:, 0, 0], z[:, 0, 1], "--", color="tab:red", lw=2, zorder=4,
                    label="learned trajectory")
        ax.set(title=f"{name} dynamics (streamlines)", xlabel="$z_1$", aspect="equal")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.15), fontsize=8, ncol=2)
    _time_colorbar(fig, points, list(axes[:2]))
    mesh = axes[2].pcolormesh(xs.numpy(), ys.numpy(), diff_grid.reshape(n, n).numpy(),
                              cmap="magma", shading="auto")
    axes[2].plot(truth[:, 0, 0], truth[:, 0, 1], color="tab:blue", lw=1.5)
    axes[2].set(title="where they differ: |learned f - true f|", xlabel="$z_1$",
                aspect="equal")
    bar = fig.colorbar(mesh, ax=axes[2], fraction=0.046, pad=0.04, shrink=0.85)
    bar.set_label("relative to the true field's mean speed on the trajectory")
    axes[0].set_ylabel("$z_2$")
    fig.suptitle(title)
    fig.savefig(path)
    plt.show()
    return {"on the trajectory": float(diff_path.mean()), "off it": float(diff_grid[far].mean())}
