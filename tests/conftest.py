import os

import pytest
import torch

torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def one_thread():
    """One torch thread for the test: the models are tiny, and on a busy machine a
    second thread only waits (and forking is safe only from one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def small():
    """The post's spirals, small (`problems.SMALL`): train and held-out parts."""
    import spirals as S
    from problems import SMALL

    return S.make_spirals(SMALL)


@pytest.fixture(scope="session")
def paper_small():
    """The paper's spirals, small (`problems.PAPER_SMALL`): train and held-out parts."""
    import spirals as S
    from problems import PAPER_SMALL

    return S.make_paper_spirals(PAPER_SMALL)
