"""The command line a CLI run was started with, for the records it writes."""

from __future__ import annotations

import shlex
import sys

__all__ = ["command_line"]


def command_line(module: str, argv: list[str] | None = None) -> str:
    """``python -m <module> <args>`` with shell quoting, so the line can be pasted to repeat the run;
    ``argv`` defaults to this process's arguments.

    Example:
        >>> command_line("dp_gym.benchmark", ["--task", "pusht_keypoints", "--out-dir", "my results"])
        "python -m dp_gym.benchmark --task pusht_keypoints --out-dir 'my results'"
    """
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in args)])
