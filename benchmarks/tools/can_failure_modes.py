"""Classify PickPlaceCan episodes of a checkpoint by how they end: kept so the commands recorded in
``benchmarks/results/can_state/`` (``failure_modes.json`` files) run as written; the tool is
``robosuite_failure_modes.py --task can`` (labels documented there).

    MUJOCO_GL=egl python benchmarks/tools/can_failure_modes.py CHECKPOINT SEED [SEED ...] \
        [--sampler ddim --num-inference-steps 10] [--out modes.json]
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robosuite_failure_modes import main  # noqa: E402

if __name__ == "__main__":
    main(task="can")
