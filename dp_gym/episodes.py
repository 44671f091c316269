"""Run an agent for whole episodes on a Gymnasium env or vector env, in any autoreset mode.

``DiffusionAgent.predict(obs, episode_start=...)`` follows Stable-Baselines3: ``episode_start[i]``
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

:func:`run_episodes` implements all three (and plain envs) and returns each episode's actions and
rewards. With ``deterministic=True`` it keys the agent's sampling noise by (env seed, episode
number), so every episode gets exactly the actions it gets when its env runs alone.

Example:
    >>> import gymnasium as gym
    >>> from dp_gym import DiffusionAgent
    >>> agent = DiffusionAgent.load("runs/pusht_kp/checkpoints/latest")   # doctest: +SKIP
    >>> envs = gym.vector.SyncVectorEnv([lambda: gym.make("dp_gym/PushT-v0", obs_type="keypoints")] * 4)
    >>> episodes = run_episodes(agent, envs, n_episodes=8, seed=100000)  # doctest: +SKIP
    >>> [round(ep.max_reward, 3) for ep in episodes]                      # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from dp_gym.agent import DiffusionAgent

AutoresetMode = gym.vector.AutoresetMode


@dataclass
class Episode:
    """One finished episode: ``env_index`` and ``index`` (the how-many-th episode of that env,
    from 0) identify it; ``seed`` is the seed that env was first reset with (its later episodes
    continue that env's random stream, as ``reset()`` without a seed does)."""

    env_index: int
    index: int
    seed: int | None
    actions: np.ndarray  # (T, action_dim): the actions the env executed
    rewards: np.ndarray  # (T,)
    info: dict[str, Any] = field(default_factory=dict)  # the episode's last info

    @property
    def length(self) -> int:
        return len(self.rewards)

    @property
    def total_reward(self) -> float:
        """Sum of rewards (what SB3's ``evaluate_policy`` reports)."""
        return float(self.rewards.sum())

    @property
    def max_reward(self) -> float:
        """Largest reward of the episode (Push-T's coverage score)."""
        return float(self.rewards.max())


def episode_noise_key(seed: int | None, env_index: int, index: int) -> int:
    """The deterministic-noise key of episode ``index`` of the env first reset with ``seed``
    (``env_index`` stands in for an unseeded env)."""
    return hash((env_index if seed is None else seed, index)) & 0x7FFF_FFFF


def _env_info(info: dict[str, Any], i: int) -> dict[str, Any]:
    """Env ``i``'s entries of a vector env's dict-of-arrays ``info``."""
    return {k: v[i] for k, v in info.items()
            if not k.startswith("_") and k not in ("final_obs", "final_info") and (f"_{k}" not in info or info[f"_{k}"][i])}


def run_episodes(agent: DiffusionAgent, env: gym.Env | gym.vector.VectorEnv, n_episodes: int,
                 seed: int | list[int] | None = None, deterministic: bool = True) -> list[Episode]:
    """Run ``agent`` until ``n_episodes`` episodes have finished, in the order they finish.

    ``env``: a plain env (episodes one after another) or a vector env in any autoreset mode.
    ``seed``: the first reset's seed; for a vector env an int gives env *i* ``seed + i``, a list
    one seed per env. Episodes still running when enough have finished are dropped."""
    if n_episodes < 1:
        raise ValueError(f"n_episodes must be >= 1, got {n_episodes}")
    if isinstance(env, gym.vector.VectorEnv):
        return _run_vector(agent, env, n_episodes, seed, deterministic)
    if not isinstance(env, gym.Env):
        raise TypeError(f"env must be a gymnasium.Env or gymnasium.vector.VectorEnv, got {type(env).__name__}")
    episodes = []
    agent.reset(1)
    for k in range(n_episodes):
        obs, info = env.reset(seed=seed if k == 0 else None)
        agent.set_noise_key(0, episode_noise_key(seed, 0, k))
        actions, rewards, start, done = [], [], True, False
        while not done:
            action, _ = agent.predict(obs, episode_start=np.array([start]), deterministic=deterministic)
            obs, reward, terminated, truncated, info = env.step(action)
            actions.append(action)
            rewards.append(float(reward))
            start, done = False, terminated or truncated
        episodes.append(Episode(0, k, seed, np.asarray(actions), np.asarray(rewards), dict(info)))
    return episodes


def _run_vector(agent: DiffusionAgent, env: gym.vector.VectorEnv, n_episodes: int, seed: int | list[int] | None,
                deterministic: bool) -> list[Episode]:
    n = env.num_envs
    mode = AutoresetMode(env.metadata.get("autoreset_mode", AutoresetMode.NEXT_STEP))
    if seed is None or isinstance(seed, (int, np.integer)):
        seeds = [None if seed is None else int(seed) + i for i in range(n)]
    else:
        seeds = [int(s) for s in seed]
        if len(seeds) != n:
            raise ValueError(f"seed lists {len(seeds)} seeds for {n} envs")
    obs, _ = env.reset(seed=seeds if seed is not None else None)
    agent.reset(n)
    count = [0] * n  # finished episodes per env
    actions: list[list[np.ndarray]] = [[] for _ in range(n)]
    rewards: list[list[float]] = [[] for _ in range(n)]
    start = np.ones(n, dtype=bool)       # obs[i] is the first observation of an episode
    resetting = np.zeros(n, dtype=bool)  # NEXT_STEP: env i's next step resets it, ignoring its action
    episodes: list[Episode] = []
    while len(episodes) < n_episodes:
        for i in np.flatnonzero(start):
            agent.set_noise_key(i, episode_noise_key(seeds[i], i, count[i]))
        act, _ = agent.predict(obs, episode_start=start, deterministic=deterministic)
        obs, reward, terminated, truncated, info = env.step(act)
        done = (terminated | truncated) & ~resetting
        for i in np.flatnonzero(~resetting):
            actions[i].append(act[i])
            rewards[i].append(float(reward[i]))
        for i in np.flatnonzero(done):
            last = _env_info(info["final_info"], i) if mode == AutoresetMode.SAME_STEP else _env_info(info, i)
            episodes.append(Episode(i, count[i], seeds[i], np.asarray(actions[i]), np.asarray(rewards[i]), last))
            count[i] += 1
            actions[i], rewards[i] = [], []
        if mode == AutoresetMode.NEXT_STEP:
            start, resetting = resetting, done
        elif mode == AutoresetMode.SAME_STEP:
            start = done
        else:  # DISABLED: reset the finished envs here, without a seed (their random streams go on)
            if done.any():
                obs, _ = env.reset(options={"reset_mask": done})
            start = done
    return episodes[:n_episodes]
