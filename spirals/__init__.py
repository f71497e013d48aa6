"""spirals: two spiral datasets, the latent ODE, a fair RNN, training and the paper's protocol.

Shared by notebooks 03 (train and measure) and 04 (walk the latent space), and
built on `odecore`. One module a concern, in the order a reader meets them:

1. `data`: the paper's spirals, as its authors' example generates them
   (`PaperSpiralConfig`), and the post's random linear spirals (`SpiralConfig`),
   both split into training and held-out windows and cached (`load_spirals`);
2. `batches`: windows with k of their first 100 points observed, irregularly
   (`observe`, `sample_batch`), and the positions the protocol scores;
3. `models`: the latent ODE (`RNNEncoder`, `LatentODEF`, `ODEVAE`) and its ELBO,
   and the RNN baseline (`RNNBaseline`): the same encoder, a GRU instead of
   the ODE; both follow `SequenceModel`, the interface the rest relies on;
4. `training`: the same for both models (`train_model`), per budget
   (`train_config`); several models train at once through `workers`;
5. `evaluation`: the paper's protocol, interpolation and extrapolation RMSE
   (`evaluate`), its references and diagnostics;
6. `figures`: the latent space and held-out windows, drawn;
7. `checkpoints` under `data/checkpoints/`.

`import spirals as S` gives every public name of the seven. Shapes follow the
post: time first, `x` is `(T, batch, 2)` and `t` is `(T, batch, 1)`, one time
grid per sample.
"""

from . import batches, checkpoints, data, evaluation, figures, models, training
from .batches import *  # noqa: F403
from .checkpoints import *  # noqa: F403
from .data import *  # noqa: F403
from .evaluation import *  # noqa: F403
from .figures import *  # noqa: F403
from .models import *  # noqa: F403
from .training import *  # noqa: F403

__all__ = [name for module in (data, batches, models, training, evaluation, figures, checkpoints)
           for name in module.__all__]
