"""The rollout loop: run an agent for whole episodes on a Gymnasium env or vector env, in any
autoreset mode, with per-step and per-episode callbacks.

``PolicyAgent.predict(obs, episode_start=...)`` follows Stable-Baselines3: ``episode_start[i]``
means "``obs[i]`` is the first observation of an episode". How to compute it depends on how the
vector env resets finished episodes (``gymnasium.vector.AutoresetMode``):

* ``SAME_STEP``: the step that ends env *i*'s episode also resets it and returns the new first
  observation (the last one is in ``info["final_obs"]``): ``episode_start = terminated | truncated``.
* ``NEXT_STEP`` (``SyncVectorEnv``'s default): that step returns the episode's *last* observation;
  the *next* ``step`` resets env *i*, ignores its action and returns the first observation. So
  ``episode_start`` is the previous step's ``terminated | truncated``, and the action computed from
  the last observation is thrown away.
* ``DISABLED``: reset finished envs yourself (``reset(options={"reset_mask": done})``); the
  observations it returns start episodes: ``episode_start = done``.

One loop implements all three (and plain envs, seen as one env whose finished episodes the loop
resets). It has two front ends that differ only in which episodes they run:

* :func:`rollout` runs one episode per seed of a list, each reset with its own seed (the
  benchmark's protocol); envs that finish start the next seed, envs left without one idle. It
  needs a plain env or a vector env with ``autoreset_mode=DISABLED`` (the other modes reset
  envs without a seed).
* :func:`run_episodes` runs until ``n_episodes`` have finished; each env is reset with its seed
  once and its later episodes continue that env's random stream.

With ``deterministic=True`` the agent's sampling noise is keyed per episode (:func:`rollout`: by
the episode's seed; :func:`run_episodes`: by :func:`episode_noise_key`), so an episode gets exactly
the actions it gets when it runs alone, in whatever env slot.

Callbacks (:class:`RolloutCallback`) see each episode start (after its reset), each executed step
and each episode end, and the wall time of each ``predict`` call: per-episode logging, video frames
(:class:`FrameRecorder`), progress bars and per-step diagnostics of the simulator are callbacks.

Example:
    >>> import gymnasium as gym
    >>> from dp_gym import PolicyAgent
    >>> agent = PolicyAgent.from_pretrained("zoo:pusht_keypoints/diffusion")  # or PolicyAgent.load(checkpoint dir)
    >>> make = lambda: gym.make("dp_gym/PushT-v0", obs_type="keypoints", max_episode_steps=20)
    >>> envs = gym.vector.SyncVectorEnv([make] * 2)
    >>> episodes = run_episodes(agent, envs, n_episodes=4, seed=100000)
    >>> [ep.length for ep in episodes]
    [20, 20, 20, 20]
    >>> lengths = RolloutCallback(on_episode_end=lambda ep: print(ep.seed, ep.length))
    >>> _ = rollout(agent, make(), seeds=[100000, 100001], callbacks=[lengths])
    100000 20
    100001 20
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np

AutoresetMode = gym.vector.AutoresetMode

__all__ = ["Episode", "FrameRecorder", "RolloutCallback", "Step", "episode_noise_key", "render_frame", "rollout",
           "run_episodes"]


@dataclass
class Episode:
    """One episode: ``env_index`` (the env slot it ran in) and ``index`` identify it.

    :func:`run_episodes`: ``index`` is the how-many-th episode of that env (from 0) and ``seed`` the
    seed that env was first reset with (its later episodes continue that env's random stream, as
    ``reset()`` without a seed does). :func:`rollout`: ``index`` is the position of the episode's
    seed in the seed list and ``seed`` that seed.

    While the episode runs (as callbacks see it) ``actions`` and ``rewards`` are lists that grow
    by one entry per step and ``info`` is empty; once finished they are arrays and ``info`` is the
    last step's info."""

    env_index: int
    index: int
    seed: int | None
    actions: np.ndarray  # (T, action_dim): the actions the env executed
    rewards: np.ndarray  # (T,)
    info: dict[str, Any] = field(default_factory=dict)  # the episode's last info
    noise_key: int | None = None  # the key of the agent's sampling noise (deterministic=True)

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def total_reward(self) -> float:
        """Sum of rewards (what SB3's ``evaluate_policy`` reports)."""
        return float(np.sum(self.rewards))

    @property
    def max_reward(self) -> float:
        """Largest reward of the episode (Push-T's coverage score)."""
        return float(np.max(self.rewards))


@dataclass
class Step:
    """One executed step of one env, as :meth:`RolloutCallback.on_step` sees it."""

    action: np.ndarray
    reward: float
    terminated: bool
    truncated: bool
    info: dict[str, Any]  # this env's info (of a vector env: its entries of the batched info)
    env_step: int  # how many times the loop has stepped the env so far (from 1; shared by a vector env's envs)


class RolloutCallback:
    """Hooks of the rollout loop; each does nothing unless overridden or given as a function.

    ``RolloutCallback(on_step=f)`` calls ``f(episode, step)``; subclasses override the methods.
    Callbacks run in the order given, each hook for every env in env order.
    """

    _on_episode_start: Callable[[Episode], None] | None = None
    _on_step: Callable[[Episode, Step], None] | None = None
    _on_episode_end: Callable[[Episode], None] | None = None
    _on_predict: Callable[[float], None] | None = None

    def __init__(self, on_episode_start: Callable[[Episode], None] | None = None,
                 on_step: Callable[[Episode, Step], None] | None = None,
                 on_episode_end: Callable[[Episode], None] | None = None,
                 on_predict: Callable[[float], None] | None = None) -> None:
        for name, fn in (("on_episode_start", on_episode_start), ("on_step", on_step),
                         ("on_episode_end", on_episode_end), ("on_predict", on_predict)):
            if fn is not None and not callable(fn):
                raise TypeError(f"{name} must be callable or None, got {fn!r}")
            setattr(self, f"_{name}", fn)

    def on_episode_start(self, episode: Episode) -> None:
        """The episode's env has just been reset (its first observation is the agent's next input)."""
        if self._on_episode_start is not None:
            self._on_episode_start(episode)

    def on_step(self, episode: Episode, step: Step) -> None:
        """The episode's env has executed ``step.action`` (already appended to ``episode``)."""
        if self._on_step is not None:
            self._on_step(episode, step)

    def on_episode_end(self, episode: Episode) -> None:
        """The episode terminated or was truncated; ``episode`` holds its arrays and last info."""
        if self._on_episode_end is not None:
            self._on_episode_end(episode)

    def on_predict(self, seconds: float) -> None:
        """``agent.predict`` has returned the actions of all envs after ``seconds`` of wall time."""
        if self._on_predict is not None:
            self._on_predict(seconds)


def episode_noise_key(seed: int | None, env_index: int, index: int) -> int:
    """The deterministic-noise key of episode ``index`` of the env first reset with ``seed``
    (``env_index`` stands in for the seed of an unseeded env).

    The key is the first 32-bit word of ``numpy.random.SeedSequence(seed, spawn_key=(index,))``
    (the ``index``-th child of the seed's sequence, ``SeedSequence(seed).spawn(index + 1)[index]``),
    shifted right by one bit to fit a non-negative 31-bit integer."""
    entropy = env_index if seed is None else seed
    if int(entropy) < 0 or int(index) < 0:
        raise ValueError(f"seed, env_index and index must be non-negative, got seed={seed}, env_index={env_index}, index={index}")
    word = np.random.SeedSequence(int(entropy), spawn_key=(int(index),)).generate_state(1, dtype=np.uint32)[0]
    return int(word) >> 1


def render_frame(env: gym.Env | gym.vector.VectorEnv, env_index: int) -> np.ndarray:
    """``render()`` of env ``env_index`` of a vector env (of the env itself for a plain env)."""
    if not isinstance(env, gym.vector.VectorEnv):
        return env.render()
    base = env.unwrapped
    if isinstance(base, gym.vector.SyncVectorEnv):
        return base.envs[env_index].render()
    return env.call("render")[env_index]


class FrameRecorder(RolloutCallback):
    """Collect ``render()`` frames (after the reset and after every step) of the episodes
    ``select(episode)`` picks, and hand each finished episode's frames to ``write(episode, frames)``
    (e.g. :func:`dp_gym.wrappers.write_video`). ``env`` is the env the loop runs (made with
    ``render_mode="rgb_array"``). Frames of episodes that never finish are dropped with the
    recorder. Under ``AutoresetMode.SAME_STEP`` the last step's frame is not taken (the env has
    already reset)."""

    def __init__(self, env: gym.Env | gym.vector.VectorEnv, select: Callable[[Episode], bool],
                 write: Callable[[Episode, list[np.ndarray]], None]) -> None:
        super().__init__()
        self.env, self.select, self.write = env, select, write
        self._frames: dict[int, list[np.ndarray]] = {}  # env index -> frames of its recorded episode
        self._same_step = isinstance(env, gym.vector.VectorEnv) and \
            AutoresetMode(env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP)) == AutoresetMode.SAME_STEP
        self._batch: tuple[int, Any] | None = None  # (env_step, frames of all envs) of a non-sync vector env

    def _render(self, env_index: int, env_step: int | None) -> np.ndarray:
        env = self.env
        if isinstance(env, gym.vector.VectorEnv) and not isinstance(env.unwrapped, gym.vector.SyncVectorEnv) \
                and env_step is not None:  # one call renders every env: reuse it within a step
            if self._batch is None or self._batch[0] != env_step:
                self._batch = (env_step, env.call("render"))
            return np.asarray(self._batch[1][env_index])
        return np.asarray(render_frame(env, env_index))

    def on_episode_start(self, episode: Episode) -> None:
        self._frames.pop(episode.env_index, None)
        if self.select(episode):
            self._frames[episode.env_index] = [self._render(episode.env_index, None)]

    def on_step(self, episode: Episode, step: Step) -> None:
        frames = self._frames.get(episode.env_index)
        if frames is not None and not (self._same_step and (step.terminated or step.truncated)):
            frames.append(self._render(episode.env_index, step.env_step))

    def on_episode_end(self, episode: Episode) -> None:
        frames = self._frames.pop(episode.env_index, None)
        if frames:
            self.write(episode, frames)


# --- the loop ---------------------------------------------------------------------------------

def _env_info(info: dict[str, Any], i: int) -> dict[str, Any]:
    """Env ``i``'s entries of a vector env's dict-of-arrays ``info``."""
    return {k: v[i] for k, v in info.items()
            if not k.startswith("_") and k not in ("final_obs", "final_info") and (f"_{k}" not in info or info[f"_{k}"][i])}


class _PlainEnv:
    """A plain env as the loop drives it: one env, reset by the loop (like ``DISABLED``); the agent
    gets its observations and returns its actions unbatched."""

    autoreset_mode = AutoresetMode.DISABLED
    num_envs = 1

    def __init__(self, env: gym.Env) -> None:
        self.env = env

    def reset(self, seeds: list[int | None], mask: np.ndarray) -> Any:
        return self.env.reset(seed=seeds[0])[0]

    def step(self, actions: Any) -> tuple:
        obs, reward, terminated, truncated, info = self.env.step(actions)
        return obs, np.array([float(reward)]), np.array([bool(terminated)]), np.array([bool(truncated)]), info

    @staticmethod
    def action(actions: Any, i: int) -> Any:
        return actions

    @staticmethod
    def info(info: dict[str, Any], i: int, final: bool) -> dict[str, Any]:
        return dict(info)


class _VectorEnv:
    """A vector env as the loop drives it."""

    def __init__(self, env: gym.vector.VectorEnv) -> None:
        self.env = env
        self.num_envs = env.num_envs
        self.autoreset_mode = AutoresetMode(env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP))

    def reset(self, seeds: list[int | None], mask: np.ndarray) -> Any:
        seed = None if all(s is None for s in seeds) else seeds
        if mask.all():
            return self.env.reset(seed=seed)[0]
        return self.env.reset(seed=seed, options={"reset_mask": mask})[0]  # the other envs keep their observation

    def step(self, actions: Any) -> tuple:
        return self.env.step(actions)

    @staticmethod
    def action(actions: Any, i: int) -> Any:
        return actions[i]

    @staticmethod
    def info(info: dict[str, Any], i: int, final: bool) -> dict[str, Any]:
        return _env_info(info["final_info"] if final else info, i)


class _SeedList:
    """:func:`rollout`'s episodes: one per seed, each reset with its seed, keyed by it."""

    seeded_resets = True

    def __init__(self, seeds: Sequence[int]) -> None:
        self.pending = deque(enumerate(int(s) for s in seeds))
        self.n = len(self.pending)

    def next(self, env_index: int) -> Episode | None:
        if not self.pending:
            return None
        index, seed = self.pending.popleft()
        return Episode(env_index, index, seed, [], [], noise_key=seed)  # type: ignore[arg-type]

    def reset_seed(self, episode: Episode) -> int | None:
        return episode.seed

    def finished(self, n_finished: int) -> bool:
        return n_finished >= self.n


class _EnvStreams:
    """:func:`run_episodes`' episodes: env *i* reset with ``seeds[i]`` once, then without a seed."""

    seeded_resets = False

    def __init__(self, seeds: list[int | None], n_episodes: int) -> None:
        self.seeds, self.n = seeds, n_episodes
        self.count = [0] * len(seeds)

    def next(self, env_index: int) -> Episode:
        k = self.count[env_index]
        self.count[env_index] += 1
        seed = self.seeds[env_index]
        return Episode(env_index, k, seed, [], [], noise_key=episode_noise_key(seed, env_index, k))  # type: ignore[arg-type]

    def reset_seed(self, episode: Episode) -> int | None:
        return episode.seed if episode.index == 0 else None

    def finished(self, n_finished: int) -> bool:
        return n_finished >= self.n


def _loop(agent: Any, env: gym.Env | gym.vector.VectorEnv, plan: _SeedList | _EnvStreams, deterministic: bool,
          callbacks: Sequence[RolloutCallback]) -> list[Episode]:
    """Run the episodes ``plan`` gives until it has enough; returns them in the order they finished."""
    if isinstance(env, gym.vector.VectorEnv):
        view: _PlainEnv | _VectorEnv = _VectorEnv(env)
    elif isinstance(env, gym.Env):
        view = _PlainEnv(env)
    else:
        raise TypeError(f"env must be a gymnasium.Env or gymnasium.vector.VectorEnv, got {type(env).__name__}")
    callbacks = list(callbacks)
    for cb in callbacks:
        if not isinstance(cb, RolloutCallback):
            raise TypeError(f"callbacks must be RolloutCallback instances, got {type(cb).__name__}")
    n, mode = view.num_envs, view.autoreset_mode
    if plan.seeded_resets and mode != AutoresetMode.DISABLED:
        raise ValueError(f"one episode per seed needs a plain env or a vector env with autoreset_mode=DISABLED "
                         f"(a {mode.name} vector env resets finished envs itself, without their next seed)")

    running: list[Episode | None] = [None] * n  # the episode each env runs (None: the env idles)
    finished: list[Episode] = []

    def assign(i: int) -> int | None:
        """Give env ``i`` its next episode (or none); returns the seed to reset it with."""
        ep = running[i] = plan.next(i)
        if ep is None:
            return None
        if ep.noise_key is not None:
            agent.set_noise_key(i, ep.noise_key)
        return plan.reset_seed(ep)

    def started(mask: np.ndarray) -> None:
        for i in np.flatnonzero(mask):
            if running[i] is not None:
                for cb in callbacks:
                    cb.on_episode_start(running[i])

    agent.reset(n)
    everyone = np.ones(n, dtype=bool)
    obs = view.reset([assign(i) for i in range(n)], everyone)
    started(everyone)
    start = everyone.copy()               # obs[i] is the first observation of an episode
    resetting = np.zeros(n, dtype=bool)   # NEXT_STEP: env i's next step resets it, ignoring its action
    env_step = 0
    while True:  # until the plan has its episodes (checked after each step)
        t0 = time.perf_counter()
        actions, _ = agent.predict(obs, episode_start=start, deterministic=deterministic)
        elapsed = time.perf_counter() - t0
        for cb in callbacks:
            cb.on_predict(elapsed)
        obs, reward, terminated, truncated, info = view.step(actions)
        env_step += 1
        ended = np.asarray(terminated | truncated, dtype=bool)  # idle envs can end too (DISABLED: reset them)
        done = ended & ~resetting
        for i in range(n):
            ep = running[i]
            if ep is None or resetting[i]:
                continue
            last = bool(done[i])
            step = Step(view.action(actions, i), float(reward[i]), bool(terminated[i]), bool(truncated[i]),
                        view.info(info, i, final=last and mode == AutoresetMode.SAME_STEP), env_step)
            ep.actions.append(step.action)  # type: ignore[attr-defined]
            ep.rewards.append(step.reward)  # type: ignore[attr-defined]
            for cb in callbacks:
                cb.on_step(ep, step)
            if last:
                ep.actions, ep.rewards, ep.info = np.asarray(ep.actions), np.asarray(ep.rewards), step.info
                running[i] = None
                finished.append(ep)
                for cb in callbacks:
                    cb.on_episode_end(ep)
        if plan.finished(len(finished)):
            break
        if mode == AutoresetMode.NEXT_STEP:  # the envs this step reset start episodes now
            start, resetting = resetting, done
            for i in np.flatnonzero(start):
                assign(i)
            started(start)
        elif mode == AutoresetMode.SAME_STEP:  # this step reset the finished envs
            start = done
            for i in np.flatnonzero(start):
                assign(i)
            started(start)
        else:  # DISABLED: reset the envs that ended (idle ones too: a finished env must be reset to step on)
            start = ended
            if ended.any():
                seeds = [assign(i) if ended[i] else None for i in range(n)]
                obs = view.reset(seeds, ended)
                started(ended)
    return finished


def rollout(agent: Any, env: gym.Env | gym.vector.VectorEnv, seeds: Sequence[int], deterministic: bool = True,
            callbacks: Sequence[RolloutCallback] = ()) -> list[Episode]:
    """Run one episode per seed of ``seeds``, each reset with its seed; returns them in the order
    they finished (``Episode.index``: the seed's position in ``seeds``).

    ``env``: a plain env (episodes one after another) or a vector env with
    ``autoreset_mode=DISABLED``: its envs start the seeds in order, and an env that finishes starts
    the next one; envs left without a seed are reset without one and stepped with the agent's
    actions (their results ignored) until the last episode ends. ``deterministic=True``
    keys each episode's sampling noise by its seed (``agent.set_noise_key``).
    ``callbacks``: :class:`RolloutCallback` hooks."""
    if len(seeds) == 0:
        raise ValueError("seeds is empty: give at least one episode seed")
    return _loop(agent, env, _SeedList(seeds), deterministic, callbacks)


def run_episodes(agent: Any, env: gym.Env | gym.vector.VectorEnv, n_episodes: int,
                 seed: int | list[int] | None = None, deterministic: bool = True,
                 callbacks: Sequence[RolloutCallback] = ()) -> list[Episode]:
    """Run ``agent`` until ``n_episodes`` episodes have finished, in the order they finish.

    ``env``: a plain env (episodes one after another) or a vector env in any autoreset mode.
    ``seed``: the first reset's seed; for a vector env an int gives env *i* ``seed + i``, a list
    one seed per env. Later episodes of an env continue its random stream (reset without a seed);
    with ``deterministic=True`` episode *k* of env *i* draws the noise keyed by
    :func:`episode_noise_key` (``seed_i, i, k``). Episodes still running when enough have
    finished are dropped. ``callbacks``: :class:`RolloutCallback` hooks."""
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    n = env.num_envs if isinstance(env, gym.vector.VectorEnv) else 1
    if seed is None or isinstance(seed, (int, np.integer)):
        seeds = [None if seed is None else int(seed) + i for i in range(n)]
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != n:
            raise ValueError(f"seed lists {len(seeds)} seeds for {n} envs")
    return _loop(agent, env, _EnvStreams(seeds, n_episodes), deterministic, callbacks)[:n_episodes]
