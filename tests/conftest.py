"""Shared pytest fixtures.

``data_dir``: the folder holding the real datasets, from ``$DP_GYM_DATA_DIR``. Tests that need it
are skipped when it is unset or missing, unless ``DP_GYM_REQUIRE_DATA=1`` (then they fail, so a CI
job that is meant to exercise the real data cannot silently skip it).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Tests use tiny models: one intra-op thread is as fast and avoids oversubscribing small CI machines.
torch.set_num_threads(int(os.environ.get("DP_GYM_TEST_THREADS", "1")))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    require = os.environ.get("DP_GYM_REQUIRE_DATA") == "1"
    raw = os.environ.get("DP_GYM_DATA_DIR")
    if not raw:
        msg = "DP_GYM_DATA_DIR is not set; it must point at the folder holding pusht/pusht_cchi_v7_replay.zarr"
        if require:
            pytest.fail(f"{msg} (DP_GYM_REQUIRE_DATA=1 forbids skipping)")
        pytest.skip(msg)
    path = Path(raw).expanduser()
    if not path.is_dir():
        msg = f"DP_GYM_DATA_DIR={raw!r} does not exist or is not a directory"
        if require:
            pytest.fail(f"{msg} (DP_GYM_REQUIRE_DATA=1 forbids skipping)")
        pytest.skip(msg)
    return path


@pytest.fixture(autouse=True, scope="session")
def _model_cache(tmp_path_factory) -> None:
    """Exported sampling models go to a fresh folder, so no test depends on (or fills) the user's
    cache."""
    mp = pytest.MonkeyPatch()
    mp.setenv("DP_GYM_CACHE_DIR", str(tmp_path_factory.mktemp("dp_gym_cache")))
    yield
    mp.undo()


@pytest.fixture(autouse=True)
def _seed_torch() -> None:
    torch.manual_seed(0)
