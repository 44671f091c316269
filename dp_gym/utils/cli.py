"""Command lines generated from config dataclasses, and one way for every CLI to fail.

Each field of a config dataclass is a flag ``--field-name`` with the field's type, default, help
line and choices, declared once with :func:`option`::

    @dataclass
    class Config:
        steps: int = option(1000, "training steps")
        device: str = option("cpu", "torch device", choices=("cpu", "cuda"))
        policies: list[str] = option([], "NAME=CHECKPOINT (repeatable)", flag="--policy")

    parser = build_parser(Config, description="...")
    cfg = parse_config(Config, ["--steps", "10"])

``bool`` fields are switches (``--resume``; ``--no-x`` for fields that default to true),
``list[X]`` fields repeat the flag, ``dict`` fields take JSON. :func:`run_cli` runs a ``main``
and turns any error into one line on stderr and exit status 1 (2 for a bad command line);
``--debug`` shows the traceback instead.

Example:
    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Demo:
    ...     steps: int = option(10, "training steps")
    ...     mode: str = option("a", "the mode", choices=("a", "b"))
    >>> parse_config(Demo, ["--steps", "3", "--mode", "b"])
    Demo(steps=3, mode='b')
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import re
import shlex
import sys
import types
import typing
from typing import Any, Callable, Sequence, TypeVar, Union

__all__ = ["command_line", "option", "build_parser", "parse_config", "run_cli", "CLIError"]

T = TypeVar("T")
_NO_DEFAULT = dataclasses.MISSING


class CLIError(Exception):
    """A user mistake that :func:`run_cli` reports as one line (no traceback, even without
    ``--debug`` being relevant)."""


def command_line(module: str, argv: list[str] | None = None) -> str:
    """``python -m <module> <args>`` with shell quoting, so the line can be pasted to repeat the run;
    ``argv`` defaults to this process's arguments.

    Example:
        >>> command_line("dp_gym.benchmark", ["--task", "pusht_keypoints", "--out-dir", "my results"])
        "python -m dp_gym.benchmark --task pusht_keypoints --out-dir 'my results'"
    """
    args = sys.argv[1:] if argv is None else argv
    return " ".join(["python", "-m", module, *(shlex.quote(a) for a in args)])


def option(default: Any = _NO_DEFAULT, help: str = "", *, choices: Sequence[Any] | Callable[[], Sequence[Any]] | None = None,
           flag: str | None = None,
           invert: str | None = None, positional: bool = False, metavar: str | None = None) -> Any:
    """A dataclass field that is also a command-line flag.

    ``default``: the default (lists and dicts are copied per instance; omitted: required).
    ``help``: the help line. ``choices``: the accepted values, or a function returning them when
    the parser is built (for registries that grow at run time). ``flag``: the flag's name when it is
    not ``--field-name`` (e.g. ``--policy`` for a list field ``policies``). ``invert``: for a bool
    field that defaults to true, a switch of this name that sets it false (``--stochastic`` for
    ``deterministic``). ``positional``: an argument without a flag."""
    if not help:
        raise ValueError("every option needs a help line")
    metadata = {"help": help, "choices": choices, "flag": flag,
                "invert": invert, "positional": positional, "metavar": metavar}
    if isinstance(default, (list, dict)):
        value = default
        return dataclasses.field(default_factory=lambda: json.loads(json.dumps(value)), metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


class _OneLineParser(argparse.ArgumentParser):
    """Reports a bad command line in one line (not usage + message)."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    if typing.get_origin(tp) in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1:
            return args[0], True
    return tp, False


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"not valid JSON ({e}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"expected a JSON object like '{{\"key\": 1}}', got {text!r}")
    return value


def _scalar(tp: Any) -> Callable[[str], Any]:
    if tp in (int, float, str):
        return tp
    raise TypeError(f"no command-line parser for type {tp!r}")


def _default_text(value: Any) -> str:
    if value is None:
        return "unset"
    if isinstance(value, (list, dict)):
        return json.dumps(value) if value else "unset"
    return str(value)


def build_parser(cls: type, description: str | None = None, prog: str | None = None,
                 parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per field of dataclass ``cls`` (fields declared with
    :func:`option`; others are left out), plus ``--debug``."""
    p = parser or _OneLineParser(prog=prog, description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if "help" not in meta:
            continue
        tp, optional = _unwrap_optional(hints[f.name])
        default = f.default_factory() if f.default_factory is not _NO_DEFAULT else f.default  # type: ignore[misc]
        required = default is _NO_DEFAULT
        help_text = meta["help"] + ("" if required else f" (default: {_default_text(default)})")
        kw: dict[str, Any] = {"help": help_text, "dest": f.name}
        if meta["choices"] is not None:
            kw["choices"] = list(meta["choices"]() if callable(meta["choices"]) else meta["choices"])
        if meta["metavar"]:
            kw["metavar"] = meta["metavar"]
        names = [meta["flag"] or "--" + f.name.replace("_", "-")]
        if tp is bool:
            if meta["invert"]:
                p.add_argument(meta["invert"], action="store_false", dest=f.name, default=default, help=f"turn off: {meta['help']}")
            elif default:
                p.add_argument(*names, action=argparse.BooleanOptionalAction, default=default, help=meta["help"])
            else:
                p.add_argument(*names, action="store_true", default=False, help=meta["help"])
            continue
        origin = typing.get_origin(tp)
        if origin is list:
            (item,) = typing.get_args(tp)
            kw.update(action="append", type=_scalar(item), default=None)
        elif tp is dict or origin is dict:
            kw.update(type=_json_object, default=default, metavar=meta["metavar"] or "JSON")
        else:
            kw.update(type=_scalar(tp), default=None if required else default)
            if tp in (int, float) and "metavar" not in kw and "choices" not in kw:
                kw["metavar"] = "N" if tp is int else "X"
        if meta["positional"]:
            kw.pop("dest")
            p.add_argument(f.name, **kw)
        else:
            p.add_argument(*names, required=required, **kw)
    p.add_argument("--debug", action="store_true", help="show the full traceback when something fails")
    return p


def config_from_namespace(cls: type[T], ns: argparse.Namespace) -> T:
    """Build ``cls`` from a namespace :func:`build_parser` parsed (unset repeatable flags get the
    field's default; names that are not fields are ignored)."""
    values = {}
    for f in dataclasses.fields(cls):  # type: ignore[arg-type]
        if not hasattr(ns, f.name):
            continue
        value = getattr(ns, f.name)
        if value is None and f.default_factory is not _NO_DEFAULT:  # an append flag never given
            value = f.default_factory()
        values[f.name] = value
    return cls(**values)


def parse_config(cls: type[T], argv: list[str] | None = None, description: str | None = None,
                 prog: str | None = None) -> T:
    """Parse ``argv`` into a ``cls`` instance (the config's ``__post_init__`` validates it)."""
    return config_from_namespace(cls, build_parser(cls, description, prog).parse_args(argv))


def run_cli(main: Callable[[list[str]], int | None], argv: list[str] | None = None) -> int:
    """Run ``main(argv)``; return its exit status. Any exception becomes ``error: <message>``, one
    line on stderr, and status 1 (a bad command line: argparse's status 2); ``--debug`` in
    ``argv`` lets the exception through with its traceback. Ctrl-C gives status 130."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        return int(main(argv) or 0)
    except SystemExit as e:  # argparse after --help (0) or a bad command line (2, its one line printed)
        return e.code if isinstance(e.code, int) else 1
    except KeyboardInterrupt:
        if debug:
            raise
        print("interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args and isinstance(e.args[0], str) else str(e)
        if not message:
            message = type(e).__name__
        elif not isinstance(e, (CLIError, ValueError, FileNotFoundError, KeyError, RuntimeError, TypeError)):
            message = f"{type(e).__name__}: {message}"
        print(f"error: {' '.join(message.split())} (--debug shows the traceback)", file=sys.stderr)
        return 1


# --- the README's flag tables -----------------------------------------------------------------

def cli_parsers() -> dict[str, argparse.ArgumentParser]:
    """The parser of every ``python -m`` command of dp_gym built with :func:`build_parser`."""
    from dp_gym import benchmark, collect, perf, train
    from dp_gym.data import robomimic

    return {"dp_gym.train": build_parser(train.TrainConfig), "dp_gym.benchmark": benchmark.build_parser(),
            "dp_gym.collect": build_parser(collect.CollectConfig), "dp_gym.perf": build_parser(perf.PerfConfig),
            "dp_gym.data.robomimic": build_parser(robomimic.ReplayConfig)}


def flags_markdown(parser: argparse.ArgumentParser) -> str:
    """A markdown table of ``parser``'s arguments: flag (with choices), help line (with default)."""
    rows = ["| flag | meaning |", "|---|---|"]
    for a in parser._actions:
        if isinstance(a, argparse._HelpAction):
            continue
        name = ", ".join(a.option_strings) or a.dest.upper()
        if a.choices:
            name += " " + "{" + ",".join(map(str, a.choices)) + "}"
        elif a.nargs != 0 and a.option_strings:
            name += f" {a.metavar or a.dest.upper()}"
        meaning = (a.help or "").replace("|", "/").replace("<", "&lt;").replace(">", "&gt;")
        rows.append(f"| `{name}` | {meaning} |")
    return "\n".join(rows)


def render_flag_tables(text: str) -> str:
    """``text`` with each ``<!-- flags:MODULE -->`` ... ``<!-- /flags -->`` block refilled with
    MODULE's flag table."""
    parsers = cli_parsers()

    def fill(m: re.Match) -> str:
        module = m.group(1)
        if module not in parsers:
            raise KeyError(f"no dp_gym command {module!r}; known: {sorted(parsers)}")
        return f"<!-- flags:{module} -->\n{flags_markdown(parsers[module])}\n<!-- /flags -->"

    return re.sub(r"<!-- flags:([\w.]+) -->.*?<!-- /flags -->", fill, text, flags=re.S)


if __name__ == "__main__":  # python -m dp_gym.utils.cli README.md: refresh the README's flag tables
    import pathlib

    for name in sys.argv[1:]:
        path = pathlib.Path(name)
        path.write_text(render_flag_tables(path.read_text()))
