"""Record ``env.render()`` frames of selected episodes to mp4 or gif files with imageio: the
:class:`RecordEpisodeVideo` wrapper and :func:`write_video`, the one video writer of dp_gym (the
benchmark's videos go through it too)."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, SupportsFloat

import gymnasium as gym
import numpy as np

from dp_gym.checkpoint import atomic_write

__all__ = ["RecordEpisodeVideo", "write_video"]

_FORMATS = ("mp4", "gif")
_DEFAULT_FPS = 10


class RecordEpisodeVideo(gym.Wrapper, gym.utils.RecordConstructorArgs):
    """Save the rendered frames of each selected episode as ``{name_prefix}-{episode}.{format}``.

    Frames are taken with ``env.render()`` (the env must use ``render_mode="rgb_array"``) after
    :meth:`reset` and after every :meth:`step`. The file is written when the episode terminates or
    is truncated, when :meth:`reset` is called in the middle of a recorded episode, or on
    :meth:`close`. Writing is atomic: the video goes to a temporary file in ``video_folder`` that
    is then renamed (:func:`dp_gym.checkpoint.atomic_write`), so a reader never sees a half-written file. Written
    paths are appended to :attr:`video_paths`.

    Episodes are numbered from 0 by :meth:`reset`; ``episode_trigger(episode_index)`` decides
    whether one is recorded (``None`` records every episode). In a vector env give each sub-env
    its own ``name_prefix`` (or folder), otherwise their files overwrite each other.

    Example:
        >>> import os, tempfile
        >>> import gymnasium as gym
        >>> from dp_gym.wrappers import RecordEpisodeVideo
        >>> folder = tempfile.mkdtemp()
        >>> env = RecordEpisodeVideo(gym.make("CartPole-v1", render_mode="rgb_array"), folder, format="gif")
        >>> _ = env.reset(seed=0)
        >>> done = False
        >>> while not done:
        ...     _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        ...     done = terminated or truncated
        >>> [os.path.basename(p) for p in env.video_paths]
        ['episode-0.gif']
        >>> env.close()
    """

    def __init__(
        self,
        env: gym.Env,
        video_folder: str | os.PathLike[str],
        episode_trigger: Callable[[int], bool] | None = None,
        name_prefix: str = "episode",
        fps: float | None = None,
        format: str = "mp4",
    ):
        """Wrap ``env``.

        Args:
            env: environment created with ``render_mode="rgb_array"``.
            video_folder: folder for the videos (created if missing).
            episode_trigger: ``f(episode_index) -> bool`` selecting the episodes to record;
                ``None`` records all of them.
            name_prefix: file name prefix, ``{name_prefix}-{episode_index}.{format}``.
            fps: frames per second; defaults to ``env.metadata["render_fps"]``, else 10.
            format: ``"mp4"`` (ffmpeg via imageio-ffmpeg) or ``"gif"``.

        Raises:
            ValueError: wrong ``render_mode``, ``format``, ``fps`` or ``name_prefix``.
            TypeError: ``episode_trigger`` is not callable.
        """
        gym.utils.RecordConstructorArgs.__init__(
            self,
            video_folder=os.fspath(video_folder),
            episode_trigger=episode_trigger,
            name_prefix=name_prefix,
            fps=fps,
            format=format,
        )
        gym.Wrapper.__init__(self, env)

        if env.render_mode != "rgb_array":
            raise ValueError(
                f"RecordEpisodeVideo needs an env created with render_mode='rgb_array', "
                f"got render_mode={env.render_mode!r}"
            )
        if format not in _FORMATS:
            raise ValueError(f"format must be one of {_FORMATS}, got {format!r}")
        if episode_trigger is not None and not callable(episode_trigger):
            raise TypeError(f"episode_trigger must be None or a callable(int) -> bool, got {episode_trigger!r}")
        if not name_prefix or os.sep in name_prefix or (os.altsep and os.altsep in name_prefix):
            raise ValueError(f"name_prefix must be a non-empty file name without path separators, got {name_prefix!r}")
        if fps is None:
            fps = (env.metadata or {}).get("render_fps") or _DEFAULT_FPS
        if not np.isfinite(fps) or fps <= 0:
            raise ValueError(f"fps must be a positive number, got {fps!r}")

        self.video_folder = os.path.abspath(os.fspath(video_folder))
        os.makedirs(self.video_folder, exist_ok=True)
        self.episode_trigger = episode_trigger
        self.name_prefix = name_prefix
        self.fps = float(fps)
        self.format = format
        self.video_paths: list[str] = []

        self.episode_id = -1
        self._recording = False
        self._frames: list[np.ndarray] = []

    # ------------------------------------------------------------------ frames
    def _capture(self) -> None:
        frame = self.env.render()
        if frame is None:
            raise ValueError("env.render() returned None; RecordEpisodeVideo needs render_mode='rgb_array'")
        frame = np.asarray(frame)
        if frame.ndim != 3 or frame.shape[-1] not in (3, 4):
            raise ValueError(f"env.render() must return an (H, W, 3) or (H, W, 4) image, got shape {frame.shape}")
        if frame.dtype != np.uint8:
            raise ValueError(f"env.render() must return a uint8 image, got dtype {frame.dtype}")
        self._frames.append(frame.copy())

    def _path_for(self, episode_id: int) -> str:
        return os.path.join(self.video_folder, f"{self.name_prefix}-{episode_id}.{self.format}")

    def _write(self, frames: list[np.ndarray], path: str) -> None:
        write_video(path, frames, self.fps, self.format)
        self.video_paths.append(path)

    def _flush(self) -> None:
        """Write the frames of the current recorded episode, if any, and stop recording."""
        frames, self._frames = self._frames, []
        recording, self._recording = self._recording, False
        if recording and frames:
            self._write(frames, self._path_for(self.episode_id))

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict[str, Any]]:
        """Reset the env, finishing any unfinished recording, and start recording if triggered."""
        self._flush()
        obs, info = self.env.reset(seed=seed, options=options)
        self.episode_id += 1
        self._recording = self.episode_trigger is None or bool(self.episode_trigger(self.episode_id))
        if self._recording:
            self._capture()
        return obs, info

    def step(self, action: Any) -> tuple[Any, SupportsFloat, bool, bool, dict[str, Any]]:
        """Step the env, capture a frame, and write the video when the episode ends."""
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._recording:
            self._capture()
            if terminated or truncated:
                self._flush()
        return obs, reward, terminated, truncated, info

    def close(self) -> None:
        """Write any unfinished recording, then close the env."""
        try:
            self._flush()
        finally:
            super().close()


def write_video(path: str | os.PathLike[str], frames: Sequence[np.ndarray], fps: float, format: str | None = None) -> None:
    """Encode ``frames`` ((H, W, 3) or (H, W, 4) uint8 images) into ``path`` with imageio.

    ``format``: ``"mp4"`` (H.264 via imageio-ffmpeg; odd sizes are padded to even ones by edge
    replication, as yuv420p needs) or ``"gif"``; ``None`` takes it from the file suffix. The video
    goes through :func:`dp_gym.checkpoint.atomic_write` (a temporary file in the same folder, then
    renamed), so a reader never sees a half-written file."""
    import imageio.v2 as iio2
    import imageio.v3 as iio3

    path = os.fspath(path)
    format = format or os.path.splitext(path)[1].lstrip(".").lower()
    if format not in _FORMATS:
        raise ValueError(f"video format must be one of {_FORMATS}, got {format!r} (for {path})")
    if not np.isfinite(fps) or fps <= 0:
        raise ValueError(f"fps must be a positive number, got {fps!r}")
    if len(frames) == 0:
        raise ValueError(f"no frames to write to {path}")
    def encode(tmp: str) -> None:
        if format == "mp4":
            h, w = np.asarray(frames[0]).shape[:2]
            pad = ((0, h % 2), (0, w % 2), (0, 0))
            writer = iio2.get_writer(
                tmp, format="FFMPEG", mode="I", fps=float(fps), codec="libx264",
                pixelformat="yuv420p", macro_block_size=1, ffmpeg_log_level="error",
            )
            try:
                for f in frames:
                    f = np.asarray(f)[..., :3]
                    writer.append_data(np.pad(f, pad, mode="edge") if (h % 2 or w % 2) else f)
            finally:
                writer.close()
        else:
            iio3.imwrite(tmp, np.stack(frames), extension=".gif", plugin="pillow", duration=1000.0 / fps, loop=0)

    atomic_write(Path(path), encode, keep_suffix=True)
