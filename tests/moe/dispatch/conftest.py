"""One world of 4 gloo processes (2 fake nodes x 2 ranks) shared by the world-4 tests of this package."""

import pytest

from tests.distributed import run_ranks
from tests.moe.dispatch.training_ranks import COMMON, LAYOUTS, RECOMPUTE_FLAGS, RUNS, world_of_four


@pytest.fixture(scope="session")
def world_of_four_report():
    """Rank-by-rank reports of ``training_ranks.world_of_four``."""
    flag_sets = [COMMON + LAYOUTS[layout] + ["--moe-token-dispatcher-type", d, *extra] for layout, d, extra in RUNS]
    return run_ranks(world_of_four, 4, flag_sets, COMMON + LAYOUTS["ep4"], RECOMPUTE_FLAGS)
