"""Waypoint-following scripted experts for the robosuite tasks.

An expert is a small state machine over phases (approach, descend, grasp, lift, ...). In every
phase it computes a target gripper pose from the simulator's privileged object poses and servos to
it with robosuite's OSC delta actions: the position step is the error clipped to the episode's
speed, the rotation step the axis-angle error clipped likewise. Per-episode randomisation (speed,
via-point of the approach, hover heights, small grasp offsets, and for some tasks a discrete
grasp strategy) gives the data the variety of human demonstrations.

Example (needs robosuite)::

    >>> from dp_gym.envs.robosuite_env import RobosuiteEnv  # doctest: +SKIP
    >>> from dp_gym.experts import make_expert  # doctest: +SKIP
    >>> env = RobosuiteEnv("Lift"); obs, _ = env.reset(seed=0)  # doctest: +SKIP
    >>> expert = make_expert("lift", env, seed=0); expert.reset()  # doctest: +SKIP
    >>> obs, r, term, trunc, info = env.step(expert.act())  # doctest: +SKIP
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dp_gym.utils.rotation import matrix_to_axis_angle

__all__ = ["ScriptedExpert", "Phase", "yaw_of", "down_rotation", "wrap_angle", "wrist_yaw", "WRIST_YAW_RANGE"]

POS_SCALE = 0.05  # robosuite OSC_POSE: action 1.0 = 5 cm
ROT_SCALE = 0.5  # action 1.0 = 0.5 rad
# Gripper pointing down with fingers closing along world y (robosuite Panda's home orientation).
_DOWN = np.diag([1.0, -1.0, -1.0])


def wrap_angle(a: float, period: float = 2 * np.pi) -> float:
    """Wrap to ``[-period/2, period/2)``.

    Example:
        >>> round(wrap_angle(3 * np.pi / 2), 4)
        -1.5708
    """
    return float((a + period / 2) % period - period / 2)


# Gripper yaws (down_rotation) the Panda reaches from robosuite's home pose with OSC_POSE, measured:
# the last joint (range +-2.9 rad) sits at about 2.32 - yaw, so yaws in about [-33, 299] degrees are
# reachable; we keep a margin. The parallel gripper is symmetric under 180 degrees of yaw.
WRIST_YAW_RANGE = (np.deg2rad(-20.0), np.deg2rad(250.0))


def wrist_yaw(angle: float, period: float = np.pi) -> float:
    """Representative of ``angle`` modulo ``period`` in ``[WRIST_YAW_RANGE[0], +period)``.

    Example:
        >>> round(float(np.rad2deg(wrist_yaw(np.deg2rad(-60.0)))), 1)
        120.0
    """
    lo = WRIST_YAW_RANGE[0]
    return float((angle - lo) % period + lo)


def yaw_of(rot: np.ndarray) -> float:
    """Rotation about world z of a 3x3 matrix (of its local x axis projected on the table)."""
    rot = np.asarray(rot).reshape(3, 3)
    return float(np.arctan2(rot[1, 0], rot[0, 0]))


def down_rotation(yaw: float) -> np.ndarray:
    """Gripper orientation pointing down, turned by ``yaw`` about world z. The fingers close along
    the gripper's local y axis, i.e. along world direction ``yaw - 90deg``."""
    c, s = np.cos(yaw), np.sin(yaw)
    rz = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])
    return rz @ _DOWN


@dataclass
class Phase:
    name: str
    steps: int = 0  # steps spent in this phase so far


class ScriptedExpert:
    """Base class: pose servoing and phase bookkeeping. Subclasses implement :meth:`plan` (called on
    reset) and :meth:`policy` (one step: returns target position, target rotation, gripper)."""

    task: str = ""
    strategies: tuple[str, ...] = ("default",)

    def __init__(self, env, seed: int | None = None) -> None:
        from dp_gym.envs.robosuite_env import RobosuiteEnv

        base = getattr(env, "unwrapped", env)
        if not isinstance(base, RobosuiteEnv):
            raise TypeError(f"expected a RobosuiteEnv (or a wrapper of one), got {type(env).__name__}")
        if base.task != self.task:
            raise ValueError(f"{type(self).__name__} drives task {self.task!r}, got env task {base.task!r}")
        if base.action_mode != "delta":
            raise ValueError("scripted experts emit delta actions; build the env with action_mode='delta'")
        self.env = base
        self.rs = base.robosuite_env
        self.rng = np.random.default_rng(seed)
        self.phase = Phase("init")
        self.strategy = self.strategies[0]
        self.speed = 0.03
        self.rot_speed = 0.15
        self.ki = 0.15
        self._i_err = np.zeros(3)

    # ----------------------------------------------------------- simulator access (privileged)
    @property
    def eef_pos(self) -> np.ndarray:
        return np.array(self.rs.sim.data.site_xpos[self.rs.robots[0].eef_site_id["right"]])

    @property
    def eef_rot(self) -> np.ndarray:
        return np.array(self.rs.sim.data.site_xmat[self.rs.robots[0].eef_site_id["right"]]).reshape(3, 3)

    def body_pose(self, body_id: int) -> tuple[np.ndarray, np.ndarray]:
        d = self.rs.sim.data
        return np.array(d.body_xpos[body_id]), np.array(d.body_xmat[body_id]).reshape(3, 3)

    def site_pos(self, name: str) -> np.ndarray:
        return np.array(self.rs.sim.data.site_xpos[self.rs.sim.model.site_name2id(name)])

    # ----------------------------------------------------------- control
    def goto(self, name: str) -> None:
        self.phase = Phase(name)
        self._i_err = np.zeros(3)

    def eef_yaw(self) -> float:
        """Current gripper yaw, unwrapped into the reachable window (it spans < 360 degrees)."""
        lo = WRIST_YAW_RANGE[0] - np.deg2rad(20.0)
        return float((yaw_of(self.eef_rot) - lo) % (2 * np.pi) + lo)

    def servo(self, target_pos: np.ndarray, target_yaw: float, gripper: float, speed: float | None = None) -> np.ndarray:
        """Delta action toward the gripper-down pose (``target_pos``, ``target_yaw``): at most ``speed``
        metres and ``rot_speed`` radians per step. The yaw is stepped along the unwrapped angle, so
        large turns go the way that keeps the wrist inside its joint range."""
        speed = self.speed if speed is None else speed
        dp = np.asarray(target_pos, float) - self.eef_pos
        # Integral term near the target: removes the steady-state sag of the impedance controller
        # under a payload or contact (the OSC re-bases every delta on the achieved position).
        if np.linalg.norm(dp) < 0.03:
            self._i_err = np.clip(self._i_err + dp, -0.05, 0.05)
        dp = dp + self.ki * self._i_err
        n = np.linalg.norm(dp)
        if n > speed:
            dp *= speed / n
        cur = self.eef_yaw()
        step_yaw = cur + float(np.clip(target_yaw - cur, -self.rot_speed, self.rot_speed))
        dr = matrix_to_axis_angle(down_rotation(step_yaw) @ self.eef_rot.T)
        nr = np.linalg.norm(dr)
        if nr > self.rot_speed:
            dr *= self.rot_speed / nr
        a = np.r_[np.clip(dp / POS_SCALE, -1, 1), np.clip(dr / ROT_SCALE, -1, 1), gripper]
        return a.astype(np.float32)

    def pose_error(self, target_pos: np.ndarray, target_yaw: float) -> tuple[float, float]:
        """(position error in m, rotation error in rad) to the gripper-down pose."""
        dp = float(np.linalg.norm(np.asarray(target_pos) - self.eef_pos))
        dr = float(np.linalg.norm(matrix_to_axis_angle(down_rotation(target_yaw) @ self.eef_rot.T)))
        return dp, dr

    def gripper_closed_on_object(self) -> bool:
        """Fingers stopped before closing fully (something is between them)."""
        q = np.asarray(self.rs.sim.data.qpos[self.rs.robots[0]._ref_gripper_joint_pos_indexes["right"]])
        return float(np.abs(q).sum()) > 0.01

    # ----------------------------------------------------------- episode
    def reset(self) -> None:
        """Sample this episode's parameters; call after ``env.reset``."""
        self.speed = float(self.rng.uniform(0.018, 0.035))
        self.rot_speed = float(self.rng.uniform(0.1, 0.2))
        self.plan()

    def act(self) -> np.ndarray:
        a = self.policy()
        self.phase.steps += 1
        return a

    def plan(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def policy(self) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError
