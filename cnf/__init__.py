"""cnf: continuous normalizing flows (the paper's Section 4), built on odecore.

One module a concern, in the order notebook 05 meets them:

1. `targets`: the energy functions of Rezende & Mohamed (2015), two 2-D data
   sets, the density grid and the standard normal base density;
2. `flows`: the discrete baseline `PlanarFlow` (K planar layers with their
   log-determinants); the fields f(z, t), the paper's `PlanarField` (M gated
   planar units whose parameters a hypernetwork computes from t) and
   `MLPField` (a plain MLP, for the cost-against-D measurement); `CNFODEF`,
   the augmented dynamics d[z, log p]/dt = [f, -tr(df/dz)] with the trace
   exact (D autograd passes) or Hutchinson's estimate (one pass); and `CNF`:
   log-densities by integrating data back to noise, samples by integrating
   noise forward, both through `odecore.NeuralODE` (the adjoint by default);
3. `training`: the training loops, evaluation, and one fit per job for
   `workers.run` (the notebook's experiments), with each budget's settings;
4. `regularised`: the CNF trained with its kinetic energy and Jacobian norm
   (Finlay et al. 2020), for notebook 07.

The state is one tensor `(batch, D + 1)`: z in the first D columns, log p in
the last. Second derivatives (the trace's gradient) reach the parameters
through `ODEAdjoint` because `CNFODEF.forward` builds the trace with
`create_graph` whenever the caller records a graph, as
`ODEF.forward_with_grad` does in the adjoint's backward pass.

`import cnf` gives every public name of the four.
"""

from . import flows, regularised, targets, training
from .flows import *  # noqa: F403
from .regularised import *  # noqa: F403
from .targets import *  # noqa: F403
from .training import *  # noqa: F403

__all__ = [name for module in (targets, flows, training, regularised)
           for name in module.__all__]
