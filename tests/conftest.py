import pytest
import torch

try:
    from hypothesis import HealthCheck, settings
except ImportError:  # the fuzz tests skip themselves without hypothesis
    pass
else:
    # The default suite stays fast: a bounded number of examples per property. The fuzz
    # tests' slow-marked twins (pytest -m slow) run the "fuzz-long" profile.
    common = dict(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    settings.register_profile("pixelwise", max_examples=40, **common)
    settings.register_profile("fuzz-long", max_examples=1000, **common)
    settings.load_profile("pixelwise")


@pytest.fixture(scope="module")
def one_thread():
    """Tiny tensors: with other processes on the cores, OpenMP barriers between two threads
    cost more than the work (measured 70x slower for 128-px tiles), so use one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
