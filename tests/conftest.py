import os

import pytest
import torch
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci",
    derandomize=True,
    deadline=None,
    max_examples=30,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("dev", deadline=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

# the tests use small tensors, where thread hand-offs cost more than they save (and CI has 2 cores)
torch.set_num_threads(1)


@pytest.fixture
def linear():
    from diffode import Schedule

    return Schedule.linear()
