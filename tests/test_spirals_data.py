"""spirals: both generators, the cache, the protocol's observed and scored positions (fast)."""

import dataclasses
import math

import pytest
import torch

import spirals as S
from odecore import LinearODEF, odeint
from problems import PAPER_SMALL, SMALL, TINY

pytestmark = pytest.mark.numerical  # make test runs these twice, on two kernel paths


# --------------------------------------------------------------------------
# The paper's spirals
# --------------------------------------------------------------------------
def test_paper_curves_are_the_papers_archimedean_spirals():
    cfg = S.PaperSpiralConfig()
    (cw, cc), t = S.paper_spiral_curves(cfg)
    assert cw.shape == cc.shape == (500, 2) and math.isclose(float(t[-1]), 6 * math.pi)
    # counter-clockwise: r = b t about (+5, 0); clockwise: r = 50 b / (6 pi + 1 - t) about (-5, 0)
    assert torch.allclose((cc - torch.tensor([5.0, 0.0], dtype=cc.dtype)).norm(dim=1), 0.3 * t)
    r_cw = 0.3 * 50 / (6 * math.pi + 1 - t)
    assert torch.allclose((cw + torch.tensor([5.0, 0.0], dtype=cw.dtype)).norm(dim=1), r_cw)
    L = S.angular_momentum(torch.stack([cw, cc], 1), t)
    assert float(L[0]) < 0 < float(L[1])


def test_paper_windows_shape_balance_noise_and_split():
    cfg = S.PaperSpiralConfig()
    train, test = S.make_paper_spirals(cfg)
    assert (len(train), len(test)) == (800, 200)
    assert train.x.shape == (200, 800, 2) and test.x.shape == (200, 200, 2)
    assert test.t.shape == (200,) and float(train.t[0]) == 0.0 and train.train_points == 200
    # directions: each with probability 1/2 (binomial: 1000 draws, within 4 sd of 500)
    n_ccw = int(train.ccw.sum()) + int(test.ccw.sum())
    assert abs(n_ccw - 500) < 4 * math.sqrt(250)
    assert 0 < int(test.ccw.sum()) < 200
    # the noise: N = 240,000 draws of N(0, 0.3^2); the standard errors of their mean and
    # standard deviation are 0.3/sqrt(N) = 6e-4 and 0.3/sqrt(2N) = 4e-4: 0.005 is 8 or more
    noise = torch.cat([(train.x - train.x_true).flatten(), (test.x - test.x_true).flatten()])
    assert abs(float(noise.std()) - 0.3) < 0.005 and abs(float(noise.mean())) < 0.005
    # room on both sides: 100 points before each window, and the window and the 100 points
    # after it (the extrapolation score's, and a training loss's) inside the 500
    for part in (train, test):
        assert int(part.start.min()) >= 100 and 490 < int(part.start.max()) + 200 <= 500
    # 800 starts drawn from 201 values: 201 (1 - e^(-800/201)) = 197 distinct expected, SD ~2
    assert len(set(train.start.tolist())) > 185
    # the splits share the curves, never a noisy point (no held-out (x1, x2) among training's:
    # each point's two float32s read as one 64-bit integer)
    as_int = lambda x: x.contiguous().view(torch.int64).flatten()
    assert not torch.isin(as_int(test.x), as_int(train.x)).any()
    # every window is a stretch of its spiral
    curves, _ = S.paper_spiral_curves(cfg)
    j = 7
    ref = curves[int(test.ccw[j]), int(test.start[j]):int(test.start[j]) + 200].float()
    assert torch.allclose(test.x_true[:, j], ref, atol=1e-5)
    # the labelled direction is the turning of the noise-free window
    L = S.angular_momentum(test.x_true, test.t)
    assert bool(((L > 0) == test.ccw).all())


def test_cache_is_keyed_by_kind_and_settings(tmp_path, monkeypatch):
    monkeypatch.setattr(S.data, "output_dir", lambda *p: tmp_path.joinpath(*p))
    (tmp_path / "cache").mkdir()
    other = S.SpiralConfig(**{**SMALL.__dict__, "seed": 4})
    assert len({SMALL.key(), other.key(), PAPER_SMALL.key()}) == 3
    a, _ = S.load_spirals(SMALL)
    assert (tmp_path / "cache" / f"spirals-{SMALL.key()}.pt").exists()
    b, _ = S.load_spirals(SMALL)
    assert torch.equal(a.x, b.x) and torch.equal(a.W, b.W)
    c, _ = S.load_spirals(other)
    assert not torch.equal(a.x, c.x)
    p1, q1 = S.load_spirals(PAPER_SMALL)
    p2, q2 = S.load_spirals(PAPER_SMALL)
    assert torch.equal(p1.x, p2.x) and torch.equal(q1.start, q2.start) and p2.W is None


# --------------------------------------------------------------------------
# The post's spirals
# --------------------------------------------------------------------------
def test_post_directions_are_balanced_and_labelled(small):
    train, test = small
    for part, n in ((train, 30), (test, 10)):
        assert len(part) == n and int(part.ccw.sum()) == n // 2
        assert bool(((part.W[:, 0, 1] < 0) == part.ccw).all())
        W = part.W.double()
        spiral = (W[:, 0, 0] - W[:, 1, 1]) ** 2 + 4 * W[:, 0, 1] * W[:, 1, 0] < 0
        L = S.angular_momentum(part.x_true, part.t)
        assert bool(((L > 0) == part.ccw)[spiral].all())


def test_post_closed_form_matches_an_ode_solve(small):
    train, _ = small
    for i in (0, 1):  # one CW, one CCW
        f = LinearODEF(train.W[i].double())
        xs = odeint(f, train.x0[i:i + 1].double(), train.t.double(), method="rk4", h_max=0.01)
        # x_true is float32 (round-off ~1e-7 |x|) and RK4 at h = 0.01 errs by ~1e-9 |x|: 1e-4
        # is far above both, and a wrong W or time grid moves x by order one
        assert torch.allclose(xs[:, 0].float(), train.x_true[:, i], atol=1e-4)


def test_bad_settings_are_errors():
    with pytest.raises(ValueError, match="n_total"):
        S.make_paper_spirals(S.PaperSpiralConfig(n_total=250))
    with pytest.raises(ValueError, match="even"):
        S.make_spirals(S.SpiralConfig(n_spirals=11))
    with pytest.raises(TypeError, match="spiral"):
        S.make_data({"n": 3})
    with pytest.raises(ValueError, match="budget"):
        S.train_config("huge")
    with pytest.raises(ValueError, match="dataset"):
        S.train_config("quick", "mnist")


# --------------------------------------------------------------------------
# The protocol: which points are observed, which are scored
# --------------------------------------------------------------------------
def test_observed_positions_keep_the_first_are_sorted_and_distinct():
    g = torch.Generator().manual_seed(0)
    idx = S.observed_positions(30, 100, 64, g)
    assert idx.shape == (30, 64) and bool((idx[0] == 0).all())
    assert bool((idx[1:] > idx[:-1]).all()) and int(idx.max()) < 100
    assert not bool((idx == idx[:, :1]).all())
    every = S.observed_positions(100, 100, 3, g)
    assert torch.equal(every, torch.arange(100)[:, None].expand(100, 3))
    with pytest.raises(ValueError, match="observe"):
        S.observed_positions(101, 100, 2)


def test_training_batches_stay_inside_the_training_points(paper_small, small):
    train, _ = paper_small
    g = torch.Generator().manual_seed(1)
    assert train.x.shape[0] == train.train_points == 50  # a window of 30 and 20 after it
    b = S.sample_batch(train, 16, 7, window=30, g=g, horizon=20)
    assert b.t_grid.shape == (50, 16, 1) and b.x_obs.shape == (7, 16, 2)
    assert torch.equal(b.x_grid, train.x[:, b.sample])
    assert int(b.idx.max()) < 30  # observed only inside the window
    b = S.sample_batch(train, 16, 7, window=30, g=g)  # no horizon: the window slides
    assert b.t_grid.shape == (30, 16, 1) and len(set(b.t_grid[0, :, 0].tolist())) > 1
    post_train, _ = small
    b = S.sample_batch(post_train, 16, 5, window=20, g=g)
    assert torch.equal(b.t_obs, S.gather_time(b.t_grid, b.idx))
    assert len(set(b.t_grid[0, :, 0].tolist())) > 1  # the post's: windows start anywhere
    with pytest.raises(ValueError, match="too few"):
        S.sample_batch(train, 4, 5, window=30, horizon=21)


def test_training_targets_are_the_observed_points_then_those_after_the_window(paper_small):
    train, _ = paper_small
    b = S.sample_batch(train, 6, 5, window=30, g=torch.Generator().manual_seed(2), horizon=20)
    pos = S.training_targets(b, 20)
    assert pos.shape == (25, 6)
    assert torch.equal(pos[:5], b.idx)
    assert torch.equal(pos[5:], torch.arange(30, 50)[:, None].expand(20, 6))
    assert torch.equal(S.training_targets(b, 0), b.idx)
    with pytest.raises(ValueError, match="too few"):
        S.training_targets(b, 21)


def test_the_horizon_loss_scores_the_points_after_the_window(paper_small, one_thread):
    # change only the points after each training window: a loss that scores them sees it,
    # one that does not is unchanged to the bit
    train, _ = paper_small
    moved = dataclasses.replace(train, x=train.x.clone())
    moved.x[30:] += 1.0
    cfg = S.TrainConfig(iters=3, batch_size=8, window=30, n_obs=(5,), horizon=20)
    loss = lambda data, c: S.train_new("Latent ODE", TINY, data, c, 0, "cpu")[1]["loss"]
    assert loss(train, cfg) != loss(moved, cfg)
    no_h = dataclasses.replace(cfg, horizon=0)
    assert loss(train, no_h) != loss(train, cfg)
    assert loss(dataclasses.replace(train, train_points=30), no_h) == loss(
        dataclasses.replace(moved, train_points=30), no_h)


def test_heldout_windows_never_reach_training(paper_small, one_thread):
    # poison the held-out split: a held-out value that reached a training loss would change
    # it; the monitor, which does read held-out windows, must change nothing
    train, test = paper_small
    poisoned = dataclasses.replace(test, x=torch.full_like(test.x, 1e4))
    b = S.heldout_batch(poisoned, 10, 30, 20)
    cfg = S.TrainConfig(iters=6, batch_size=8, window=30, n_obs=(5,), horizon=20, frame_every=2)
    _, h = S.train_new("Latent ODE", TINY, train, cfg, 0, "cpu", b)
    _, clean = S.train_new("Latent ODE", TINY, train, cfg, 0, "cpu")
    assert h["loss"] == clean["loss"] and all(e > 1 for _, e in h["monitor"])


def test_max_abs_leaves_out_the_heavy_training_samples(small, monkeypatch, one_thread):
    train, _ = small
    big = train.x.abs().amax((0, 2))
    limit = float(big.median())
    seen = []
    real = S.sample_batch
    monkeypatch.setattr(S.training, "sample_batch", lambda data, *a, **k: (
        seen.append(data), real(data, *a, **k))[1])
    cfg = S.TrainConfig(iters=2, batch_size=8, window=20, n_obs=(5,), max_abs=limit)
    S.train_new("RNN", TINY, train, cfg, 0, "cpu")
    kept = seen[0]
    assert len(kept) == int((big <= limit).sum()) < len(train)
    assert float(kept.x.abs().max()) <= limit
    assert torch.equal(kept.W, train.W[big <= limit]) and torch.equal(kept.t, train.t)


def test_scored_positions_interpolation_and_extrapolation():
    data = S.SpiralData(t=torch.arange(12.0), x=torch.randn(12, 2, 2), x_true=torch.zeros(12, 2, 2),
                        ccw=torch.tensor([False, True]), train_points=6, noise_std=0.1)
    b = S.heldout_batch(data, k=3, window=6, horizon=5, seed=0)
    assert b.t_grid.shape == (11, 2, 1)
    last = b.idx[-1]
    mask = S.span_mask(b)
    for j in range(2):
        assert mask[:, j].tolist() == [i <= int(last[j]) for i in range(11)]
    ext = S.extrapolation_positions(b, 5)
    assert torch.equal(ext, last[None] + torch.arange(1, 6)[:, None])
    # the scores read exactly those positions: an error placed elsewhere does not count
    pred = torch.zeros(11, 2, 2)
    pred[ext, torch.arange(2)[None]] = 1.0
    s = S.score(pred, b, horizon=5)
    assert s["interpolation"] == 0.0 and s["extrapolation"] == pytest.approx(1.0)
    full = S.heldout_batch(data, k=6, window=6, horizon=5)  # the last observed is position 5
    assert S.extrapolation_positions(full, 5)[-1].tolist() == [10, 10]
    with pytest.raises(ValueError, match="too few"):
        S.extrapolation_positions(full, 6)
    with pytest.raises(ValueError, match="runs past"):
        S.heldout_batch(data, k=3, window=6, horizon=7)


def test_trivial_predictor_is_the_mean_of_the_observed_points(paper_small):
    _, test = paper_small
    b = S.heldout_batch(test, 9, 30, 20)
    p = S.trivial_predict(b)
    assert p.shape == (50, 20, 2) and torch.allclose(p[33], b.x_obs.mean(0))


def test_encoder_gaps_are_negative_and_paired_with_their_observation():
    t = torch.tensor([0.0, 0.5, 1.5, 1.7]).reshape(4, 1, 1)
    assert S.time_gaps(t).flatten().tolist() == pytest.approx([0.0, -0.5, -1.0, -0.2])
