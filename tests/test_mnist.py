"""mnist: notebook 02's models, training loop and memory probe."""

import pytest
import torch

import measure
import mnist
import nbutils
import odecore

# tiny models: one thread; thresholds on floating-point results (make test runs them twice)
pytestmark = [pytest.mark.usefixtures("one_thread"), pytest.mark.numerical]


def test_parameter_counts_match_table_1():
    # the paper: ODE-Net and RK-Net 0.22M, ResNet 0.60M, MLP 0.24M
    counts = {name: nbutils.n_parameters(mnist.build_model(name)) for name in mnist.NAMES}
    assert counts == {"ODE-Net": 208_010, "RK-Net": 208_010, "ResNet": 576_778,
                      "MLP": 238_510}


def test_models_classify_mnist_shaped_batches():
    x = torch.randn(3, 1, 28, 28)
    for name in mnist.NAMES:
        assert mnist.build_model(name)(x).shape == (3, 10), name
    with pytest.raises(ValueError, match="unknown model"):
        mnist.build_model("VGG")


def test_ode_net_and_rk_net_differ_only_in_how_gradients_flow():
    """The same forward pass; the adjoint's gradient converges to autograd's as h shrinks.

    Both are within O(h^p) of the exact gradient, so their gap falls as h does: RK4 is
    of order 4 on smooth dynamics (5^4 = 625 times from h = 0.1 to 0.02), but ReLU's kinks,
    which the adjoint's dynamics contain, cost up to three orders at a step that crosses
    one: at least order 1 is certain, a fall of 5. A wrong or missing term of the adjoint
    leaves a gap that does not shrink with h.
    """
    x = torch.randn(4, 1, 28, 28, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3])
    gaps = []
    for h in (0.1, 0.02):
        torch.manual_seed(0)
        ode = mnist.build_model("ODE-Net", h_max=h).double()
        rk = mnist.build_model("RK-Net", h_max=h).double()
        rk.load_state_dict(ode.state_dict())
        assert ode.feature.adjoint and not rk.feature.adjoint
        assert torch.allclose(ode(x), rk(x))
        grads = []
        for model in (ode, rk):
            torch.nn.functional.cross_entropy(model(x), y).backward()
            grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        gaps.append(float((grads[0] - grads[1]).norm() / grads[1].norm()))
    assert gaps[1] < gaps[0] / 5, gaps


def test_convodef_takes_shared_and_per_sample_times():
    torch.manual_seed(0)
    f = odecore.ConvODEF(8).eval()
    z = torch.randn(3, 8, 5, 5)
    shared = f(z, torch.tensor(0.3))
    per_sample = f(z, torch.full((3, 1), 0.3))
    assert isinstance(f, odecore.ODEF) and shared.shape == z.shape
    assert torch.allclose(shared, per_sample)
    assert not torch.allclose(shared, f(z, torch.tensor(0.9)))  # the time channel matters


def test_batches_cover_each_epoch_once_and_are_seeded():
    got = list(mnist.batches(10, 3, iters=6, seed=1))
    assert len(got) == 6 and all(len(b) == 3 for b in got)
    first_epoch = torch.cat(got[:3])
    assert len(set(first_epoch.tolist())) == 9  # no repeats within an epoch
    assert all(torch.equal(a, b) for a, b in zip(got, mnist.batches(10, 3, iters=6, seed=1)))
    with pytest.raises(ValueError):
        next(mnist.batches(2, 3, iters=1, seed=0))


def test_random_shift_moves_images_within_pad():
    x = torch.full((4, 1, 28, 28), -mnist.MEAN / mnist.STD)
    x[:, :, 14, 14] = 1.0
    shifted = mnist.random_shift(x, pad=2)
    assert shifted.shape == x.shape
    for img in shifted[:, 0]:
        (r, c), = (img == 1.0).nonzero().tolist()
        assert abs(r - 14) <= 2 and abs(c - 14) <= 2


def test_train_lowers_the_loss_and_snapshots(monkeypatch):
    torch.manual_seed(0)
    X = torch.randn(64, 1, 28, 28)
    Y = torch.randint(0, 10, (64,))
    model = mnist.build_model("MLP")
    readings = iter([100.0, 112.5])  # the clock before and after training
    monkeypatch.setattr(mnist.time, "perf_counter", lambda: next(readings))
    r = mnist.train(model, X, Y, iters=40, lr=3e-3, batch=16, snap_every=20)
    monkeypatch.undo()
    assert r["iters"] == 40 and r["seconds"] == 12.5
    # ten epochs of 64 random labels: a model that learns nothing scores the chance 1/10,
    # give or take sqrt(0.09 / 64) = 0.04; 0.25 is four of those above chance
    losses = r["losses"]
    assert sum(losses[-4:]) < sum(losses[:4]), losses
    assert [it for it, _ in r["snapshots"]] == [0, 20, 40]
    assert mnist.test_accuracy(model, X, Y) > 0.25


def test_train_records_a_held_out_curve_outside_the_training_time():
    torch.manual_seed(0)
    X, Y = torch.randn(32, 1, 28, 28), torch.randint(0, 10, (32,))
    model = mnist.build_model("MLP")
    r = mnist.train(model, X, Y, iters=10, lr=1e-3, batch=8, held_out=(X[:8], Y[:8]),
                    eval_every=4)
    assert [it for it, _ in r["held_out_loss"]] == [0, 4, 8, 10]
    assert model.training  # the evaluations leave training mode on
    # the last point is the loss of the returned model, as held_out_loss computes it
    assert r["held_out_loss"][-1][1] == mnist.held_out_loss(model, X[:8], Y[:8])


def test_train_reports_the_ode_blocks_nfe():
    torch.manual_seed(0)
    X, Y = torch.randn(8, 1, 28, 28), torch.randint(0, 10, (8,))
    r = mnist.train(mnist.build_model("ODE-Net", method="rk4", h_max=0.5), X, Y, iters=1,
                    lr=1e-3, batch=8)
    assert r["nfe"] == (8, 8)  # RK4, 2 steps: 8 evaluations each way


def test_memory_probe_in_fresh_processes():
    """Adjoint memory flat in the number of steps; backprop through the solver grows."""
    jobs = {(n, name): (name, 4, dict(method="euler", h_max=1 / n))
            for n in (2, 40) for name in ("ODE-Net", "RK-Net")}
    mb = mnist.probe_all(jobs)
    # 38 more Euler steps through the solver store at least two activations of the block's
    # state a step (the convolutions' inputs): 38 x 2 x (4 x 64 x 6 x 6) float32 = 2.8 MB
    state_mb = 4 * 64 * 6 * 6 * 4 / 2**20
    assert mb[40, "RK-Net"] > mb[2, "RK-Net"] + 38 * 2 * state_mb, mb
    assert abs(mb[40, "ODE-Net"] - mb[2, "ODE-Net"]) < 0.5 * (mb[40, "RK-Net"] - mb[2, "RK-Net"])


def test_memory_probe_reports_a_failing_child():
    with pytest.raises(RuntimeError, match="failed in a fresh process"):
        mnist.step_memory_mb_fresh("VGG", 2, {})


def test_seconds_per_iteration_at_the_posts_setting(monkeypatch):
    X, Y = torch.randn(40, 1, 28, 28), torch.randint(0, 10, (40,))
    readings = iter([100.0, 101.0, 200.0, 203.0, 300.0, 302.0])  # 1, 3, 2 s
    monkeypatch.setattr(measure.time, "perf_counter", lambda: next(readings))
    s, nf, nb = mnist.seconds_per_iteration(X, Y, n=3, batch=4, warmup=1)
    assert s == 2.0  # the median of the timed iterations; the warm-up is not timed
    assert (nf, nb) == (20, 20)  # Euler, 20 steps, adjoint
