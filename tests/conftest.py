import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: with other processes on the cores, OpenMP barriers between two threads
    cost more than the work (measured 70x slower for 128-px tiles), so use one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
