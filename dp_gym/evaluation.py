"""Score an agent on a task over seeded episodes: the evaluation behind ``python -m
dp_gym.benchmark`` and the trainer's periodic evaluation.

:func:`evaluate_agent` runs one episode per seed on a vector env (:func:`run_seeds`, which drives
:func:`dp_gym.episodes.rollout` and rebuilds the env if it crashes) and returns the metrics: mean
max-reward (Push-T: the coverage score), success rate with a 95% Wilson interval, mean episode
length, ``p1..pK`` for tasks with a count metric, and predict latencies. :func:`evaluate_policy`
is the trainer's entry point (a policy being trained, no videos, no latency measurement).

Example:
    >>> from dp_gym import PolicyAgent
    >>> from dp_gym.tasks import get_task
    >>> agent = PolicyAgent.from_pretrained("zoo:pusht_keypoints/diffusion")
    >>> res = evaluate_agent(agent, get_task("pusht_keypoints"), seeds=[100000, 100001], n_envs=2, latency_repeats=0)
    >>> len(res["per_episode"]["success"]), 0.0 <= res["mean_max_reward"] <= 1.0
    (2, True)
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any, Callable

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

from dp_gym.agent import PolicyAgent
from dp_gym.episodes import Episode, FrameRecorder, RolloutCallback, Step, rollout
from dp_gym.tasks import Task
from dp_gym.wrappers.video import write_video

__all__ = ["EnvCrash", "evaluate_agent", "evaluate_policy", "make_vector_env", "measure_latency", "median_ms",
           "p_k_metrics", "run_seeds", "timed_s", "wilson_interval"]


# --- metrics ------------------------------------------------------------------------------------

def wilson_interval(successes: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95% Wilson score interval for a binomial proportion (well-behaved at 0 and 1)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At p = 0 and p = 1 the bound is exactly 0 / 1; floating point lands a hair inside.
    lo = 0.0 if successes == 0 else min(p, max(0.0, centre - half))
    hi = 1.0 if successes == n else max(p, min(1.0, centre + half))
    return (lo, hi)


def p_k_metrics(counts: "np.ndarray | list[int]", k_max: int) -> dict[str, float]:
    """Multi-task metrics from per-episode counts (e.g. completed kitchen tasks): ``p1..p{k_max}``
    = fraction of episodes with at least k, and ``mean_completed`` = the mean count.

    Example:
        >>> p_k_metrics([0, 1, 4, 2], k_max=4)
        {'p1': 0.75, 'p2': 0.5, 'p3': 0.25, 'p4': 0.25, 'mean_completed': 1.75}
    """
    c = np.asarray(counts)
    if c.ndim != 1 or len(c) == 0:
        raise ValueError(f"counts must be a non-empty 1-D sequence of per-episode counts, got shape {c.shape}")
    if k_max < 1:
        raise ValueError(f"k_max must be >= 1, got {k_max}")
    if np.any(c < 0) or np.any(c != np.round(c)):
        raise ValueError(f"counts must be non-negative integers, got {c.tolist()}")
    out = {f"p{k}": float(np.mean(c >= k)) for k in range(1, k_max + 1)}
    out["mean_completed"] = float(c.mean())
    return out


def timed_s(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall time (s) of one call of ``fn``, synchronising CUDA around it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    t0 = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - t0


def median_ms(fn: Callable[[], Any], device: torch.device, repeats: int, warmup: int) -> float:
    """Median wall time (ms) of ``fn`` after ``warmup`` calls, synchronising CUDA around each call."""
    times = [timed_s(fn, device) for _ in range(warmup + repeats)][warmup:]
    return 1000 * float(np.median(times))


def measure_latency(agent: PolicyAgent, task: Task, repeats: int = 20, warmup: int = 3) -> float:
    """Median wall time (ms) of sampling one chunk for one env (batch 1), after warm-up."""
    env = task.make_env()
    obs, _ = env.reset(seed=0)
    env.close()
    ms = median_ms(lambda: agent.predict(obs, episode_start=np.array([True]), deterministic=True), agent.device, repeats, warmup)
    agent.reset()
    return ms


# --- vector envs that may crash -------------------------------------------------------------------

def make_vector_env(task: Task, n_envs: int, mode: str, render: bool) -> gym.vector.VectorEnv:
    """``n_envs`` envs of ``task`` in a ``"sync"`` or ``"async"`` vector env with autoreset
    disabled (the evaluation resets each env with its next episode's seed)."""
    kw = {"render_mode": "rgb_array"} if render else {}
    fns = [lambda: task.make_env(**kw) for _ in range(n_envs)]
    vec_kw = {"autoreset_mode": gym.vector.AutoresetMode.DISABLED}
    if mode == "async":
        return gym.vector.AsyncVectorEnv(fns, context="spawn", **vec_kw)
    if mode == "sync":
        return gym.vector.SyncVectorEnv(fns, **vec_kw)
    raise ValueError(f"vector must be 'sync' or 'async', got {mode!r}")


class EnvCrash(RuntimeError):
    """An exception raised by the vector env itself (a dead async worker's ``EOFError``, a
    simulator error), as opposed to one from the agent."""


def _env_call(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        raise EnvCrash(f"{type(e).__name__}: {e}") from e


class _CrashAsEnvCrash(gym.vector.VectorWrapper):
    """Re-raise the exceptions of the vector env's ``reset``, ``step`` and ``call`` as :class:`EnvCrash`."""

    def reset(self, **kwargs: Any) -> Any:
        return _env_call(self.env.reset, **kwargs)

    def step(self, actions: Any) -> Any:
        return _env_call(self.env.step, actions)

    def call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        return _env_call(self.env.call, name, *args, **kwargs)


def _close_quietly(env: gym.vector.VectorEnv) -> None:
    try:
        env.close(terminate=True) if isinstance(env, gym.vector.AsyncVectorEnv) else env.close()
    except Exception:  # a crashed env may fail to close; its workers are gone or terminated
        pass


# --- rollouts ------------------------------------------------------------------------------------

class EpisodeRecords(RolloutCallback):
    """Per-episode record of the benchmark, built step by step: ``seed``, ``max_reward`` (largest
    reward, at least 0), ``success`` (``info["is_success"]`` at any step), ``length`` and, for tasks
    with a count metric, ``count`` (largest ``info[task.count_info_key]``). ``finish(index, record)``
    receives each finished episode's record (``index``: ``Episode.index``)."""

    def __init__(self, task: Task, finish: Callable[[int, dict], None]) -> None:
        super().__init__()
        self.task, self.finish = task, finish
        self._records: dict[int, dict] = {}  # env index -> record of its running episode

    def on_episode_start(self, episode: Episode) -> None:
        rec: dict[str, Any] = {"seed": episode.seed, "max_reward": 0.0, "success": False, "length": 0}
        if self.task.count_info_key:
            rec["count"] = 0
        self._records[episode.env_index] = rec

    def on_step(self, episode: Episode, step: Step) -> None:
        rec, key = self._records[episode.env_index], self.task.count_info_key
        rec["max_reward"] = max(rec["max_reward"], step.reward)
        rec["length"] += 1
        if "is_success" not in step.info:
            raise KeyError(f"task {self.task.name!r} scores info['is_success'] but the env's info has keys {sorted(step.info)}")
        if bool(step.info["is_success"]):
            rec["success"] = True
        if key:
            if key not in step.info:
                raise KeyError(f"task {self.task.name!r} counts info[{key!r}] but the env's info has keys {sorted(step.info)}")
            rec["count"] = max(rec["count"], int(step.info[key]))

    def on_episode_end(self, episode: Episode) -> None:
        self.finish(episode.index, self._records.pop(episode.env_index))


class ChunkTimer(RolloutCallback):
    """Append to ``times`` the wall time (s) of every ``predict`` call that sampled new chunks."""

    def __init__(self, agent: Any, times: list[float]) -> None:
        super().__init__()
        self.agent, self.times = agent, times
        self._seen = getattr(agent, "n_replans", 0)

    def on_predict(self, seconds: float) -> None:
        n = getattr(self.agent, "n_replans", 0)
        if n != self._seen:
            self.times.append(seconds)
            self._seen = n


def run_seeds(agent: Any, task: Task, seeds: list[int], n_envs: int = 10, vector: str = "sync",
              deterministic: bool = True, video_episodes: int = 0, video_path: Callable[[int], Path] | None = None,
              on_episode: Callable[[int, dict], None] | None = None, retries: int = 1,
              progress: bool = False) -> dict[str, Any]:
    """Run one episode per seed, ``n_envs`` at a time (:func:`dp_gym.episodes.rollout`); an env
    that finishes starts the next seed.

    ``on_episode(i, record)`` is called as episode ``i`` (of ``seeds``) finishes, with its record
    (:class:`EpisodeRecords`). The first ``video_episodes`` episodes are recorded to
    ``video_path(seed)`` as they finish. If the vector env crashes (:class:`EnvCrash`), it is
    rebuilt and the episodes that were running are run again, one at a time, up to ``retries``
    times each; after that an episode's record holds ``error`` instead of results and the other
    episodes go on. ``progress`` shows a bar over episodes. Returns per-episode arrays over
    ``seeds`` (errored episodes: 0 / False), ``records`` (one per seed) and ``chunk_times`` (wall
    time of each batched predict that sampled chunks)."""
    if video_episodes and video_path is None:
        raise ValueError("video_episodes needs video_path (where each recorded episode's video goes)")
    n_envs = max(1, min(n_envs, len(seeds)))
    records: list[dict | None] = [None] * len(seeds)
    attempts = [0] * len(seeds)
    chunk_times: list[float] = []
    bar = tqdm(total=len(seeds), desc=f"{task.name} episodes", unit="ep", disable=not progress, dynamic_ncols=True, leave=False)

    def finish(ep: int, record: dict) -> None:
        records[ep] = record
        bar.update(1)
        if on_episode is not None:
            on_episode(ep, record)

    while any(r is None for r in records):
        # Episodes that were running when the env crashed are retried one at a time (in a one-env
        # vector), so an episode that crashes it again does not take its batch-mates down with it.
        retry = [ep for ep, r in enumerate(records) if r is None and attempts[ep]]
        todo = retry[:1] or [ep for ep, r in enumerate(records) if r is None]
        in_flight: set[int] = set()
        try:
            _run_pass(agent, task, seeds, todo, 1 if retry else min(n_envs, len(todo)), vector, deterministic,
                      video_episodes, video_path, chunk_times, finish, in_flight)
        except EnvCrash as crash:
            for ep in sorted(in_flight):
                attempts[ep] += 1
                if attempts[ep] > retries:
                    tqdm.write(f"episode seed {seeds[ep]}: the env crashed {attempts[ep]} times ({crash}); recorded as errored")
                    finish(ep, {"seed": seeds[ep], "error": str(crash)})
    bar.close()
    ok = [r if "error" not in r else {} for r in records]  # type: ignore[operator]
    out = {"max_reward": np.array([r.get("max_reward", 0.0) for r in ok]),
           "success": np.array([r.get("success", False) for r in ok], dtype=bool),
           "length": np.array([r.get("length", 0) for r in ok], dtype=int),
           "chunk_times": chunk_times, "records": records}
    if task.count_info_key:
        out["count"] = np.array([r.get("count", 0) for r in ok], dtype=int)
    return out


def _run_pass(agent: Any, task: Task, seeds: list[int], todo: list[int], n_envs: int, vector: str, deterministic: bool,
              video_episodes: int, video_path: Callable[[int], Path] | None, chunk_times: list[float],
              finish: Callable[[int, dict], None], in_flight: set[int]) -> None:
    """Run the episodes ``todo`` (indices into ``seeds``) on one vector env; raises EnvCrash, with
    the episodes then running in ``in_flight``."""
    render = any(ep < video_episodes for ep in todo)
    env = _CrashAsEnvCrash(_env_call(make_vector_env, task, n_envs, vector, render=render))

    def started(e: Episode) -> None:
        in_flight.add(todo[e.index])

    def done(i: int, record: dict) -> None:
        in_flight.discard(todo[i])
        finish(todo[i], record)

    callbacks: list[RolloutCallback] = []
    if render:
        fps = int(env.metadata.get("render_fps", 10))
        callbacks.append(FrameRecorder(env, select=lambda e: todo[e.index] < video_episodes,
                                       write=lambda e, frames: write_video(video_path(e.seed), frames, fps)))  # type: ignore[misc]
    callbacks += [RolloutCallback(on_episode_start=started), EpisodeRecords(task, done), ChunkTimer(agent, chunk_times)]
    try:
        rollout(agent, env, [seeds[ep] for ep in todo], deterministic, callbacks)
    except EnvCrash:
        _close_quietly(env.unwrapped)
        raise
    _close_quietly(env.unwrapped)


# --- evaluation ----------------------------------------------------------------------------------

def evaluate_agent(agent: PolicyAgent, task: Task, seeds: list[int], n_envs: int = 10, vector: str = "sync",
                   deterministic: bool = True, video_episodes: int = 0, latency_repeats: int = 20,
                   done: dict[int, dict] | None = None, on_episode: Callable[[dict], None] | None = None,
                   progress: bool = False, video_path: Callable[[int], Path] | None = None) -> dict[str, Any]:
    """Score ``agent`` on one episode per seed (see :func:`run_seeds`).

    ``done``: records of episodes already run, by seed (a resumed benchmark's ``episodes.jsonl``);
    only the other seeds run, and the results cover all of them. ``on_episode(record)`` is called
    as each new episode finishes. The first ``video_episodes`` seeds not in ``done`` are recorded
    to ``video_path(seed)``. Errored episodes (a crashed env, after its retry) are listed in
    ``errors`` and left out of the metrics."""
    done = {s: r for s, r in (done or {}).items() if s in seeds}
    todo = [s for s in seeds if s not in done]
    t0 = time.perf_counter()
    r = run_seeds(agent, task, todo, n_envs, vector, deterministic,
                  video_episodes=sum(1 for s in seeds[:video_episodes] if s not in done), video_path=video_path,
                  on_episode=(lambda i, rec: on_episode(rec)) if on_episode else None, progress=progress) if todo else \
        {"records": [], "chunk_times": []}
    wall = time.perf_counter() - t0
    new = dict(zip(todo, r["records"]))
    records = [done.get(s) or new[s] for s in seeds]
    ok = [rec for rec in records if "error" not in rec]
    n, k = len(ok), sum(bool(rec["success"]) for rec in ok)
    max_reward = np.array([rec["max_reward"] for rec in ok], dtype=float)
    lo, hi = wilson_interval(k, n)
    res = {
        "task": task.name,
        "episodes": n,
        "seeds": seeds,
        "mean_max_reward": float(max_reward.mean()) if n else float("nan"),
        "max_reward_std": float(max_reward.std()) if n else float("nan"),
        "success_rate": k / n if n else float("nan"),
        "success_ci95": [lo, hi],
        "mean_episode_length": float(np.mean([rec["length"] for rec in ok])) if n else float("nan"),
        "per_episode": {"max_reward": [None if "error" in rec else round(float(rec["max_reward"]), 4) for rec in records],
                        "success": [None if "error" in rec else bool(rec["success"]) for rec in records],
                        "length": [None if "error" in rec else int(rec["length"]) for rec in records]},
        "rollout_chunk_ms_median": 1000 * float(np.median(r["chunk_times"])) if r["chunk_times"] else None,
        "rollout_wall_s": wall,
    }
    if len(ok) < len(records):
        res["errored_episodes"] = len(records) - len(ok)
        res["errors"] = [{"seed": rec["seed"], "error": rec["error"]} for rec in records if "error" in rec]
    if task.count_info_key:
        if n:
            res.update(p_k_metrics([rec["count"] for rec in ok], task.count_max))
        res["per_episode"]["completed"] = [None if "error" in rec else int(rec["count"]) for rec in records]
    if latency_repeats:
        res["predict_latency_ms_median"] = measure_latency(agent, task, latency_repeats)
    return res


def evaluate_policy(policy: torch.nn.Module, task: Task, seeds: list[int], n_envs: int = 10, **kw: Any) -> dict[str, Any]:
    """Score a policy being trained (the trainer's periodic evaluation): :func:`evaluate_agent`
    with an agent around ``policy``, no videos and no latency measurement; the policy's
    training mode is restored afterwards. ``kw``: further :func:`evaluate_agent` options."""
    was_training = policy.training
    try:
        return evaluate_agent(PolicyAgent(policy), task, seeds, n_envs, latency_repeats=0, **kw)
    finally:
        policy.train(was_training)
