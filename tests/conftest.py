"""Test-wide fixtures: megatron-core initialised in this process as a world of one (gloo)."""

import pytest

from megatron_evomoe import initialize


@pytest.fixture(scope="session")
def megatron_world_of_one():
    """torch.distributed + megatron parallel_state with TP=PP=EP=1 in the pytest process.

    Tests needing other layouts spawn processes with tests.distributed.run_ranks instead.
    """
    initialize.initialize(initialize.ParallelLayout(), seed=1234)
    yield
    initialize.shutdown()
