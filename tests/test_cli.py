"""Command lines: every flag of every dp_gym CLI has a help line (with its default and choices),
the committed suites' flags still parse, and every user mistake ends in one line on stderr and a
non-zero exit, without a traceback (unless --debug) and without leaving an output folder."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import pytest
import torch

from dp_gym import benchmark, collect, perf, train
from dp_gym.data import robomimic
from dp_gym.utils.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PARSERS = {
    "dp_gym.train": lambda: build_parser(train.TrainConfig),
    "dp_gym.benchmark": benchmark.build_parser,
    "dp_gym.collect": lambda: build_parser(collect.CollectConfig),
    "dp_gym.perf": lambda: build_parser(perf.PerfConfig),
    "dp_gym.data.robomimic": lambda: build_parser(robomimic.ReplayConfig),
}


def _flags(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings}


@pytest.mark.parametrize("module", sorted(PARSERS))
def test_every_flag_has_a_help_line_with_its_default(module):
    parser = PARSERS[module]()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        name = action.option_strings[0] if action.option_strings else action.dest
        assert action.help and len(action.help) > 10, f"{module} {name} has no help line"
        takes_value = action.nargs != 0
        if takes_value and action.option_strings and not action.required and action.dest not in ("suite",):
            assert "(default: " in action.help, f"{module} {name}: help does not show the default"


def test_the_choices_live_in_the_parser_not_in_comments():
    parser = PARSERS["dp_gym.train"]()
    choices = {a.option_strings[0]: a.choices for a in parser._actions if a.option_strings}
    assert choices["--policy"] == ["diffusion", "bc", "ibc"]
    assert choices["--model-size"] == ["small", "medium", "paper"]
    assert choices["--denoiser"] == ["unet", "transformer"]
    assert "pusht_keypoints" in choices["--task"] and "kitchen_complete" in choices["--task"]
    help_text = parser.format_help()
    assert "{diffusion,bc,ibc}" in help_text and "(default: 50000)" in help_text


def _suite_commands() -> list[tuple[str | None, list[str]]]:
    """(module or None, flags) per command of the committed benchmark suites (continuation lines
    joined); None for variable definitions such as BASE="--task ... --steps ..."."""
    out = []
    for script in sorted((ROOT / "benchmarks" / "suites").glob("*.sh")):
        text = re.sub(r"\\\n\s*", " ", script.read_text())
        for line in text.splitlines():
            line = line.split("#")[0]
            flags = re.findall(r"(?<![\w/-])(--[a-z][a-z0-9-]+)", line)
            if not flags:
                continue
            m = re.search(r"-m (dp_gym(?:\.[a-z_]+)+)", line)
            if m is None and re.search(r"\bpython3? \S+\.py\b", line):
                continue  # a script of its own (benchmarks/*.py), not a dp_gym CLI
            out.append((m.group(1) if m else None, flags))
    return out


def test_the_committed_suites_flags_still_parse():
    commands = _suite_commands()
    assert sum(module == "dp_gym.train" for module, _ in commands) >= 3
    every_flag = set().union(*(_flags(p()) for p in PARSERS.values()))
    for module, flags in commands:
        known = _flags(PARSERS[module]()) if module in PARSERS else every_flag
        unknown = [f for f in flags if f not in known]
        assert not unknown, f"{module or 'a variable'} uses unknown flags {unknown}"


def _one_line_error(capsys, rc: int, expected_rc: int, pattern: str) -> str:
    err = capsys.readouterr().err.strip()
    assert rc == expected_rc, err
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert re.search(pattern, err), err
    return err


@pytest.mark.parametrize("argv, rc, pattern", [
    (["--task", "no_such_task"], 2, r"invalid choice: 'no_such_task'"),
    (["--checkpoint-every", "0"], 1, r"checkpoint_every must be >= 1, got 0"),
    (["--log-every", "-5"], 1, r"log_every must be >= 1"),
    (["--steps", "ten"], 2, r"--steps: invalid int value: 'ten'"),
    (["--policy-overrides", "[1, 2]"], 2, r"expected a JSON object"),
    (["--model-size", "huge"], 2, r"invalid choice: 'huge'"),
])
def test_train_mistakes_end_in_one_line(tmp_path, capsys, argv, rc, pattern):
    out = tmp_path / "run"
    _one_line_error(capsys, train.main(argv + ["--out-dir", str(out)]), rc, pattern)
    assert not out.exists()


def test_train_missing_data_and_cuda_end_in_one_line_without_an_output_folder(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("DP_GYM_DATA_DIR", raising=False)
    out = tmp_path / "run"
    rc = train.main(["--task", "pusht_keypoints", "--data-dir", str(tmp_path / "empty"), "--out-dir", str(out)])
    _one_line_error(capsys, rc, 1, r"^error: dataset 'pusht/pusht_cchi_v7_replay.zarr' not found")
    assert not out.exists()
    if not torch.cuda.is_available():
        rc = train.main(["--device", "cuda", "--out-dir", str(out)])
        _one_line_error(capsys, rc, 1, r"--device cuda requested but CUDA is not available")
    with pytest.raises(Exception, match="not found"):  # --debug: the exception itself, with its traceback
        train.main(["--data-dir", str(tmp_path / "empty"), "--out-dir", str(out), "--debug"])


@pytest.mark.parametrize("argv, pattern", [
    (["--seeds", "100010:100000"], r"select no episode"),
    (["--seeds", "a:b"], r"seeds must be 'start:stop'"),
    (["--n-envs", "0"], r"n_envs must be >= 1, got 0"),
    (["--num-inference-steps", "-1"], r"num_inference_steps must be >= 1"),
    (["--noise-scale", "nan"], r"noise_scale must be a finite number"),
    ([], r"checkpoint not found: .*nowhere"),
    pytest.param(["--device", "cuda"], r"--device cuda requested but CUDA is not available",
                 marks=pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")),
])
def test_benchmark_mistakes_end_in_one_line(tmp_path, capsys, argv, pattern):
    out = tmp_path / "res"
    rc = benchmark.main(["--policy", f"x={tmp_path / 'nowhere'}", "--out-dir", str(out), *argv])
    _one_line_error(capsys, rc, 1, pattern)
    assert not out.exists()


def test_benchmark_unknown_zoo_entry_ends_in_one_line(tmp_path, capsys):
    out = tmp_path / "res"
    rc = benchmark.main(["--policy", "x=zoo:pusht_keypoints/no_such_policy", "--out-dir", str(out)])
    _one_line_error(capsys, rc, 1, r"no zoo entry 'pusht_keypoints/no_such_policy' .*available: ")
    assert not out.exists()


def test_other_clis_refuse_bad_values_in_one_line(tmp_path, capsys):
    _one_line_error(capsys, collect.main(["--task", "lift", "--episodes", "0"]), 1, r"--episodes must be >= 1")
    _one_line_error(capsys, collect.main(["--task", "can", "--episodes", "1", "--drop-prob", "2"]), 1, r"--drop-prob must be in \[0, 1\]")
    _one_line_error(capsys, perf.main(["--repeats", "0", "--out-dir", str(tmp_path / "p")]), 1, r"repeats must be >= 1")
    _one_line_error(capsys, robomimic.main([str(tmp_path / "missing.hdf5"), str(tmp_path / "out.hdf5")]), 1,
                    r"robomimic file not found")
    assert not (tmp_path / "p").exists() and not (tmp_path / "out.hdf5").exists()


def test_the_readme_documents_every_flag_of_every_command():
    from dp_gym.utils.cli import cli_parsers, render_flag_tables

    readme = (ROOT / "README.md").read_text()
    assert render_flag_tables(readme) == readme, "README flag tables are stale: run python -m dp_gym.utils.cli README.md"
    for module, parser in cli_parsers().items():
        assert f"<!-- flags:{module} -->" in readme
        for flag in _flags(parser) - {"-h", "--help"}:
            assert f"`{flag}" in readme, f"{module} {flag} is not documented"
