import pytest
import torch


@pytest.fixture
def one_torch_thread():
    """Run a test on one intra-op thread: these tensors are tiny, and on a busy machine torch's
    thread pool spends far longer waiting for cores than computing (40x slower on 2 cores)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
