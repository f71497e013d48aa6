"""augment: the two tasks, the theorem's bound, the augmented flow and the ResNet."""

import math

import pytest
import torch
import torch.nn.functional as F

import mnist
import nbutils
from augment import (
    AugmentedMNIST,
    FlowModel,
    ResNetModel,
    accuracy,
    annuli_data,
    build,
    fit,
    reflection_bound,
    reflection_data,
    train_toy,
)

pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerical]


def test_reflection_data_and_its_bound():
    x, y = reflection_data(20000, seed=1)
    assert x.shape == (20000, 1) and torch.equal(y, -x)
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    # the variance of a uniform on [-1, 1] is 1/3; 20,000 draws: standard error ~ 0.002
    assert abs(reflection_bound(x) - 1 / 3) < 0.01
    # the bound is the best constant's error: the mean of -x
    assert reflection_bound(x) == pytest.approx(float(((y - y.mean()) ** 2).mean()), rel=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_no_one_dimensional_flow_beats_the_bound(seed):
    """Any flow of the line keeps order, so its fit to -x is no better than a constant's:
    a solver whose trajectories crossed would break this."""
    torch.manual_seed(seed)
    model = FlowModel(1, 1, readout="project", hidden=16)
    with torch.no_grad():  # a random field, scaled up so the flow moves points far
        for p in model.ode.func.parameters():
            p.mul_(3.0)
    x, y = reflection_data(512, seed=seed)
    with torch.no_grad():
        z = model(x)
    order = x[:, 0].argsort()
    assert bool((z[order, 0].diff() >= 0).all())  # increasing: no two paths crossed
    assert float(F.mse_loss(z, y)) >= reflection_bound(x)


def test_augmented_state_starts_padded_with_zeros():
    model = FlowModel(2, 2, augment=3, hidden=8)
    x = torch.randn(5, 2)
    t = torch.tensor([0.0, 0.5, 1.0])
    with torch.no_grad():
        path = model.flow(x, t)
    assert path.shape == (3, 5, 5)
    assert torch.equal(path[0], torch.cat((x, torch.zeros(5, 3)), 1))
    assert model(x).shape == (5, 2) and model.nfe_forward > 0
    with pytest.raises(ValueError, match="project"):
        FlowModel(1, 3, readout="project")
    with pytest.raises(ValueError, match="readout"):
        FlowModel(1, 1, readout="sigmoid")


def test_annuli_are_balanced_and_in_their_rings():
    x, y = annuli_data(4000, seed=2)
    r = x.norm(dim=1)
    assert int(y.sum()) == 2000
    assert float(r[y == 0].max()) < 0.5
    assert float(r[y == 1].min()) > 1.0 and float(r[y == 1].max()) < 1.5
    # uniform over the annulus's area: the median radius splits the area in two
    assert abs(float(r[y == 1].median()) - math.sqrt((1.0 + 1.5**2) / 2)) < 0.02


def test_fit_records_loss_and_nfe_and_the_resnet_learns_the_reflection():
    x, y = reflection_data(256)
    resnet = ResNetModel(1, 1, steps=4, hidden=16, readout="project")
    hist = fit(resnet, x, y, F.mse_loss, iters=150, lr=1e-2, batch=64)
    assert len(hist["loss"]) == 150 and hist["nfe"] == [0] * 150
    # a residual step need not be invertible: the ResNet reverses the line the flow cannot
    with torch.no_grad():
        assert float(F.mse_loss(resnet(x), y)) < 0.1 * reflection_bound(x)
    flow = FlowModel(2, 2, augment=1, hidden=8)
    xa, ya = annuli_data(256)
    hist = fit(flow, xa, ya, F.cross_entropy, iters=3, batch=32)
    assert len(hist["nfe"]) == 3 and min(hist["nfe"]) > 0
    assert 0.0 <= accuracy(flow, xa, ya) <= 1.0


def test_exercise_2_a_linear_readout_reverses_the_line_after_the_identity_flow():
    """Notebook 06's exercise 2: the theorem binds the flow, not a layer after it."""
    model = FlowModel(1, 1, readout="linear")
    with torch.no_grad():
        model.ode.func.lin3.weight.zero_()  # f = 0: the flow is the identity
        model.ode.func.lin3.bias.zero_()
        model.readout.linear.weight.fill_(-1.0)
        model.readout.linear.bias.zero_()
        x, y = reflection_data(256)
        assert float(F.mse_loss(model(x), y)) == 0.0


def test_toy_jobs_build_train_and_score_their_models():
    for kind in ("node", "anode", "resnet"):
        job = dict(task="annuli", kind=kind, n=128, n_test=64, iters=2, lr=1e-3, batch=32)
        result = train_toy(job)
        assert 0.0 <= result["score"] <= 1.0 and len(result["loss"]) == 2
        model = build(job)
        model.load_state_dict(result["state"])
        assert (kind == "anode") == (getattr(model, "augment", 0) == 1)
    result = train_toy(dict(task="reflection", kind="node", n=64, iters=2, lr=1e-3, batch=32))
    x, _ = reflection_data(64)
    assert result["score"] >= reflection_bound(x) * (1 - 1e-5)  # any flow, even untrained


def test_augmented_mnist_keeps_the_ode_and_shrinks_only_the_stem():
    plain, augmented = AugmentedMNIST(0), AugmentedMNIST(8)
    # the stem's last convolution (64 -> 64 - p maps of 4x4 kernels, with biases) alone
    assert nbutils.n_parameters(plain) == nbutils.n_parameters(mnist.build_model("ODE-Net"))
    assert nbutils.n_parameters(plain) - nbutils.n_parameters(augmented) == 8 * (64 * 16 + 1)
    x = torch.randn(2, 1, 28, 28)
    seen = []
    augmented.net.feature.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
    with torch.no_grad():
        assert augmented(x).shape == (2, 10) and plain(x).shape == (2, 10)
    assert seen[0].shape == (2, 64, 6, 6) and not seen[0][:, 56:].any()  # p zero channels
    assert augmented.nfe[0] > 0
