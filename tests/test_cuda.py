"""The GPU paths, where there is a GPU (skipped elsewhere; `make gpu-check` runs them).

The same computation on the GPU and on the CPU, in float64, differs only by the order
of floating-point sums: a relative 1e-10 is a million times float64's round-off,
and any real difference (a tensor left on the wrong device, a missing
synchronisation) is of order one.
"""

import pytest
import torch

import measure
import mnist
import spirals as S
import workers
from cnf import CNF, PlanarField, make_data
from odecore import NNODEF, NeuralODE
from problems import rel_err

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]
GPU = torch.device("cuda")


def rel(a, b):
    return rel_err(a.cpu(), b.cpu())


def grads(func, z0, t, device, **opts):
    func = func.to(device)
    z0 = z0.to(device).requires_grad_()
    out = NeuralODE(func, **opts)(z0, t.to(device), return_whole_sequence=True)
    out.pow(2).sum().backward()
    return [z0.grad] + [p.grad for p in func.parameters()]


@pytest.mark.parametrize("opts", [dict(method="rk4", h_max=0.05),
                                  dict(method="dopri5", rtol=1e-10, atol=1e-10)])
def test_adjoint_on_the_gpu_is_the_cpus(opts):
    torch.manual_seed(0)
    cpu_func = NNODEF(2, 16, time_invariant=False).double()
    gpu_func = NNODEF(2, 16, time_invariant=False).double()
    gpu_func.load_state_dict(cpu_func.state_dict())
    z0, t = torch.randn(5, 2, dtype=torch.float64), torch.linspace(0, 1, 4, dtype=torch.float64)
    # dopri5 may take other steps on either side of a rounding: its answers then differ by
    # its tolerance's error (about steps x rtol), far below 1e-6 and far above round-off
    tol = 1e-10 if opts["method"] == "rk4" else 1e-6
    for a, b in zip(grads(gpu_func, z0, t, GPU, **opts), grads(cpu_func, z0, t, "cpu", **opts)):
        assert a.is_cuda and rel(a, b) < tol


def test_cnf_density_on_the_gpu_is_the_cpus():
    torch.manual_seed(1)
    model = CNF(PlanarField(2, 8), rtol=1e-9, atol=1e-9).double()
    x = make_data("two moons", 64, seed=0).double()
    with torch.no_grad():
        cpu = model.log_prob(x)
        gpu = model.to(GPU).log_prob(x.to(GPU))
    assert gpu.is_cuda and rel(gpu, cpu) < 1e-6  # dopri5 at 1e-9, as above


def test_seconds_waits_for_the_kernels():
    a = torch.randn(4096, 4096, device=GPU)
    seconds = measure.seconds(lambda: a @ a, repeats=3)
    # 2 x 4096^3 flops: even 1,000 TFLOP/s takes 0.1 ms; a launch alone returns in microseconds
    assert seconds > 2 * 4096**3 / 1e15


def test_peak_memory_on_the_gpu_sees_a_temporary_tensor():
    mb = measure.peak_memory_mb(lambda: torch.empty(100 * 2**20, dtype=torch.uint8, device=GPU),
                                GPU)
    assert 100 <= mb < 101, mb  # the allocator's peak: exact, rounded up to its 2 MB blocks


def test_mnist_models_train_and_measure_on_the_gpu():
    X, Y = torch.randn(64, 1, 28, 28, device=GPU), torch.randint(0, 10, (64,), device=GPU)
    for name in mnist.NAMES:
        torch.manual_seed(0)
        r = mnist.train(mnist.build_model(name).to(GPU), X, Y, iters=3, lr=1e-3, batch=16)
        assert len(r["losses"]) == 3
    adj = [mnist.step_memory_mb("ODE-Net", 8, dict(method="euler", h_max=1 / n), GPU)
           for n in (2, 20)]
    rk = [mnist.step_memory_mb("RK-Net", 8, dict(method="euler", h_max=1 / n), GPU)
          for n in (2, 20)]
    state_mb = 8 * 64 * 6 * 6 * 4 / 2**20  # the block's state, float32
    assert adj[1] - adj[0] < 4 * state_mb and rk[1] - rk[0] > 18 * 2 * state_mb, (adj, rk)


def test_spiral_models_train_on_the_gpu_in_turn():
    train, _ = S.make_paper_spirals(S.PaperSpiralConfig(n_windows=40, n_test=10, n_total=120,
                                                        window=30, horizon=20, seed=5))
    cfg = S.TrainConfig(iters=2, batch_size=8, window=30, n_obs=(5,))
    tiny = S.ModelConfig(rnn_hidden=8, latent_dim=3, ode_hidden=8, dec_hidden=8)
    jobs = [(kind, tiny, train, cfg, 0, GPU) for kind in ("Latent ODE", "RNN")]
    for model, hist in workers.run(S.train_job, jobs):  # on a GPU: in this process
        assert next(model.parameters()).is_cuda and len(hist["loss"]) == 2
