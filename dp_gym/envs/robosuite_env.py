"""Gymnasium adapter for the robomimic tasks on robosuite (Lift, Can, Square, Transport, ToolHang).

Our own adapter (robosuite's ``GymWrapper`` targets the old gym API). What it does:

* robosuite env with Panda robot(s), ``OSC_POSE`` arm control at 20 Hz, sparse success reward,
  ``hard_reset=False`` (the model is built once; resets only reset the simulator state);
* observations: a ``gymnasium.spaces.Dict`` with robomimic's key names; low-dim values are float32
  (``robot0_eef_pos``, ``robot0_eef_quat``, ``robot0_gripper_qpos``, ``object`` = robosuite's
  ``object-state``; ``robot1_*`` for Transport); camera keys ``<camera>_image`` are uint8
  ``(H, W, 3)`` images flipped upright (robosuite/OpenGL renders them upside down);
* actions, per arm: ``delta`` = robosuite's 7-d OSC delta ``[dpos/0.05, drot(axis-angle)/0.5,
  gripper]`` in ``[-1, 1]``, or ``absolute`` = ``[pos(3, world), rot6d(6, world), gripper]``
  (10-d) which is converted to the axis-angle pose the OSC controller takes in absolute mode.
  Both use the world frame (as robomimic's datasets, recorded on robosuite 1.2, do);
* ``info["is_success"]`` from robosuite's ``_check_success``; ``terminated`` on success (as
  robomimic's rollouts stop there; ``terminate_on_success=False`` to keep going); ``truncated``
  after ``max_episode_steps`` (400 for Lift/Can/Square, 700 for Transport/ToolHang, the paper's
  evaluation horizons);
* ``info["abs_action"]``: the absolute action (10-d per arm, rot6d) that reproduces the
  controller goal just set, so delta-action rollouts can be relabelled to absolute actions;
* low-dim observations are a function of the simulator state (robosuite's relative object
  features are refreshed after the object poses, see ``_observe``); like robosuite's own, they are
  read one 2 ms physics substep before the state at the end of a step;
* seeded resets: ``reset(seed=s)`` always gives the same initial state;
  ``reset(options={"initial_state": flat})`` starts from a stored simulator state;
* rendering: ``MUJOCO_GL`` is set to ``egl`` only if unset; the offscreen context is rebuilt
  without multisampling (anti-aliasing) and with reflections off (about 3x faster here).

Example (needs robosuite; slow to build, so skipped by doctest runs)::

    >>> import gymnasium as gym, dp_gym  # doctest: +SKIP
    >>> env = gym.make("dp_gym/Lift-v0", cameras=("agentview",))  # doctest: +SKIP
    >>> obs, info = env.reset(seed=0)  # doctest: +SKIP
    >>> obs["agentview_image"].shape, obs["object"].dtype  # doctest: +SKIP
    ((84, 84, 3), dtype('float32'))
"""

from __future__ import annotations

import copy
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from dp_gym.utils.rotation import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_axis_angle

__all__ = [
    "RobosuiteTaskSpec",
    "ROBOSUITE_TASKS",
    "RobosuiteEnv",
    "ACTION_MODES",
    "default_obs_keys",
    "make_async_vector_env",
    "delta_dim",
    "abs_dim",
    "abs_action_from_pose",
]

ACTION_MODES = ("delta", "absolute")
CONTROL_FREQ = 20
DELTA_DIM = 7  # per arm: dpos 3 + daxis-angle 3 + gripper 1
ABS_DIM = 10  # per arm: pos 3 + rot6d 6 + gripper 1
# Finite bounds of the absolute action space (world frame, metres). Actions are not clipped to them
# by robosuite; they only describe where a sensible target lies (the tables are ~0.8-0.9 m high).
ABS_POS_LOW, ABS_POS_HIGH = -2.0, 2.0


@dataclass(frozen=True)
class RobosuiteTaskSpec:
    """How to build one robomimic task in robosuite 1.5.

    Example:
        >>> ROBOSUITE_TASKS["TwoArmTransport"].n_arms
        2
    """

    env_name: str
    robots: tuple[str, ...] = ("Panda",)
    horizon: int = 400
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def n_arms(self) -> int:
        return len(self.robots)


ROBOSUITE_TASKS: dict[str, RobosuiteTaskSpec] = {
    "Lift": RobosuiteTaskSpec("Lift", horizon=400),
    "PickPlaceCan": RobosuiteTaskSpec("PickPlaceCan", horizon=400),
    "NutAssemblySquare": RobosuiteTaskSpec("NutAssemblySquare", horizon=400),
    # robomimic's Transport uses two Pandas facing each other ("single-arm-opposed" in 1.2).
    "TwoArmTransport": RobosuiteTaskSpec("TwoArmTransport", robots=("Panda", "Panda"), horizon=700,
                                         env_kwargs={"env_configuration": "opposed"}),
    "ToolHang": RobosuiteTaskSpec("ToolHang", horizon=700),
}


def default_obs_keys(n_arms: int) -> tuple[str, ...]:
    """robomimic's low-dim observation keys.

    Example:
        >>> default_obs_keys(1)
        ('robot0_eef_pos', 'robot0_eef_quat', 'robot0_gripper_qpos', 'object')
    """
    keys: list[str] = []
    for i in range(n_arms):
        keys += [f"robot{i}_eef_pos", f"robot{i}_eef_quat", f"robot{i}_gripper_qpos"]
    return tuple(keys) + ("object",)


def delta_dim(n_arms: int) -> int:
    return DELTA_DIM * n_arms


def abs_dim(n_arms: int) -> int:
    return ABS_DIM * n_arms


def _import_robosuite():
    """Import robosuite with ``MUJOCO_GL`` handled explicitly (``egl`` unless the user set one)."""
    os.environ.setdefault("MUJOCO_GL", "egl")
    if os.environ["MUJOCO_GL"] == "egl":
        os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
    try:
        import robosuite
        from robosuite.controllers import load_composite_controller_config
    except ImportError as e:  # pragma: no cover - depends on the installation
        raise ImportError("the robosuite tasks need the [robosuite] extra: pip install 'dp-gym[robosuite]'") from e
    return robosuite, load_composite_controller_config


class RobosuiteEnv(gym.Env):
    """One robomimic task as a Gymnasium env (see the module docstring for the conventions).

    Args:
        task: a key of :data:`ROBOSUITE_TASKS`.
        obs_keys: low-dim observation keys (robosuite names, plus ``object``); default robomimic's.
        cameras: robosuite camera names whose images to observe (``agentview``,
            ``robot0_eye_in_hand``, ...); observed as ``<camera>_image``.
        image_size: camera image height = width.
        action_mode: ``delta`` or ``absolute`` (see the module docstring).
        max_episode_steps: truncation horizon; default the task's evaluation horizon.
        terminate_on_success: end the episode (``terminated``) when the task succeeds.
        render_mode: ``None`` or ``rgb_array`` (``render()`` returns an upright frame).
        render_size / render_camera: size and camera of ``render()`` frames.
        robosuite_kwargs: extra keyword arguments for ``robosuite.make``.

    Example:
        >>> RobosuiteEnv(task="Stack")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        ValueError: unknown robosuite task 'Stack'; available: [...]
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_FREQ}

    def __init__(
        self,
        task: str = "Lift",
        obs_keys: Sequence[str] | None = None,
        cameras: Sequence[str] = (),
        image_size: int = 84,
        action_mode: str = "delta",
        max_episode_steps: int | None = None,
        terminate_on_success: bool = True,
        render_mode: str | None = None,
        render_size: int = 256,
        render_camera: str = "agentview",
        robosuite_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if task not in ROBOSUITE_TASKS:
            raise ValueError(f"unknown robosuite task {task!r}; available: {sorted(ROBOSUITE_TASKS)}")
        if action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {action_mode!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        if int(image_size) <= 0:
            raise ValueError(f"image_size must be positive, got {image_size}")
        self.spec_task = ROBOSUITE_TASKS[task]
        self.task = task
        self.n_arms = self.spec_task.n_arms
        self.obs_keys = tuple(obs_keys) if obs_keys is not None else default_obs_keys(self.n_arms)
        self.cameras = tuple(cameras)
        self.image_size = int(image_size)
        self.action_mode = action_mode
        self.max_episode_steps = int(max_episode_steps or self.spec_task.horizon)
        self.terminate_on_success = bool(terminate_on_success)
        self.render_mode = render_mode
        self.render_size = int(render_size)
        self.render_camera = render_camera

        suite, load_cfg = _import_robosuite()
        cfg = load_cfg(robot="Panda")
        arm = cfg["body_parts"]["right"]
        if arm.get("type") != "OSC_POSE":
            raise RuntimeError(f"expected robosuite's default Panda controller to be OSC_POSE, got {arm.get('type')!r}")
        arm["input_type"] = "delta" if action_mode == "delta" else "absolute"
        arm["input_ref_frame"] = "world"
        offscreen = bool(self.cameras) or render_mode == "rgb_array"
        kwargs: dict[str, Any] = dict(
            robots=list(self.spec_task.robots),
            controller_configs=[copy.deepcopy(cfg) for _ in self.spec_task.robots],
            has_renderer=False,
            has_offscreen_renderer=offscreen,
            use_camera_obs=bool(self.cameras),
            use_object_obs=True,
            reward_shaping=False,
            control_freq=CONTROL_FREQ,
            horizon=self.max_episode_steps,
            ignore_done=True,  # truncation is ours
            hard_reset=False,
            seed=0,  # model-level randomness (built once) is fixed; resets are reseeded below
            **self.spec_task.env_kwargs,
        )
        if self.cameras:
            kwargs.update(camera_names=list(self.cameras), camera_heights=self.image_size,
                          camera_widths=self.image_size, camera_depths=False)
        kwargs.update(robosuite_kwargs or {})
        self._offscreen = offscreen
        self._closed = False
        self._steps = 0
        self._env = suite.make(self.spec_task.env_name, **kwargs)
        try:
            self._build_spaces()
        except BaseException:
            self.close()  # do not leak the simulator and its GL context
            raise

    def _build_spaces(self) -> None:
        if self._offscreen:
            self._configure_fast_rendering()
        raw = self._env._get_observations(force_update=True)
        missing = [k for k in self.obs_keys if self._raw_key(k) not in raw]
        if missing:
            available = sorted(["object"] + [k for k in raw if not k.endswith("_image") and k != "object-state"])
            raise KeyError(f"observation keys {missing} not provided by robosuite {self.task}; available: {available}")
        obs_spaces: dict[str, spaces.Space] = {}
        for k in self.obs_keys:
            shape = np.asarray(raw[self._raw_key(k)]).shape
            obs_spaces[k] = spaces.Box(-np.inf, np.inf, shape=shape, dtype=np.float32)
        for cam in self.cameras:
            obs_spaces[f"{cam}_image"] = spaces.Box(0, 255, shape=(self.image_size, self.image_size, 3), dtype=np.uint8)
        self.observation_space = spaces.Dict(obs_spaces)

        if self.action_mode == "delta":
            self.action_space = spaces.Box(-1.0, 1.0, shape=(delta_dim(self.n_arms),), dtype=np.float32)
        else:
            low = np.tile(np.r_[[ABS_POS_LOW] * 3, [-1.0] * 6, [-1.0]], self.n_arms)
            high = np.tile(np.r_[[ABS_POS_HIGH] * 3, [1.0] * 6, [1.0]], self.n_arms)
            self.action_space = spaces.Box(low.astype(np.float32), high.astype(np.float32), dtype=np.float32)
        rs_low, _ = self._env.action_spec
        if len(rs_low) != delta_dim(self.n_arms):
            raise RuntimeError(f"robosuite {self.task} expects {len(rs_low)} action dims, expected {delta_dim(self.n_arms)}")

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _raw_key(key: str) -> str:
        return "object-state" if key == "object" else key

    @property
    def robosuite_env(self):
        """The wrapped robosuite environment (for experts and replay)."""
        return self._env

    def _configure_fast_rendering(self) -> None:
        import mujoco

        sim = self._env.sim
        ctx = sim._render_context_offscreen
        if ctx is None:
            raise RuntimeError("robosuite did not create an offscreen render context")
        ctx.gl_ctx.make_current()
        sim.model.vis.quality.offsamples = 0  # no multisample anti-aliasing
        ctx.con.free()
        ctx._set_mujoco_context_and_buffers()  # rebuild the MjrContext so offsamples takes effect
        ctx.scn.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0

    def _make_current(self) -> None:
        """Make this env's GL context current: robosuite only does so when it creates the context,
        so with several envs in one process (or after another env was closed, which releases the
        thread's context) rendering would otherwise read another context's buffers."""
        ctx = self._env.sim._render_context_offscreen if self._offscreen else None
        if ctx is not None:
            ctx.gl_ctx.make_current()

    def _observe(self) -> dict[str, np.ndarray]:
        """Current observation with every low-dim value a function of the current simulator state.

        robosuite's relative object features (e.g. Can's ``Can_to_robot0_eef_pos``, part of
        ``object-state``) read the object pose from the observation cache *before* that pose is
        refreshed in the same update, so they lag one control step and are zeros right after a
        reset. Re-running the low-dim sensors once (cheap; images are not re-rendered) fixes that.
        """
        env = self._env
        for ob in env._observables.values():
            if ob.modality != "image" and ob.is_enabled():
                ob.update(timestep=0.0, obs_cache=env._obs_cache, force=True)
        return self._convert_obs(env._get_observations())

    def _convert_obs(self, raw: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        obs = {k: np.asarray(raw[self._raw_key(k)], dtype=np.float32) for k in self.obs_keys}
        for cam in self.cameras:
            obs[f"{cam}_image"] = np.ascontiguousarray(np.asarray(raw[f"{cam}_image"], dtype=np.uint8)[::-1])
        return obs

    def to_robosuite_action(self, action: np.ndarray) -> np.ndarray:
        """Our action (delta or absolute rot6d) -> the 7-d-per-arm vector robosuite takes."""
        a = np.asarray(action, dtype=np.float64)
        if a.shape != self.action_space.shape:
            raise ValueError(f"action must have shape {self.action_space.shape} ({self.action_mode} mode, "
                             f"{self.n_arms} arm(s)), got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError("action contains NaN or inf")
        if self.action_mode == "delta":
            return a
        per_arm = a.reshape(self.n_arms, ABS_DIM)
        aa = rot6d_to_axis_angle(per_arm[:, 3:9])
        return np.concatenate([per_arm[:, :3], aa, per_arm[:, 9:10]], axis=-1).reshape(-1)

    def current_abs_action(self, gripper: np.ndarray) -> np.ndarray:
        """Absolute action (10-d per arm) matching each arm controller's current goal pose."""
        gripper = np.asarray(gripper, dtype=np.float64).reshape(self.n_arms)
        out = []
        for i, robot in enumerate(self._env.robots):
            ctrl = robot.composite_controller.part_controllers["right"]
            if ctrl.goal_pos is None or ctrl.goal_ori is None:
                pos, ori = np.asarray(ctrl.ref_pos), np.asarray(ctrl.ref_ori_mat)
            else:
                pos, ori = np.asarray(ctrl.goal_pos), np.asarray(ctrl.goal_ori)
            out.append(np.r_[pos, matrix_to_rot6d(ori), gripper[i]])
        return np.concatenate(out).astype(np.float32)

    def is_success(self) -> bool:
        return bool(self._env._check_success())

    def get_state(self) -> np.ndarray:
        """Flattened simulator state ``[time, qpos, qvel]`` (robomimic's ``states``)."""
        return np.asarray(self._env.sim.get_state().flatten(), dtype=np.float64)

    def set_state(self, state: np.ndarray) -> dict[str, np.ndarray]:
        """Set the simulator to a flattened state (as stored in robomimic's ``states``) and return
        the observation there, without stepping."""
        state = np.asarray(state, dtype=np.float64)
        sim = self._env.sim
        self._make_current()
        expected = 1 + sim.model.nq + sim.model.nv
        if state.shape != (expected,):
            raise ValueError(f"state must have shape ({expected},) = 1 + nq + nv for robosuite {self.task}, "
                             f"got {state.shape}; was it recorded with a different model?")
        sim.set_state_from_flattened(state)
        sim.forward()
        for robot in self._env.robots:  # controllers read joint state from their own cache
            robot.composite_controller.update_state()
        self._env._get_observations(force_update=True)
        return self._observe()

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        if self._closed:
            raise RuntimeError("reset() called on a closed RobosuiteEnv")
        super().reset(seed=seed)
        # robosuite samples placements / joint noise from env.rng (shared by its samplers); reseed it
        # in place from our np_random so reset(seed=s) is reproducible regardless of history.
        sub_seed = int(self.np_random.integers(0, 2**63 - 1))
        self._env.rng.bit_generator.state = np.random.default_rng(sub_seed).bit_generator.state
        self._make_current()
        self._env.reset()
        obs = self._observe()
        if options and options.get("initial_state") is not None:
            obs = self.set_state(options["initial_state"])
        self._steps = 0
        return obs, {"is_success": self.is_success()}

    def step(self, action):
        if self._closed:
            raise RuntimeError("step() called on a closed RobosuiteEnv")
        rs_action = self.to_robosuite_action(action)
        self._make_current()
        _, reward, _, _ = self._env.step(rs_action)
        self._steps += 1
        success = self.is_success()
        grip = rs_action.reshape(self.n_arms, DELTA_DIM)[:, -1]
        info = {"is_success": success, "abs_action": self.current_abs_action(grip)}
        terminated = success and self.terminate_on_success
        truncated = (not terminated) and self._steps >= self.max_episode_steps
        return self._observe(), float(reward), terminated, truncated, info

    def render(self):
        if self.render_mode != "rgb_array":
            return None
        self._make_current()
        frame = self._env.sim.render(camera_name=self.render_camera, width=self.render_size, height=self.render_size)
        return np.ascontiguousarray(frame[::-1])

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        sim = getattr(self._env, "sim", None)
        ctx = getattr(sim, "_render_context_offscreen", None) if sim is not None else None
        if ctx is not None:
            ctx.gl_ctx.make_current()
            ctx.con.free()
            ctx.gl_ctx.free()
        self._env.close()


def abs_action_from_pose(pos: np.ndarray, axis_angle: np.ndarray, gripper: float) -> np.ndarray:
    """Build one arm's 10-d absolute action from a world position and axis-angle orientation.

    Example:
        >>> abs_action_from_pose(np.zeros(3), np.zeros(3), -1.0).round(3).tolist()
        [0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0]
    """
    return np.r_[np.asarray(pos, float), matrix_to_rot6d(axis_angle_to_matrix(axis_angle)), float(gripper)].astype(np.float32)


def make_async_vector_env(env_id: str, n_envs: int, seed_offset: int = 0, **kwargs: Any) -> gym.vector.AsyncVectorEnv:
    """Parallel envs in worker processes started with ``spawn``: no process is forked after the
    parent may have created a GL context (forking a live EGL/GLFW context crashes).

    Example (slow, needs robosuite)::

        >>> venv = make_async_vector_env("dp_gym/Lift-v0", 2)  # doctest: +SKIP
    """
    if n_envs < 1:
        raise ValueError(f"n_envs must be >= 1, got {n_envs}")

    def factory(env_id: str = env_id, kwargs: dict = dict(kwargs)) -> Callable[[], gym.Env]:
        def make() -> gym.Env:
            import dp_gym  # noqa: F401  (registers ids in the spawned worker)

            return gym.make(env_id, **kwargs)

        return make

    return gym.vector.AsyncVectorEnv([factory() for _ in range(n_envs)], context="spawn")
