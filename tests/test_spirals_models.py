"""spirals: the models and losses, training, evaluation and its references, checkpoints
(fast: tiny models, a few iterations)."""

import dataclasses
import math
import os

import pytest
import torch

import nbutils
import spirals as S
import workers
from odecore import NeuralODE
from problems import PAPER_SMALL, TINY

pytestmark = pytest.mark.numerical  # make test runs these twice, on two kernel paths


# --------------------------------------------------------------------------
# Models and losses
# --------------------------------------------------------------------------
def test_model_shapes_and_the_same_latent_size(paper_small):
    _, test = paper_small
    b = S.heldout_batch(test, 7, 30, 20)
    for kind in ("Latent ODE", "RNN"):
        m = S.new_model(kind, TINY, seed=0, device="cpu")
        x_p, kl = m(b.x_obs, b.t_obs, b.t_grid)
        assert x_p.shape == (50, len(test), 2) and kl.shape == (len(test),)
        assert m.code(b.x_obs, b.t_obs).shape == (len(test), TINY.latent_dim)
    # the paper's sizes build the paper's network (Section 5.1): a GRU of 25 units over
    # (x, gap), a 4-d z0 (mean and log-variance: 8 outputs), f and g with 20 hidden units
    paper = S.new_model("Latent ODE", S.ModelConfig.paper(), 0, "cpu")
    gru = 3 * (3 * 25 + 25 * 25 + 2 * 25)
    assert nbutils.n_parameters(paper) == gru + (25 * 8 + 8) + (4 * 20 + 20 + 20 * 4 + 4) + (
        4 * 20 + 20 + 20 * 2 + 2)
    assert paper.code(b.x_obs, b.t_obs).shape == (len(test), 4)


def test_rnn_output_at_t0_depends_on_the_code_alone():
    m = S.new_model("RNN", TINY, 0, "cpu")
    code, t = torch.randn(4, 3), torch.linspace(0, 1, 6)[:, None, None].expand(6, 4, 1)
    a = m.decode(code, t)
    b = m.decode(code, t * 2)  # other gaps change later outputs, not the first
    assert torch.equal(a[0], b[0]) and not torch.allclose(a[1:], b[1:])


def test_per_sample_grids_decode_like_one_sample_at_a_time():
    vae = S.new_model("Latent ODE", S.ModelConfig(method="euler", h_max=0.25), 0, "cpu")
    z0 = torch.randn(3, S.ModelConfig().latent_dim)
    base = torch.linspace(0, 2, 11)
    t = torch.stack([base + s for s in (0.0, 1.3, 4.0)], 1).unsqueeze(-1)
    together = vae.decode(z0, t)
    for i in range(3):
        assert torch.allclose(together[:, i], vae.decode(z0[i:i + 1], t[:, i, 0])[:, 0], atol=1e-5)


def test_elbo_is_the_gaussian_likelihood_plus_the_kl():
    x, x_p = torch.zeros(5, 2, 2), torch.full((5, 2, 2), 0.1)
    # 0.5 * 5 * 2 * 0.01 / 0.02^2 = 125 per sample, over 5 points
    assert float(S.elbo_loss(x, x_p, torch.zeros(2), 0.02)) == pytest.approx(25.0)
    assert float(S.elbo_loss(x, x, torch.full((2,), 1.5), 0.02, kl_weight=0.5)) == pytest.approx(
        0.75 / 5)
    vae = S.new_model("Latent ODE", TINY, 0, "cpu")
    m, lv = torch.ones(2, 3), torch.zeros(2, 3)
    vae.encode = lambda x, t: (m, lv)
    t = torch.linspace(0, 1, 4)[:, None, None].expand(4, 2, 1)
    _, kl = vae(torch.zeros(4, 2, 2), t, t, sample=False)
    assert kl.tolist() == pytest.approx([1.5, 1.5])  # KL(N(1, 1) || N(0, 1)) = 1/2 a dim


# --------------------------------------------------------------------------
# Training, evaluation, checkpoints
# --------------------------------------------------------------------------
def test_both_models_train_on_the_same_batches_and_learn(paper_small, one_thread):
    train, _ = paper_small
    cfg = S.TrainConfig(iters=40, batch_size=16, window=30, n_obs=(7, 15), lr=2e-2, kl_warmup=5)
    hists = {}
    for kind in ("Latent ODE", "RNN"):
        _, hists[kind] = S.train_new(kind, TINY, train, cfg, seed=0, device="cpu")
        h = hists[kind]["loss"]
        # A model that does not learn keeps its loss within the batches' spread (a few tens
        # of percent); these models cut it to under a third in 40 steps. 0.7: halfway.
        assert sum(h[-5:]) < 0.7 * sum(h[:5]), (kind, h[:5], h[-5:])
    assert hists["Latent ODE"]["k"] == hists["RNN"]["k"]


def test_parallel_jobs_equal_jobs_run_in_turn(paper_small, monkeypatch, one_thread):
    train, _ = paper_small
    cfg = S.TrainConfig(iters=3, batch_size=8, window=30, n_obs=(5,))
    jobs = [(kind, TINY, train, cfg, 7, "cpu") for kind in ("Latent ODE", "RNN")]
    monkeypatch.setattr(os, "cpu_count", lambda: 2)  # workers, even on a one-core machine
    torch.manual_seed(123)
    forked = workers.run(S.train_job, jobs)
    one = workers.submit(S.train_job, jobs[1]).result()
    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    torch.manual_seed(456)
    in_turn = workers.run(S.train_job, jobs)
    assert isinstance(workers.submit(S.train_job, jobs[1]), workers._Done)
    for (ma, ha), (mb, hb) in zip(forked, in_turn):
        assert ha["loss"] == hb["loss"]
        for (name, a), b in zip(ma.state_dict().items(), mb.state_dict().values()):
            assert torch.equal(a, b), name
    assert one[1]["loss"] == in_turn[1][1]["loss"]


def test_evaluate_is_complete_and_separability_counts(paper_small):
    train, test = paper_small
    models = {k: S.new_model(k, TINY, 0, "cpu") for k in ("Latent ODE", "RNN")}
    res = S.evaluate(models, test, ks=(30, 10, 6), window=30, horizon=20)["rmse"]
    assert list(res) == [30, 10, 6]
    for row in res.values():
        assert set(row) == {"trivial", "Latent ODE", "RNN"}
        assert all(set(v) == {"interpolation", "extrapolation"} and
                   all(math.isfinite(s) and s > 0 for s in v.values()) for v in row.values())
    z = torch.randn(200, 3)
    y = z[:, 1] > 0
    z[:, 1] += torch.where(y, 0.5, -0.5)  # a margin: a linear rule separates them exactly
    assert S.linear_separability(z[:100], y[:100], z[100:], y[100:]) == 1.0
    assert S.linear_separability(z[:100], y[:100], z[100:], ~y[100:]) == 0.0
    # the RNN's code carries the direction; with the labels shuffled, nothing does: 20
    # held-out windows at chance score 0.5 +- 0.11, and 0.85 is three deviations above
    acc = S.direction_separability(models["RNN"], train, test, k=10, window=30)
    g = torch.Generator().manual_seed(0)
    shuffled = [dataclasses.replace(d, ccw=d.ccw[torch.randperm(len(d), generator=g)])
                for d in (train, test)]
    chance = S.direction_separability(models["RNN"], *shuffled, k=10, window=30)
    assert chance <= 0.85 and acc >= chance + 0.3, (acc, chance)


def test_checkpoint_round_trip(tmp_path, paper_small):
    _, test = paper_small
    models = {k: S.new_model(k, TINY, 1, "cpu") for k in ("Latent ODE", "RNN")}
    cfg = S.train_config("smoke")
    path = S.save_checkpoint(tmp_path / "c.pt", models, TINY, PAPER_SMALL, cfg,
                             extra={"rmse": {30: 0.5}})
    ck = S.load_checkpoint(path, device="cpu")
    assert ck["data_config"] == PAPER_SMALL and ck["train_config"] == cfg
    assert ck["model_config"] == TINY and ck["extra"]["rmse"] == {30: 0.5}
    b = S.heldout_batch(test, 6, 30, 20)
    for name, m in models.items():
        assert torch.equal(m.predict(b.x_obs, b.t_obs, b.t_grid),
                           ck["models"][name].predict(b.x_obs, b.t_obs, b.t_grid))
    assert S.checkpoint_path("quick", "post").name == "spirals-post-quick.pt"


def test_references_origin_and_linear_fit(small):
    _, test = small
    b = S.heldout_batch(test, 30, 30, 20)
    assert torch.equal(S.origin_predict(b), torch.zeros_like(b.x_true))
    # noise-free observations of dx/dt = W x: the fit recovers the spiral to discretisation error
    exact = S.Batch(b.t_grid, b.idx, S.gather_time(b.x_true, b.idx), b.t_obs, b.x_true,
                    b.x_true, b.sample, b.window)
    fit = S.score(S.linear_fit_predict(exact), exact)
    origin = S.score(S.origin_predict(exact), exact)
    assert fit["interpolation"] < 0.05 * origin["interpolation"], (fit, origin)
    assert fit["extrapolation"] < 0.05 * origin["extrapolation"], (fit, origin)
    # A fit that would grow is held at neutral stability, so its solution cannot grow
    # exponentially: |x(t)| <= cond(eigenvectors) |x0|, a small factor for these rotations
    # (an unchecked fit to 4 noisy points grows like e^(lambda t) instead).
    noisy = S.linear_fit_predict(S.heldout_batch(test, 4, 30, 20))
    assert torch.isfinite(noisy).all() and noisy.abs().max() < 10 * b.x_true.abs().max()


def test_horizon_rmse_averages_to_the_extrapolation_score(paper_small):
    _, test = paper_small
    b = S.heldout_batch(test, 10, 30, 20)
    pred = S.trivial_predict(b)
    curve = S.horizon_rmse(pred, b, 20)
    assert curve.shape == (20,)
    assert math.isclose(float(curve.pow(2).mean().sqrt()), S.score(pred, b, 20)["extrapolation"],
                        rel_tol=1e-5)


def test_training_monitor_scores_the_heldout_batch(paper_small, one_thread):
    train, test = paper_small
    b = S.heldout_batch(test, 10, 30, 20)
    cfg = S.TrainConfig(iters=7, batch_size=8, window=30, n_obs=(5,), frame_every=3)
    model, h = S.train_new("Latent ODE", TINY, train, cfg, 0, "cpu", b)
    assert [i for i, _ in h["monitor"]] == [1, 4, 7]
    assert math.isclose(h["monitor"][-1][1], S.score(model.predict(
        b.x_obs, b.t_obs, b.t_grid), b, 20)["extrapolation"], rel_tol=1e-6)
    _, h2 = S.train_new("Latent ODE", TINY, train, cfg, 0, "cpu")  # the monitor changes nothing
    assert h2["loss"] == h["loss"] and h2["monitor"] == []


def test_spawned_workers_give_the_same_models(paper_small, monkeypatch, one_thread):
    # macOS and Windows get spawned workers (workers.start_method): the jobs must pickle
    train, _ = paper_small
    cfg = S.TrainConfig(iters=2, batch_size=4, window=30, n_obs=(5,))
    jobs = [(kind, TINY, train, cfg, 3, "cpu") for kind in ("Latent ODE", "RNN")]
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    spawned = workers.run(S.train_job, jobs, system="darwin")
    in_turn = [S.train_new(*job) for job in jobs]
    for (_, ha), (_, hb) in zip(spawned, in_turn):
        assert ha["loss"] == hb["loss"]


def test_dimension_sweeps_vary_one_dimension_at_a_time(paper_small):
    _, test = paper_small
    model = S.new_model("Latent ODE", TINY, 0, "cpu")
    b = S.heldout_batch(test, 10, 30, 20)
    codes = model.code(b.x_obs, b.t_obs)
    centre = codes[test.ccw].mean(0)
    values, turns, x = S.dimension_sweeps(model, codes, b.t_grid[:, :1], n=5, centre=centre)
    D = TINY.latent_dim
    assert values.shape == (D, 5) and turns.shape == (D, 5) and x.shape == (D, 50, 5, 2)
    assert torch.allclose(values[:, 0], codes.min(0).values)
    assert torch.allclose(values[:, -1], codes.max(0).values)
    z = centre[None].clone()
    z[0, 1] = values[1, 3]
    with torch.no_grad():
        one = model.decode(z, b.t_grid[:, :1])
    assert torch.allclose(x[1, :, 3], one[:, 0], atol=1e-6)
    assert torch.allclose(turns[1, 3], S.winding_angle(one)[0], atol=1e-6)


def test_winding_angle_counts_turns_and_ignores_straight_paths():
    th = torch.linspace(0, 4 * math.pi, 401, dtype=torch.float64)
    circle = torch.stack([torch.cos(th), torch.sin(th)], -1)[:, None]
    # two turns, sampled 200 times a turn: the chords turn by exactly the sampled angle,
    # and the first and last half-step are lost: 2 (1 - 1/400) turns
    assert math.isclose(float(S.winding_angle(circle)), 2 * (1 - 1 / 400), rel_tol=1e-9)
    assert math.isclose(float(S.winding_angle(circle.flip(-1))), -2 * (1 - 1 / 400),
                        rel_tol=1e-9)
    s = torch.linspace(0, 1, 50, dtype=torch.float64) ** 2  # uneven speed, far from the origin
    line = torch.stack([5 + 3 * s, -2 + s], -1)[:, None]
    assert float(S.winding_angle(line).abs()) < 1e-12
    # a long, fast, nearly straight arc (radius 200, a tenth of a radian in unit time) has
    # more angular momentum about its mean than a small circle turning twice: its winding
    # says what it is, 0.1 / (2 pi) of a turn
    t = torch.linspace(0, 1, 401, dtype=torch.float64)
    arc = 200 * torch.stack([torch.cos(0.1 * t), torch.sin(0.1 * t)], -1)[:, None]
    small = 0.3 * circle
    assert float(S.angular_momentum(arc, t)) > float(S.angular_momentum(small, t)) > 0
    assert math.isclose(float(S.winding_angle(arc)), 0.1 / (2 * math.pi) * (1 - 1 / 400),
                        rel_tol=1e-6)


def test_known_curves_predictor_is_exact_on_clean_windows_and_limited_by_noise():
    cfg = S.PaperSpiralConfig()
    _, test = S.make_paper_spirals(cfg)
    clean = dataclasses.replace(test, x=test.x_true)
    b = S.heldout_batch(clean, 30)
    assert S.score(S.known_curves_predict(b, cfg), b)["extrapolation"] < 1e-5
    b = S.heldout_batch(test, 30)
    noisy = S.score(S.known_curves_predict(b, cfg), b)["extrapolation"]
    # with noise 0.3 it must still beat the trivial predictor by far, and be above 0
    assert 0 < noisy < 0.1 * S.score(S.trivial_predict(b), b)["extrapolation"]


def test_rate_error_costs_extrapolation_and_zero_error_costs_nothing(small):
    _, test = small
    b = S.heldout_batch(test, 10, 20, 20)
    cost = S.rate_error_rmse(test, b, (0.0, 0.05, 0.2))
    assert cost[0.0] < 1e-5 < cost[0.05] < cost[0.2]
    with pytest.raises(ValueError, match="dynamics"):
        S.rate_error_rmse(dataclasses.replace(test, W=None), b)


def test_solver_check_compares_with_dopri5_and_restores_the_solver(paper_small):
    _, test = paper_small
    b = S.heldout_batch(test, 10, 30, 20)
    fine = dataclasses.replace(TINY, method="rk4", h_max=0.01)
    model = S.new_model("Latent ODE", fine, 0, "cpu")
    before = model.ode
    out = S.solver_check(model, b)
    assert model.ode is before and out["nfe"] > 0
    # RK4 at h = 0.01 on a smooth field is far inside dopri5's rtol 1e-6
    assert out["relative difference"] < 1e-4
    coarse = S.new_model("Latent ODE", dataclasses.replace(TINY, h_max=2.0), 0, "cpu")
    assert S.solver_check(coarse, b)["relative difference"] > out["relative difference"]


def test_heavy_tail_and_window_mean_separability(small, paper_small):
    train, test = small
    tail = S.heavy_tail(train, 30)
    energy = (train.x_true[:30] ** 2).sum((0, 2))
    assert math.isclose(tail["top1_share"], float(energy.max() / energy.sum()), rel_tol=1e-6)
    assert torch.equal(tail["max_abs"], train.x_true[:30].abs().amax((0, 2)))
    ptrain, ptest = paper_small  # the two directions sit at x1 = -5 and +5
    assert S.window_mean_separability(ptrain, ptest, 30) == 1.0


def test_warm_start_solves_with_euler_then_with_the_models_own_solver(paper_small, monkeypatch,
                                                                       one_thread):
    train, _ = paper_small
    used = []
    real = NeuralODE.forward

    def spy(self, *args, **kwargs):  # note which solver each decoding used
        used.append(self.opts.method)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(NeuralODE, "forward", spy)
    model = S.new_model("Latent ODE", dataclasses.replace(TINY, method="rk4"), 0, "cpu")
    own = model.ode
    cfg = S.TrainConfig(iters=5, batch_size=4, window=30, n_obs=(5,), warm_method="euler",
                        warm_frac=0.6)
    S.train_model(model, train, cfg)
    assert model.ode is own and own.opts.method == "rk4"
    assert used == ["euler"] * 3 + ["rk4"] * 2, used  # int(0.6 * 5) = 3 warm iterations
    used.clear()
    rnn = S.new_model("RNN", TINY, 0, "cpu")  # no ODE: nothing to warm
    S.train_model(rnn, train, cfg)
    assert used == []


def test_normalised_models_are_scale_equivariant(small):
    # linear dynamics do not care about scale: a normalised model's prediction from c x is
    # c times its prediction from x, and its code is the same (both models)
    _, test = small
    b = S.heldout_batch(test, 8, 20, 20)
    for kind in ("Latent ODE", "RNN"):
        model = S.new_model(kind, dataclasses.replace(TINY, normalise=True), 0, "cpu")
        p1 = model.predict(b.x_obs, b.t_obs, b.t_grid)
        p3 = model.predict(3.0 * b.x_obs, b.t_obs, b.t_grid)
        assert torch.allclose(p3, 3.0 * p1, rtol=1e-5, atol=1e-6), kind
        assert torch.allclose(model.code(3.0 * b.x_obs, b.t_obs), model.code(b.x_obs, b.t_obs),
                              atol=1e-6)
        scale = S.window_scale(b.x_obs)
        assert torch.allclose(scale[0, :, 0], b.x_obs.pow(2).mean((0, 2)).sqrt())
        plain = S.new_model(kind, TINY, 0, "cpu")  # without: not equivariant
        assert not torch.allclose(plain.predict(3.0 * b.x_obs, b.t_obs, b.t_grid),
                                  3.0 * plain.predict(b.x_obs, b.t_obs, b.t_grid), atol=1e-3)
