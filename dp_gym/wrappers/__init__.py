"""Gymnasium wrappers for Diffusion Policy rollouts: observation history, action chunks, videos."""

from dp_gym.wrappers.action_chunking import ActionChunking
from dp_gym.wrappers.observation_history import ObservationHistory
from dp_gym.wrappers.video import RecordEpisodeVideo, write_video

__all__ = ["ActionChunking", "ObservationHistory", "RecordEpisodeVideo", "write_video"]
