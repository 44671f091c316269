"""Franka Kitchen with the D4RL 60-d observation layout, on gymnasium-robotics' ``FrankaKitchen-v1``.

The simulator is gymnasium-robotics' MuJoCo ``KitchenEnv`` (same scene, 40 MuJoCo substeps of 2 ms
per step = 12.5 Hz control, joint-velocity actions integrated from the last *observed* robot qpos),
used as a library. This adapter turns it into the env that the D4RL kitchen datasets were recorded
in, so that policies trained on those datasets run here:

* observation: flat ``float32`` ``Box(60)`` = robot joint qpos (9) + object qpos (21) + goal (30).
  The goal is a 30-d vector over the full qpos with each requested task's goal values at that
  task's qpos indices and zeros elsewhere (as in the D4RL files).
* observation noise as in the D4RL files: uniform, ``noise_ratio * pos_noise_amp`` per joint with
  ``noise_ratio = 0.1`` for robot and objects (measured on kitchen_complete-v0: the untouched knobs
  jitter by +-5e-4, the buttons by +-5e-5, the kettle quaternion by +-1e-2). gymnasium-robotics'
  defaults are 10x / 200x smaller, and its object noise reads the amplitude table shifted by one
  joint, so the object noise is added here instead. As in D4RL, the noisy robot qpos also drives the
  velocity controller.
* actions: ``action_mode="velocity"`` (default, the D4RL datasets' own actions): 9 joint velocities
  in [-1, 1] (x 2 rad/s, integrated over one 0.08 s step from the last observed qpos).
  ``action_mode="absolute"``: 9 joint position targets (rad; the position control the diffusion
  policy paper prefers). They are turned into the velocity command that makes the controller's
  target equal them, ``(target - last observed qpos) / (2 * dt)``; a target more than one step's
  reach (0.16 rad) away is approached at the velocity limit, as the controller would clip it
  (``velocity_to_position_targets`` converts a D4RL recording to such targets, exactly).
* tasks: ``tasks_to_complete`` (default: the four of kitchen-complete, in demo order); a task counts
  as completed once its joints come within 0.3 (L2) of the goal, and stays completed (D4RL's
  "remove task when complete"). ``reward`` = number of tasks completed at this step.
* episode: truncated after ``max_episode_steps`` (280) steps inside the env; terminated when all
  requested tasks are completed (``terminate_on_tasks_completed``).
* info: ``is_success`` (all requested tasks done), ``completed_tasks`` (in completion order),
  ``n_completed``, ``step_task_completions`` (tasks completed at this step) and
  ``tasks_to_complete`` (still open).
* ``reset(options={"qpos": (30,), "qvel": (29,)})`` starts from a given simulator state (used to
  replay the demonstrations from their first recorded frame).
* rendering (``render_mode="rgb_array"``, 256x256 by default): shadows, multi-sample anti-aliasing,
  reflections and the skybox are switched off by default (``fast_render``): ~20x faster here
  (EGL on a CPU-only machine: ~3.7 s -> ~0.15 s per frame).

Example:
    >>> import numpy as np
    >>> from dp_gym.envs.kitchen import FrankaKitchenD4RLEnv
    >>> env = FrankaKitchenD4RLEnv()
    >>> obs, info = env.reset(seed=0)
    >>> obs.shape, obs.dtype, info["n_completed"]
    ((60,), dtype('float32'), 0)
    >>> obs, reward, terminated, truncated, info = env.step(np.zeros(9, dtype=np.float32))
    >>> info["is_success"], info["completed_tasks"]
    (False, [])
    >>> env.step(np.zeros(7))
    Traceback (most recent call last):
    ...
    ValueError: action must have shape (9,) (joint velocities in [-1, 1]), got shape (7,)
"""

from __future__ import annotations

import os
from os import path as osp
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

if "MUJOCO_GL" not in os.environ and not os.environ.get("DISPLAY"):
    os.environ["MUJOCO_GL"] = "egl"  # headless: GLFW needs a display; EGL works without one

import mujoco  # noqa: E402
from gymnasium_robotics.envs.franka_kitchen import kitchen_env as _gk  # noqa: E402
from gymnasium_robotics.envs.franka_kitchen.utils import get_config_root_node, read_config_from_node  # noqa: E402

__all__ = ["FrankaKitchenD4RLEnv", "KITCHEN_COMPLETE_TASKS", "ALL_TASKS", "goal_vector", "task_completions",
           "OBS_DIM", "N_ROBOT_QPOS", "N_OBJECT_QPOS", "ACTION_MODES", "velocity_to_position_targets",
           "position_targets_to_velocity", "STEP_DT"]

N_ROBOT_QPOS = 9
N_OBJECT_QPOS = 21
N_QPOS = N_ROBOT_QPOS + N_OBJECT_QPOS
N_QVEL = 29
OBS_DIM = N_QPOS + N_QPOS  # qpos (robot + objects) + goal
ACTION_DIM = 9
KITCHEN_COMPLETE_TASKS: tuple[str, ...] = ("microwave", "kettle", "light switch", "slide cabinet")
ALL_TASKS: tuple[str, ...] = tuple(_gk.OBS_ELEMENT_GOALS)
D4RL_NOISE_RATIO = 0.1
ACTION_MODES = ("velocity", "absolute")
# FrankaRobot maps an action in [-1, 1] to a joint velocity of 2 * action rad/s (act_mid 0, act_rng 2)
# and integrates it over one env step of 40 substeps x 2 ms (tested against the library's values).
VELOCITY_SCALE = 2.0
STEP_DT = 0.08


def velocity_to_position_targets(robot_qpos: np.ndarray, actions: np.ndarray) -> np.ndarray:
    """(T, 9) observed robot qpos + (T, 9) velocity actions in [-1, 1] -> (T, 9) joint position
    targets, the controller's own ``qpos + 2 * action * dt`` (recorded observations carry the
    noise the controller integrated from, so this is exact for a D4RL recording)."""
    q, a = np.asarray(robot_qpos, np.float64), np.asarray(actions, np.float64)
    if q.shape != a.shape or q.ndim < 1 or q.shape[-1] != N_ROBOT_QPOS:
        raise ValueError(f"robot_qpos and actions must both have shape (..., {N_ROBOT_QPOS}), got {q.shape} and {a.shape}")
    return q + VELOCITY_SCALE * np.clip(a, -1.0, 1.0) * STEP_DT


def position_targets_to_velocity(robot_qpos: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Inverse of :func:`velocity_to_position_targets`: the velocity action in [-1, 1] whose
    controller target is ``targets`` (clipped to [-1, 1] when a target is beyond one step's reach)."""
    q, t = np.asarray(robot_qpos, np.float64), np.asarray(targets, np.float64)
    return np.clip((t - q) / (VELOCITY_SCALE * STEP_DT), -1.0, 1.0)


def goal_vector(tasks: Sequence[str]) -> np.ndarray:
    """The D4RL 30-d goal: each task's goal joint values at its qpos indices, zeros elsewhere.

    Example:
        >>> goal_vector(["microwave"])[22], goal_vector(["microwave"])[:22].any()
        (-0.75, False)
    """
    goal = np.zeros(N_QPOS, dtype=np.float64)
    for task in tasks:
        if task not in _gk.OBS_ELEMENT_GOALS:
            raise ValueError(f"unknown kitchen task {task!r}; expected one of {list(ALL_TASKS)}")
        goal[_gk.OBS_ELEMENT_INDICES[task]] = _gk.OBS_ELEMENT_GOALS[task]
    return goal


def task_completions(qpos: np.ndarray, tasks: Sequence[str]) -> list[str]:
    """The tasks of ``tasks`` whose joints in ``qpos`` (30-d: robot 9 + objects 21) are within the
    completion threshold (0.3, L2) of their goal.

    Example:
        >>> q = np.zeros(30); q[22] = -0.7
        >>> task_completions(q, ["microwave", "kettle"])
        ['microwave']
    """
    qpos = np.asarray(qpos)
    if qpos.shape[-1] != N_QPOS:
        raise ValueError(f"qpos must have {N_QPOS} entries (robot 9 + objects 21), got shape {qpos.shape}")
    return [t for t in tasks
            if np.linalg.norm(qpos[..., _gk.OBS_ELEMENT_INDICES[t]] - _gk.OBS_ELEMENT_GOALS[t]) < _gk.BONUS_THRESH]


class FrankaKitchenD4RLEnv(gym.Env[np.ndarray, np.ndarray]):
    """FrankaKitchen-v1 with D4RL observations, task bookkeeping and fast rendering (see module doc)."""

    metadata = {"render_modes": ["rgb_array"], "render_fps": 12}

    def __init__(self, tasks_to_complete: Sequence[str] = KITCHEN_COMPLETE_TASKS, max_episode_steps: int = 280,
                 terminate_on_tasks_completed: bool = True, robot_noise_ratio: float = D4RL_NOISE_RATIO,
                 object_noise_ratio: float = D4RL_NOISE_RATIO, render_mode: str | None = None,
                 width: int = 256, height: int = 256, fast_render: bool = True, action_mode: str = "velocity") -> None:
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
        tasks = list(tasks_to_complete)
        if not tasks:
            raise ValueError("tasks_to_complete must name at least one task")
        unknown = [t for t in tasks if t not in _gk.OBS_ELEMENT_GOALS]
        if unknown or len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks_to_complete must be distinct names from {list(ALL_TASKS)}, got {tasks}")
        if max_episode_steps < 1:
            raise ValueError(f"max_episode_steps must be >= 1, got {max_episode_steps}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.tasks = tuple(tasks)
        self.max_episode_steps = int(max_episode_steps)
        self.terminate_on_tasks_completed = terminate_on_tasks_completed
        self.object_noise_ratio = float(object_noise_ratio)
        self.render_mode = render_mode
        # The library env keeps its own task bookkeeping; we do ours (ordered, deterministic), so its
        # object noise is off and it never terminates by itself.
        # Fast rendering: no reflections / skybox here, no shadows / MSAA below.
        visual_options = {int(mujoco.mjtRndFlag.mjRND_REFLECTION): False, int(mujoco.mjtRndFlag.mjRND_SKYBOX): False} if fast_render else {}
        self.kitchen = _gk.KitchenEnv(tasks_to_complete=list(tasks), terminate_on_tasks_completed=False,
                                      object_noise_ratio=0.0, robot_noise_ratio=float(robot_noise_ratio),
                                      render_mode=render_mode, width=width, height=height, visual_options=visual_options)
        self.robot = self.kitchen.robot_env
        if fast_render:
            self.robot.model.vis.quality.shadowsize = 0  # read when the GL context is created (first render)
            self.robot.model.vis.quality.offsamples = 0
        self._object_noise_amp = self._read_object_noise_amp()
        self._goal = goal_vector(tasks)
        self.observation_space = spaces.Box(-np.inf, np.inf, shape=(OBS_DIM,), dtype=np.float32)
        self.action_mode = action_mode
        if action_mode == "velocity":
            self.action_space = spaces.Box(-1.0, 1.0, shape=(ACTION_DIM,), dtype=np.float32)
        else:  # joint position targets within the controller's position bounds
            bound = np.asarray(self.robot.robot_pos_bound[:ACTION_DIM], dtype=np.float32)
            self.action_space = spaces.Box(bound[:, 0], bound[:, 1], dtype=np.float32)
        self.dt = float(self.robot.dt)
        self._completed: list[str] = []
        self._steps = 0

    @staticmethod
    def _read_object_noise_amp() -> np.ndarray:
        # franka_config.xml lists per-qpos noise amplitudes; entries qpos9..qpos29 are the objects.
        cfg = osp.join(osp.dirname(_gk.__file__), "../assets/kitchen_franka/franka_assets/franka_config.xml")
        root, _ = get_config_root_node(config_file_name=cfg)
        return np.array([read_config_from_node(root, f"qpos{i}", "pos_noise_amp", float)[0]
                         for i in range(N_ROBOT_QPOS, N_QPOS)])

    # -- state ----------------------------------------------------------------------------------
    @property
    def qpos(self) -> np.ndarray:
        """Noise-free simulator qpos (30)."""
        return self.robot.data.qpos[:N_QPOS].copy()

    @property
    def completed_tasks(self) -> list[str]:
        return list(self._completed)

    def set_control_reference(self, robot_qpos: np.ndarray) -> None:
        """Set the robot qpos (9) that the next step's velocity controller integrates from.

        The controller's position target is ``last observed robot qpos + velocity * dt``; the
        observed qpos carries the observation noise. Replaying a recording with its recorded
        (noisy) observations as the reference reproduces the control inputs it was recorded with.
        """
        ref = np.asarray(robot_qpos, dtype=np.float64)
        if ref.shape != (N_ROBOT_QPOS,):
            raise ValueError(f"robot_qpos must have shape ({N_ROBOT_QPOS},), got {ref.shape}")
        self.robot._last_robot_qpos = ref.copy()

    def _obs(self) -> np.ndarray:
        robot = np.asarray(self.robot._last_robot_qpos, dtype=np.float64)  # noisy, also drives the controller
        noise = self.robot.np_random.uniform(-1.0, 1.0, size=N_OBJECT_QPOS)
        objects = self.robot.data.qpos[N_ROBOT_QPOS:N_QPOS] + self.object_noise_ratio * self._object_noise_amp * noise
        return np.concatenate([robot, objects, self._goal]).astype(np.float32)

    def _info(self, step_completions: list[str]) -> dict[str, Any]:
        return {"is_success": len(self._completed) == len(self.tasks), "completed_tasks": list(self._completed),
                "n_completed": len(self._completed), "step_task_completions": step_completions,
                "tasks_to_complete": [t for t in self.tasks if t not in self._completed]}

    # -- gym API --------------------------------------------------------------------------------
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        super().reset(seed=seed)
        self.kitchen.reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"qpos", "qvel"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; expected 'qpos' (30,) and/or 'qvel' (29,)")
        if options:
            qpos = np.asarray(options.get("qpos", self.robot.data.qpos), dtype=np.float64)
            qvel = np.asarray(options.get("qvel", np.zeros(N_QVEL)), dtype=np.float64)
            if qpos.shape != (N_QPOS,) or qvel.shape != (N_QVEL,):
                raise ValueError(f"reset options need qpos of shape ({N_QPOS},) and qvel of shape ({N_QVEL},), "
                                 f"got {qpos.shape} and {qvel.shape}")
            self.robot.set_state(qpos, qvel)
            self.robot._get_obs()  # refresh the (noisy) last observed robot qpos used by the controller
        self._completed = []
        self._steps = 0
        return self._obs(), self._info([])

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (ACTION_DIM,):
            what = "joint velocities in [-1, 1]" if self.action_mode == "velocity" else "joint position targets, rad"
            raise ValueError(f"action must have shape ({ACTION_DIM},) ({what}), got shape {action.shape}")
        if not np.all(np.isfinite(action)):
            raise ValueError(f"action must be finite, got {action}")
        if self.action_mode == "absolute":
            action = position_targets_to_velocity(self.robot._last_robot_qpos, action)
        self.robot.step(action)  # clip, velocity -> position target, 40 substeps
        self._steps += 1
        open_tasks = [t for t in self.tasks if t not in self._completed]
        now = task_completions(self.robot.data.qpos[:N_QPOS], open_tasks)
        self._completed.extend(now)
        obs = self._obs()
        terminated = self.terminate_on_tasks_completed and len(self._completed) == len(self.tasks)
        truncated = self._steps >= self.max_episode_steps and not terminated
        return obs, float(len(now)), bool(terminated), bool(truncated), self._info(now)

    def render(self) -> np.ndarray | None:
        if self.render_mode is None:
            return None
        return self.kitchen.render()

    def close(self) -> None:
        self.kitchen.close()
