"""The README's test command is the one CI runs: CI's entry point calls ``.ci/test`` and the README
tells people to run that same script."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _code_lines(markdown: str) -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)```", markdown, flags=re.S)
    return [line.split("#")[0].strip() for b in blocks for line in b.splitlines() if line.split("#")[0].strip()]


def test_readme_test_command_is_what_ci_runs():
    run = (ROOT / ".ci" / "run").read_text()
    test = (ROOT / ".ci" / "test").read_text()
    # CI installs, then runs exactly .ci/test; .ci/test is the only place pytest is invoked
    assert [line for line in run.splitlines() if "pytest" in line and not line.lstrip().startswith("#")] == []
    assert run.rstrip().splitlines()[-1].strip() == "bash .ci/test"
    assert re.search(r"^python -m pytest -q \"\$@\"$", test, flags=re.M)
    for var in ("DP_GYM_DATA_DIR", "DP_GYM_REQUIRE_DATA=1", "SDL_VIDEODRIVER=dummy", "MUJOCO_GL=egl"):
        assert var in test
    readme = (ROOT / "README.md").read_text()
    commands = _code_lines(readme)
    assert "bash .ci/test" in commands
    assert not any("pytest" in c for c in commands), "the README gives .ci/test, not its own pytest line"
    assert not (ROOT / "tox.ini").exists() and "tox" not in readme.split()


def test_ci_test_script_passes_arguments_to_pytest(tmp_path):
    # --collect-only on one small file: the script runs, takes pytest's arguments and exits 0
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    out = subprocess.run(["bash", str(ROOT / ".ci" / "test"), "--collect-only", "-q", "tests/test_ci.py"],
                         capture_output=True, text=True, timeout=120, env=env)
    assert out.returncode == 0, out.stderr
    assert "tests/test_ci.py: 2" in out.stdout  # -q twice (the script's and ours): counts per file
