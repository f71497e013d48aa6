"""spirals: the data generator, batches, models, losses, training and checkpoints (fast)."""

import math

import pytest
import torch

import spirals as S
from odecore import LinearODEF, odeint

SMALL = S.SpiralConfig(n_spirals=40, n_test=10, n_points=60, t_max=6.0, seed=3)


@pytest.fixture(scope="module")
def small():
    return S.make_spirals(SMALL)


# --------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------
def test_directions_are_balanced_and_labelled(small):
    train, test = small
    for part, n in ((train, 30), (test, 10)):
        assert len(part) == n and int(part.ccw.sum()) == n // 2
        # swapped off-diagonal signs: W12 < 0 < W21 exactly for the CCW ones
        assert bool(((part.W[:, 0, 1] < 0) == part.ccw).all())
        assert bool(((part.W[:, 1, 0] > 0) == part.ccw).all())
        # the mean angular momentum x1 dx2/dt - x2 dx1/dt has the label's sign
        # wherever W has complex eigenvalues (a genuine spiral, not a node)
        W = part.W.double()
        spiral = (W[:, 0, 0] - W[:, 1, 1]) ** 2 + 4 * W[:, 0, 1] * W[:, 1, 0] < 0
        L = S.angular_momentum(part.x_true, part.t)
        assert bool(((L > 0) == part.ccw)[spiral].all())
        assert spiral.float().mean() > 0.8


def test_full_size_generator_is_exactly_half_and_half():
    train, test = S.make_spirals(S.SpiralConfig())
    assert (len(train), len(test)) == (800, 200)
    assert int(train.ccw.sum()) == 400 and int(test.ccw.sum()) == 100
    assert train.x.shape == (200, 800, 2) and test.t.shape == (200,)
    assert math.isclose(float(test.t[-1]), 6.29 * 5, rel_tol=1e-6)
    noise = (train.x - train.x_true).std()
    assert abs(float(noise) - 0.02) < 1e-3


def test_closed_form_matches_an_ode_solve(small):
    train, _ = small
    for i in (0, 1):  # one CW, one CCW
        f = LinearODEF(train.W[i].double())
        xs = odeint(f, train.x0[i:i + 1].double(), train.t.double(), method="rk4", h_max=0.01)
        assert torch.allclose(xs[:, 0].float(), train.x_true[:, i], atol=1e-4)


def test_cache_is_keyed_by_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(S, "output_dir", lambda *p: tmp_path.joinpath(*p))
    (tmp_path / "cache").mkdir()
    other = S.SpiralConfig(**{**SMALL.__dict__, "seed": 4})
    assert SMALL.key() != other.key()
    a, _ = S.load_spirals(SMALL)
    assert (tmp_path / "cache" / f"spirals-{SMALL.key()}.pt").exists()
    b, _ = S.load_spirals(SMALL)
    assert torch.equal(a.x, b.x)
    c, _ = S.load_spirals(other)
    assert not torch.equal(a.x, c.x)


# --------------------------------------------------------------------------
# Batches
# --------------------------------------------------------------------------
def test_observed_positions_keep_the_first_and_are_sorted():
    g = torch.Generator().manual_seed(0)
    idx = S.observed_positions(30, 100, 64, g)
    assert idx.shape == (30, 64)
    assert bool((idx[0] == 0).all())
    assert bool((idx[1:] > idx[:-1]).all()) and int(idx.max()) < 100
    # different samples see different points
    assert not bool((idx == idx[:, :1]).all())


def test_batch_shapes_and_per_sample_windows(small):
    train, _ = small
    g = torch.Generator().manual_seed(1)
    b = S.sample_batch(train, 8, 5, window=20, g=g)
    assert b.t_win.shape == (20, 8, 1) and b.x_win.shape == (20, 8, 2)
    assert b.x_obs.shape == (5, 8, 2) and b.t_obs.shape == (5, 8, 1)
    assert torch.equal(b.t_obs, S.gather_time(b.t_win, b.idx))
    assert torch.equal(b.t_obs[0], b.t_win[0])
    assert len(set(b.t_win[0, :, 0].tolist())) > 1  # windows start at different times


def test_encoder_gaps_are_negative_and_paired_with_their_observation():
    t = torch.tensor([0.0, 0.5, 1.5, 1.7]).reshape(4, 1, 1)
    gaps = S.time_gaps(t)
    assert gaps.flatten().tolist() == pytest.approx([0.0, -0.5, -1.0, -0.2])


def test_the_sign_of_the_gap_is_a_convention_for_a_gru(monkeypatch):
    enc = S.RNNEncoder(2, 16, 3)
    x, t = torch.randn(7, 4, 2), torch.cumsum(torch.rand(7, 4, 1), 0)
    mean, logv = enc(x, t)
    with torch.no_grad():
        enc.rnn.weight_ih_l0[:, 2].neg_()  # the column that reads the gap
    gaps = S.time_gaps
    monkeypatch.setattr(S, "time_gaps", lambda tt: -gaps(tt))
    mean2, logv2 = enc(x, t)
    assert torch.allclose(mean, mean2, atol=1e-6) and torch.allclose(logv, logv2, atol=1e-6)


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------
def test_model_shapes(small):
    train, _ = small
    b = S.sample_batch(train, 6, 7, window=20, g=torch.Generator().manual_seed(2))
    vae = S.ODEVAE(hidden_dim=16, latent_dim=4, method="euler", h_max=0.2)
    x_p, z, m, lv = vae(b.x_obs, b.t_obs, b.t_win)
    assert x_p.shape == (20, 6, 2) and z.shape == m.shape == lv.shape == (6, 4)
    assert vae(b.x_obs, b.t_obs)[0].shape == (7, 6, 2)
    rnn = S.RNNBaseline(hidden_dim=16, state_dim=8)
    assert rnn.encode(b.x_obs, b.t_obs).shape == (6, 8)
    assert rnn(b.x_obs, b.t_obs, b.t_win).shape == (20, 6, 2)


def test_per_sample_grids_decode_like_one_sample_at_a_time():
    # h_max 0.25 over intervals of 0.2: one step each, away from the rounding boundary
    # (in float32, 4.0 + 0.2 - 4.0 is 0.2000003, which h_max = 0.2 would split in two)
    dec = S.NeuralODEDecoder(2, 16, 4, method="euler", h_max=0.25)
    z0 = torch.randn(3, 4)
    base = torch.linspace(0, 2, 11)
    t = torch.stack([base + s for s in (0.0, 1.3, 4.0)], 1).unsqueeze(-1)  # (11, 3, 1)
    together = dec(z0, t)
    for i in range(3):
        alone = dec(z0[i:i + 1], t[:, i, 0])  # a shared (T,) grid for one sample
        assert torch.allclose(together[:, i], alone[:, 0], atol=1e-5)


def test_elbo_is_the_posts(small):
    x, x_p = torch.zeros(5, 2, 2), torch.full((5, 2, 2), 0.1)
    m, lv = torch.zeros(2, 3), torch.zeros(2, 3)
    # KL of N(0, I) against itself is 0; 0.5 * 5 * 2 * 0.01 / 0.02^2 = 125, over 5 points
    assert float(S.elbo_loss(x, x_p, m, lv, 0.02)) == pytest.approx(25.0)
    m1 = torch.ones(2, 3)
    assert float(S.elbo_loss(x, x, m1, lv, 0.02)) == pytest.approx(0.5 * 3 / 5)


# --------------------------------------------------------------------------
# Training, evaluation, checkpoints
# --------------------------------------------------------------------------
def test_training_lowers_the_loss(small):
    train, _ = small
    torch.manual_seed(0)
    cfg = S.TrainConfig(vae_iters=25, rnn_iters=25, batch_size=16, window=20, n_obs=(5, 10),
                        lr=1e-2, rnn_lr=1e-2)
    vae = S.ODEVAE(hidden_dim=32, latent_dim=4, method="euler", h_max=0.2)
    hist = S.train_vae(vae, train, cfg)
    assert sum(hist["loss"][-5:]) < 0.5 * sum(hist["loss"][:5])
    rnn = S.RNNBaseline(hidden_dim=32, state_dim=16)
    hist = S.train_rnn(rnn, train, cfg)
    assert sum(hist["loss"][-5:]) < 0.7 * sum(hist["loss"][:5])


def test_rnn_trained_on_another_core_equals_one_trained_here(small, monkeypatch):
    # The forked worker must give the very model a synchronous run gives, whatever the
    # caller's random state: the RNN's weights and batches come from its own seeds.
    train, _ = small
    cfg = S.TrainConfig(rnn_iters=4, batch_size=8, window=20, n_obs=(5,))
    torch.manual_seed(123)
    rnn_a, hist_a = S.train_rnn_async(train, cfg, seed=7, device="cpu").result()
    monkeypatch.setattr(S.os, "cpu_count", lambda: 1)  # forces the in-process path
    torch.manual_seed(456)
    future = S.train_rnn_async(train, cfg, seed=7, device="cpu")
    assert isinstance(future, S._Done)
    rnn_b, hist_b = future.result()
    assert hist_a["loss"] == hist_b["loss"]
    for (name, a), b in zip(rnn_a.state_dict().items(), rnn_b.state_dict().values()):
        assert torch.equal(a, b), name


def test_table2_and_extrapolation_are_complete(small):
    _, test = small
    vae = S.ODEVAE(hidden_dim=16, latent_dim=4, method="euler", h_max=0.2)
    rnn = S.RNNBaseline(hidden_dim=16, state_dim=8)
    res = S.evaluate_table2(vae, rnn, test, n_obs=(20, 10, 6), window=20)["rmse"]
    assert list(res) == [20, 10, 6]
    for row in res.values():
        assert set(row) == {"trivial", "Latent ODE", "RNN"}
        assert all(math.isfinite(v) and v > 0 for v in row.values())
    ext = S.evaluate_extrapolation(vae, rnn, test, k=10, window=20)["rmse"]
    assert set(ext) == {"Latent ODE", "RNN", "trivial"}
    assert all(set(v) == {"window", "extrapolation"} for v in ext.values())


def test_trivial_predictor_is_the_window_mean():
    x = torch.randn(10, 3, 2)
    p = S.trivial_predict(x, 25)
    assert p.shape == (25, 3, 2) and torch.allclose(p[7], x.mean(0))


def test_checkpoint_round_trip(tmp_path, small):
    _, test = small
    vae = S.ODEVAE(hidden_dim=16, latent_dim=4, method="euler", h_max=0.2)
    rnn = S.RNNBaseline(hidden_dim=16, state_dim=8)
    path = S.save_checkpoint(tmp_path / "c.pt", vae, rnn, SMALL, S.train_config("smoke"),
                             extra={"table2": {30: 0.5}})
    ck = S.load_checkpoint(path, device="cpu")
    assert ck["data_config"] == SMALL and ck["train_config"] == S.train_config("smoke")
    assert ck["extra"]["table2"] == {30: 0.5}
    b = S.observe(test, torch.arange(4), torch.zeros(4, dtype=torch.long), 6, 20,
                  torch.Generator().manual_seed(0))
    assert torch.equal(vae.generate_with_seed(b.x_obs, b.t_obs, b.t_win),
                       ck["vae"].generate_with_seed(b.x_obs, b.t_obs, b.t_win))
    assert torch.equal(rnn.generate_with_seed(b.x_obs, b.t_obs, b.t_win),
                       ck["rnn"].generate_with_seed(b.x_obs, b.t_obs, b.t_win))
    assert S.checkpoint_path("quick").name == "spirals-quick.pt"


def test_unknown_budget_is_an_error():
    with pytest.raises(ValueError, match="budget"):
        S.train_config("huge")
