"""``python -m dp_gym``: list the command-line entry points (every other module is library code)."""

from __future__ import annotations

# module → what it does; each runs as ``python -m <module>`` and takes ``--help``
COMMANDS = {
    "dp_gym.train": "train a policy on a task",
    "dp_gym.benchmark": "evaluate checkpoints or zoo entries on seeded episodes (--suite NAME for a suite)",
    "dp_gym.suite": "render a suite's results table into the README",
    "dp_gym.zoo": "list, export and verify the model-zoo entries",
    "dp_gym.collect": "generate robosuite demonstrations with the scripted experts",
    "dp_gym.perf": "measure predict latency, training throughput and env speed",
    "dp_gym.data.robomimic": "regenerate a robomimic file's observations (camera images too) from its simulator states",
    "dp_gym.utils.cli": "refresh the README's flag tables",
}


def main() -> int:
    width = max(map(len, COMMANDS))
    print("dp_gym commands (python -m MODULE --help for the flags):\n")
    for module, what in COMMANDS.items():
        print(f"  python -m {module:<{width}}  {what}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
