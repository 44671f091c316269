"""Push-T, faithful to the environment of the Diffusion Policy paper (Chi et al., RSS 2023).

The simulator is gym-pusht's ``PushTEnv`` (pymunk + pygame + shapely), used as a library: its scene
construction (walls, agent disc, T block, goal, collision handler), PD-controlled physics step,
coverage computation and pygame drawing are the same as the paper's env. This module subclasses it
and overrides what differs from the paper's evaluation setup:

* start states: gym-pusht samples them with ``self.np_random``; the paper's env (legacy mode, the
  evaluation default) uses ``np.random.RandomState(seed)`` and a Gaussian angle. Reimplemented here.
* observations: float32 vectors; a ``keypoints`` observation (the 9 block keypoints of the
  dataset's ``data/keypoint`` + agent position) that gym-pusht does not have.
* truncation after ``max_episode_steps`` inside the env, input validation, ``render_size``.

Example:
    >>> import numpy as np
    >>> from dp_gym.envs.pusht import PushTEnv
    >>> env = PushTEnv(obs_type="state")
    >>> obs, info = env.reset(seed=100000)
    >>> obs.shape, obs.dtype
    ((5,), dtype('float32'))
    >>> obs, reward, terminated, truncated, info = env.step(np.array([256.0, 256.0], dtype=np.float32))
    >>> sorted(k for k in info if k in ("coverage", "is_success"))
    ['coverage', 'is_success']
    >>> env.step(np.zeros(3))
    Traceback (most recent call last):
    ...
    ValueError: action must have shape (2,) (absolute target [x, y] in pixels, 0..512), got shape (3,)
"""

from __future__ import annotations

import warnings
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

with warnings.catch_warnings():
    # pygame (imported by gym_pusht) warns about pkg_resources on import.
    warnings.simplefilter("ignore", DeprecationWarning)
    warnings.simplefilter("ignore", UserWarning)
    import cv2
    import pygame
    from gym_pusht.envs.pusht import PushTEnv as _GymPushTEnv
    from gym_pusht.envs.pusht import pymunk_to_shapely

__all__ = ["PushTEnv", "keypoints_from_state", "BLOCK_LOCAL_KEYPOINTS", "OBS_TYPES", "GOAL_POSE"]

OBS_TYPES = ("state", "keypoints", "pixels", "pixels_agent_pos")

WINDOW_SIZE = 512
GOAL_POSE = np.array([256.0, 256.0, np.pi / 4])  # x, y, theta of the goal T (same as the paper's env)
SUCCESS_THRESHOLD = 0.95  # coverage above which the episode is a success
SIM_DT = 0.01  # 100 Hz physics
CONTROL_HZ = 10  # 10 Hz control: one env step = 10 physics substeps

# The T block's 9 keypoints in its body frame (pixels; x right, y down, origin = body position, which
# is the middle of the top edge of the T's bar). They are what the paper's keypoint env observes and
# what the dataset stores in ``data/keypoint``: world = R(block_angle) @ local + block_position.
#
# Derived from pusht_cchi_v7_replay.zarr by least squares: for every frame, local = R(-angle) @
# (data/keypoint - data/state[2:4]); the least-squares local points are the mean of that over frames.
# Only the 13 379 frames where the block does not move until the next frame were used, because on
# frames where it is being pushed the dataset's keypoints were recorded at a slightly different pose
# than data/state (see tests/test_pusht_env.py). Residual on those frames: max 1.6e-5 px (float32
# noise), i.e. these constants are exact to the precision of the data.
BLOCK_LOCAL_KEYPOINTS = np.array(
    [
        [9.269786, 90.040974],
        [-60.983472, -1.186730],
        [60.912756, -1.393364],
        [-0.270504, 25.543625],
        [-14.064927, 122.815854],
        [39.002738, 32.857404],
        [-39.966415, 32.729655],
        [-16.824344, 62.863179],
        [23.541461, -1.700288],
    ],
    dtype=np.float64,
)
BLOCK_LOCAL_KEYPOINTS.setflags(write=False)


def keypoints_from_state(state: np.ndarray) -> np.ndarray:
    """World coordinates of the T block's 9 keypoints for Push-T states.

    Args:
        state: array of shape ``(..., 5)``: ``[agent_x, agent_y, block_x, block_y, block_angle]``
            (only the block pose, the last three entries, is used).

    Returns:
        float64 array of shape ``(..., 9, 2)``, the same layout as the dataset's ``data/keypoint``.

    Raises:
        ValueError: if the last dimension of ``state`` is not 5.
    """
    state = np.asarray(state, dtype=np.float64)
    if state.ndim == 0 or state.shape[-1] != 5:
        raise ValueError(
            f"state must have shape (..., 5) [agent_x, agent_y, block_x, block_y, block_angle], got shape {state.shape}"
        )
    cos = np.cos(state[..., 4])[..., None]
    sin = np.sin(state[..., 4])[..., None]
    lx, ly = BLOCK_LOCAL_KEYPOINTS[:, 0], BLOCK_LOCAL_KEYPOINTS[:, 1]
    x = cos * lx - sin * ly + state[..., 2:3]
    y = sin * lx + cos * ly + state[..., 3:4]
    return np.stack([x, y], axis=-1)


def _as_state(value: Any, what: str) -> np.ndarray:
    arr = np.asarray(value, dtype=np.float64)
    if arr.shape != (5,):
        raise ValueError(
            f"{what} must have shape (5,) [agent_x, agent_y, block_x, block_y, block_angle], got shape {arr.shape}"
        )
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{what} must be finite, got {arr.tolist()}")
    if np.any(arr[:4] < 0) or np.any(arr[:4] > WINDOW_SIZE):
        raise ValueError(f"{what}: agent and block positions must lie in the world [0, {WINDOW_SIZE}], got {arr.tolist()}")
    return arr


class PushTEnv(_GymPushTEnv):
    """Push-T of the Diffusion Policy paper as a Gymnasium env.

    A disc agent (radius 15, kinematic) is driven by a PD controller (kp=100, kv=20) toward the
    absolute target position given as action; one ``step`` is 10 physics substeps of 1/100 s
    (10 Hz control). The agent must push a T block onto the goal pose (256, 256, pi/4) in a
    512 x 512 walled world.

    Args:
        obs_type: ``"state"`` -> float32 (5,) ``[agent_x, agent_y, block_x, block_y, block_angle % 2pi]``;
            ``"keypoints"`` -> float32 (20,): the 9 block keypoints (x, y pairs, as in the dataset's
            ``data/keypoint``) then the agent position; ``"pixels"`` -> uint8 (96, 96, 3);
            ``"pixels_agent_pos"`` -> ``{"pixels": uint8 (96, 96, 3), "agent_pos": float32 (2,)}``.
        render_mode: ``"rgb_array"`` (``render()`` returns an RGB uint8 frame) or ``None``.
        render_size: side of the frames ``render()`` returns (the 96 x 96 observation is unaffected).
        max_episode_steps: the episode is truncated after this many steps (``None``: never).

    Reward is ``clip(coverage / 0.95, 0, 1)``, where coverage is the area of the block inside the
    goal T divided by the goal's area; ``terminated`` is True when coverage > 0.95 (the paper's env
    sets ``done`` then), ``truncated`` when ``max_episode_steps`` steps have been taken. ``info``
    carries ``coverage`` (float) and ``is_success`` (bool), ``block_pose`` and ``agent_pos``, and
    after a step also ``n_contacts``. Actions are absolute targets in [0, 512]^2 (out-of-range ones
    are clipped; wrong shapes and non-finite values raise ``ValueError``). Block coordinates and
    keypoints are unbounded in the observation space: the agent can squeeze the block through a wall.

    ``reset(seed=s)`` gives exactly the start state of the paper's env for seed ``s`` (legacy mode,
    its evaluation default): ``RandomState(s)`` draws agent x, y in [50, 450), block x, y in
    [100, 400) and angle ``randn() * 2pi - pi``; the block position is set before its angle (so the
    block turns about its centre of gravity and its observed position differs from the drawn one,
    as in the paper), then one 1/100 s physics step is taken. ``reset()`` without a seed draws a
    fresh legacy seed from the env's RNG. ``reset(options={"reset_to_state": s5})`` places the scene
    exactly at ``s5`` (angle set before position, so the observed state equals ``s5`` unless the
    agent overlaps the block); add ``"legacy_order": True`` to apply the paper's order instead.

    Example:
        >>> import numpy as np
        >>> env = PushTEnv(obs_type="keypoints")
        >>> obs, info = env.reset(options={"reset_to_state": [50.0, 50.0, 256.0, 256.0, np.pi / 4]})
        >>> obs.shape, info["is_success"]
        ((20,), True)
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": CONTROL_HZ}

    def __init__(
        self,
        obs_type: str = "state",
        render_mode: str | None = None,
        render_size: int = 256,
        max_episode_steps: int | None = 300,
    ) -> None:
        if obs_type not in OBS_TYPES:
            raise ValueError(f"obs_type must be one of {OBS_TYPES}, got {obs_type!r}")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}")
        if int(render_size) <= 0:
            raise ValueError(f"render_size must be a positive int, got {render_size!r}")
        if max_episode_steps is not None and int(max_episode_steps) <= 0:
            raise ValueError(f"max_episode_steps must be a positive int or None, got {max_episode_steps!r}")
        # gym-pusht's constructor sets PD gains (100, 20), dt = 0.01, control_hz = metadata fps (10),
        # the 96 x 96 observation size and calls our _initialize_observation_space.
        super().__init__(
            obs_type=obs_type,
            render_mode=render_mode,
            block_cog=None,
            damping=None,
            observation_width=96,
            observation_height=96,
            visualization_width=int(render_size),
            visualization_height=int(render_size),
        )
        self.render_size = int(render_size)
        self.max_episode_steps = None if max_episode_steps is None else int(max_episode_steps)
        self.success_threshold = SUCCESS_THRESHOLD
        assert self.dt == SIM_DT and self.control_hz == CONTROL_HZ and (self.k_p, self.k_v) == (100, 20)
        self._elapsed_steps = 0
        self._needs_reset = True
        self._goal_geom: tuple[tuple, Any] | None = None  # (key, shapely goal T)
        self._coverage: tuple[tuple, float] | None = None  # (key, coverage of that block pose)

    # ------------------------------------------------------------------ spaces
    def _initialize_observation_space(self) -> None:
        # The agent stays in [0, 512]: actions are clipped to [0, 512] and the PD loop (kp=100, kv=20,
        # semi-implicit Euler at 100 Hz) has real eigenvalues 0.927 / 0.863 and a positive impulse
        # response, so it never overshoots its targets. The block is only kept in by the walls, and
        # the kinematic agent can squeeze it through them (seen with bang-bang actions: block x down
        # to -7 px, keypoints to -62 px); with zero damping it may then drift off, so block
        # coordinates and keypoints are unbounded (gym-pusht's [0, 512] would be violated).
        inf = np.inf
        pos = spaces.Box(low=0.0, high=float(WINDOW_SIZE), shape=(2,), dtype=np.float32)
        pixels = spaces.Box(low=0, high=255, shape=(96, 96, 3), dtype=np.uint8)
        if self.obs_type == "state":
            self.observation_space = spaces.Box(
                low=np.array([0.0, 0.0, -inf, -inf, 0.0], dtype=np.float32),
                high=np.array([WINDOW_SIZE, WINDOW_SIZE, inf, inf, 2 * np.pi], dtype=np.float32),
                dtype=np.float32,
            )
        elif self.obs_type == "keypoints":
            self.observation_space = spaces.Box(
                low=np.array([-inf] * 18 + [0.0, 0.0], dtype=np.float32),
                high=np.array([inf] * 18 + [WINDOW_SIZE, WINDOW_SIZE], dtype=np.float32),
                dtype=np.float32,
            )
        elif self.obs_type == "pixels":
            self.observation_space = pixels
        else:
            self.observation_space = spaces.Dict({"pixels": pixels, "agent_pos": pos})

    # ----------------------------------------------------------------- helpers
    def _state(self) -> np.ndarray:
        """Current ``[agent_x, agent_y, block_x, block_y, block_angle]`` (float64, raw angle)."""
        return np.array([*self.agent.position, *self.block.position, self.block.angle], dtype=np.float64)

    def _render_image(self, size: int, render_action: bool) -> np.ndarray:
        # gym-pusht's drawing = the paper's: white 512x512 pygame canvas, goal T in LightGreen,
        # then pymunk debug draw of walls, agent and block; cv2.resize (bilinear) to size x size.
        screen = self._draw()
        if render_action:  # videos: gym-pusht also draws the commanded position
            return self._get_img(screen, width=size, height=size, render_action=True)
        # The same pixels as gym-pusht's _get_img: it copies the canvas through a strided
        # (x, y) view (~1.3 ms at 512x512); the canvas's row-major bytes take ~0.1 ms.
        canvas = np.frombuffer(pygame.image.tobytes(screen, "RGB"), np.uint8).reshape(screen.get_height(), screen.get_width(), 3)
        return cv2.resize(canvas, (size, size))

    def get_obs(self) -> np.ndarray | dict[str, np.ndarray]:
        state = self._state()
        if self.obs_type == "state":
            out = state.copy()
            out[4] = out[4] % (2 * np.pi)
            return out.astype(np.float32)
        if self.obs_type == "keypoints":
            return np.concatenate([keypoints_from_state(state).reshape(18), state[:2]]).astype(np.float32)
        pixels = self._render_image(96, render_action=False)
        if self.obs_type == "pixels":
            return pixels
        return {"pixels": pixels, "agent_pos": state[:2].astype(np.float32)}

    def _get_coverage(self) -> float:
        """gym-pusht's coverage (area of block ∩ goal T / goal area, same shapely computation),
        computed once per block pose: gym-pusht's step asks for it and then calls our _get_info,
        which needs it too. The goal polygon is built once per goal pose and block."""
        block = self.block
        key = (id(block), *block.position, block.angle)
        if self._coverage is not None and self._coverage[0] == key:
            return self._coverage[1]
        goal_key = (id(block), *np.asarray(self.goal_pose, dtype=np.float64).tolist())
        if self._goal_geom is None or self._goal_geom[0] != goal_key:
            self._goal_geom = (goal_key, pymunk_to_shapely(self.get_goal_pose_body(self.goal_pose), block.shapes))
        goal = self._goal_geom[1]
        coverage = goal.intersection(pymunk_to_shapely(block, block.shapes)).area / goal.area
        self._coverage = (key, coverage)
        return coverage

    def _get_info(self) -> dict[str, Any]:
        coverage = float(self._get_coverage())
        return {
            "coverage": coverage,
            "is_success": bool(coverage > self.success_threshold),
            "agent_pos": np.array(self.agent.position, dtype=np.float64),
            "block_pose": np.array([*self.block.position, self.block.angle], dtype=np.float64),
        }

    @staticmethod
    def legacy_start_state(seed: int) -> np.ndarray:
        """The start state the paper's env draws for ``seed`` (before it is applied to the scene)."""
        rs = np.random.RandomState(seed=seed)
        return np.array(
            [
                rs.randint(50, 450),
                rs.randint(50, 450),
                rs.randint(100, 400),
                rs.randint(100, 400),
                rs.randn() * 2 * np.pi - np.pi,
            ],
            dtype=np.float64,
        )

    def _set_state_exact(self, state: np.ndarray) -> None:
        self.agent.position = state[:2].tolist()
        self.block.angle = float(state[4])  # angle first: rotation is about the centre of gravity
        self.block.position = state[2:4].tolist()
        self.space.step(self.dt)

    # --------------------------------------------------------------- gym API
    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[np.ndarray | dict[str, np.ndarray], dict[str, Any]]:
        gym.Env.reset(self, seed=seed)
        options = {} if options is None else dict(options)
        unknown = set(options) - {"reset_to_state", "legacy_order"}
        if unknown:
            raise ValueError(f"unknown reset options {sorted(unknown)}; expected 'reset_to_state' and/or 'legacy_order'")
        self._setup()  # gym-pusht: fresh pymunk space, walls, agent, T block, goal pose
        self._last_action = None
        self._elapsed_steps = 0
        self._needs_reset = False

        if options.get("reset_to_state") is not None:
            state = _as_state(options["reset_to_state"], "options['reset_to_state']")
            if options.get("legacy_order", False):
                self._set_state(state)  # gym-pusht: position, then angle, then one 1/100 s step
            else:
                self._set_state_exact(state)
        else:
            if seed is None:
                # The paper's env reuses its seed on every reset; continue the Gymnasium RNG stream.
                seed = int(self.np_random.integers(0, 2**31 - 1))
            if not 0 <= int(seed) < 2**32:
                raise ValueError(f"seed must be in [0, 2**32) for the legacy RandomState, got {seed}")
            # gym-pusht's _set_state is the paper's legacy one: position, then angle, then a 1/100 s step.
            self._set_state(self.legacy_start_state(int(seed)))

        return self.get_obs(), self._get_info()

    def step(
        self, action: Any
    ) -> tuple[np.ndarray | dict[str, np.ndarray], float, bool, bool, dict[str, Any]]:
        if self._needs_reset:
            raise RuntimeError("call reset() before step()")
        act = np.asarray(action, dtype=np.float64)
        if act.shape != (2,):
            raise ValueError(
                f"action must have shape (2,) (absolute target [x, y] in pixels, 0..512), got shape {act.shape}"
            )
        if not np.all(np.isfinite(act)):
            raise ValueError(f"action must be finite (absolute target [x, y] in pixels, 0..512), got {act.tolist()}")
        # In-range actions are used unchanged (as in the paper); out-of-range ones are clipped so the
        # agent stays in the world and in the observation space.
        act = np.clip(act, 0.0, float(WINDOW_SIZE))
        self.n_contact_points = 0
        # gym-pusht's step: 10 substeps of PD control + pymunk step, reward and termination exactly
        # as the paper's env; it calls our get_obs/_get_info.
        obs, reward, terminated, _, info = super().step(act)
        self._elapsed_steps += 1
        truncated = self.max_episode_steps is not None and self._elapsed_steps >= self.max_episode_steps
        info["n_contacts"] = int(np.ceil(self.n_contact_points / int(round(1 / (self.dt * self.control_hz)))))
        info["coverage"] = float(info["coverage"])
        info["is_success"] = bool(terminated)
        return obs, float(reward), bool(terminated), bool(truncated), info

    def render(self) -> np.ndarray | None:
        """RGB uint8 ``(render_size, render_size, 3)`` frame with the last action marked (rgb_array mode)."""
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; construct PushTEnv(render_mode='rgb_array')")
            return None
        if self._needs_reset:
            raise RuntimeError("call reset() before render()")
        return self._render_image(self.render_size, render_action=True)
