"""recovery's field figure: the difference it maps is the fields' difference."""

import matplotlib
import torch

import odecore
import recovery

matplotlib.use("Agg")


def run_of(func, A):
    t = torch.linspace(0, 3, 40)
    truth = torch.einsum("tij,j->ti", torch.linalg.matrix_exp(A * t[:, None, None]),
                         torch.tensor([1.0, 0.0]))[:, None]
    return dict(truth=truth, z=truth, obs=truth, times=t,
                model=odecore.NeuralODE(func, method="rk4", h_max=0.1))


def test_identical_fields_differ_nowhere_and_a_scaled_one_by_its_scale(tmp_path):
    A = torch.tensor([[-0.1, -1.0], [1.0, -0.1]])
    same = recovery.field_figure(odecore.LinearODEF(A), run_of(odecore.LinearODEF(A), A),
                                 tmp_path / "same.png", "same")
    assert same == {"on the trajectory": 0.0, "off it": 0.0}
    # learned 1.1 A: on the trajectory |0.1 A z| / mean |A z| = 0.1 exactly (float32);
    # off it the same 0.1 |A z|, at other |z|
    scaled = recovery.field_figure(odecore.LinearODEF(A), run_of(odecore.LinearODEF(1.1 * A), A),
                                   tmp_path / "scaled.png", "scaled")
    assert abs(scaled["on the trajectory"] - 0.1) < 1e-5
    assert 0 < scaled["off it"] < 1
    assert (tmp_path / "scaled.png").exists()
