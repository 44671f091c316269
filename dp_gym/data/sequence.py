"""Episode-aware windows over concatenated episodes, gathered by vectorised indexing."""

from __future__ import annotations

import numpy as np
import torch



def window_frame_indices(
    episode_ends: np.ndarray, horizon: int, pad_before: int, pad_after: int, episode_mask: np.ndarray | None = None
) -> np.ndarray:
    """Frame indices of every training window, shape (n_windows, horizon).

    For an episode of length L, windows start at s in [-pad_before, L - horizon + pad_after]; frames
    outside the episode are replaced by the nearest edge frame (repeat padding), so a window never
    mixes two episodes. With pad_before = To-1 and pad_after = Ta-1 every frame can be the current
    observation and every executed action lies inside the episode.
    """
    if horizon < 1 or pad_before < 0 or pad_after < 0:
        raise ValueError(f"need horizon>=1 and non-negative padding, got {horizon}, {pad_before}, {pad_after}")
    ends = np.asarray(episode_ends, dtype=np.int64)
    starts = np.concatenate([[0], ends[:-1]])
    offsets = np.arange(horizon)
    out = []
    for i, (a, b) in enumerate(zip(starts, ends)):
        if episode_mask is not None and not episode_mask[i]:
            continue
        length = b - a
        first, last = -pad_before, length - horizon + pad_after
        if last < first:
            continue  # episode too short even with padding
        s = np.arange(first, last + 1)
        idx = np.clip(s[:, None] + offsets[None, :], 0, length - 1) + a
        out.append(idx)
    if not out:
        return np.zeros((0, horizon), dtype=np.int64)
    return np.concatenate(out).astype(np.int64)


def split_episodes(n_episodes: int, val_ratio: float, seed: int = 42) -> np.ndarray:
    """Boolean train mask over episodes; a fixed-seed random ``val_ratio`` of episodes is held out
    (at least one when val_ratio > 0 and there are at least 2 episodes)."""
    if not 0.0 <= val_ratio < 1.0:
        raise ValueError(f"val_ratio must be in [0, 1), got {val_ratio}")
    train = np.ones(n_episodes, dtype=bool)
    n_val = int(round(n_episodes * val_ratio))
    if val_ratio > 0 and n_episodes >= 2:
        n_val = max(1, min(n_val, n_episodes - 1))
        rng = np.random.default_rng(seed)
        train[rng.choice(n_episodes, size=n_val, replace=False)] = False
    return train


class SequenceDataset:
    """Windows of length ``horizon`` over in-memory tensors.

    ``sample(batch_size, generator)`` / ``get(indices)`` return a dict of tensors shaped
    (B, horizon, ...). ``obs_keys`` are cut to the first ``n_obs_steps`` frames (the policy only
    conditions on those) to save memory bandwidth.
    """

    def __init__(
        self,
        data: dict[str, torch.Tensor],
        episode_ends: np.ndarray,
        horizon: int,
        n_obs_steps: int,
        n_action_steps: int,
        obs_keys: list[str],
        episode_mask: np.ndarray | None = None,
    ) -> None:
        if n_obs_steps + n_action_steps - 1 > horizon:
            raise ValueError(f"horizon {horizon} too short for n_obs_steps {n_obs_steps} + n_action_steps {n_action_steps} - 1")
        self.data = data
        self.obs_keys = list(obs_keys)
        self.n_obs_steps = n_obs_steps
        self.horizon = horizon
        idx = window_frame_indices(episode_ends, horizon, n_obs_steps - 1, n_action_steps - 1, episode_mask)
        if len(idx) == 0:
            raise ValueError("no training windows: every selected episode is too short for the horizon")
        first = next(iter(data.values()))
        self.indices = torch.as_tensor(idx, device=first.device)

    def __len__(self) -> int:
        return len(self.indices)

    def get(self, window_ids: torch.Tensor) -> dict[str, torch.Tensor]:
        frames = self.indices[window_ids]  # (B, horizon)
        out = {}
        for key, arr in self.data.items():
            f = frames[:, : self.n_obs_steps] if key in self.obs_keys else frames
            out[key] = arr[f]
        return out

    def sample(self, batch_size: int, generator: torch.Generator | None = None) -> dict[str, torch.Tensor]:
        ids = torch.randint(len(self), (batch_size,), generator=generator, device="cpu").to(self.indices.device)
        return self.get(ids)

    def epoch(self, batch_size: int, generator: torch.Generator | None = None):
        """Iterate once over all windows in a random order (last partial batch dropped)."""
        perm = torch.randperm(len(self), generator=generator).to(self.indices.device)
        for i in range(0, len(self) - batch_size + 1, batch_size):
            yield self.get(perm[i : i + batch_size])
