"""``PolicyAgent``: a Stable-Baselines3-style ``predict`` around any dp_gym policy (diffusion, BC,
IBC or any other registered one). ``DiffusionAgent`` is the same class under its original name.

The agent turns environment observations into actions with receding-horizon execution: for each
env it keeps the last ``n_obs_steps`` observations and a queue of planned actions, samples a new
chunk of ``n_action_steps`` actions only when that env's queue is empty, and clears an env's history
and queue when ``episode_start`` says a new episode began there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from dp_gym.checkpoint import load_policy, save_policy
from dp_gym.history import ActionQueue, HistoryBuffer

ObsType = Any  # np.ndarray | dict[str, np.ndarray]


# Largest |normalised observation| the agent plans from; the training data spans [-1, 1].
OBS_RANGE_LIMIT = 1e4


class PolicyAgent:
    """SB3-compatible agent around any dp_gym policy (a :class:`~dp_gym.policies.policy.Policy`):
    it asks the policy's capabilities (``stochastic``, ``accelerable``) rather than its type.

    Args:
        policy: a dp_gym policy.
        device: torch device to run the policy on.
        env_history: ``True`` when observations already carry the To-step history (the env is
            wrapped in :class:`~dp_gym.wrappers.ObservationHistory`); the agent then does not keep
            its own. ``False`` (default): the agent stacks history itself.
        return_chunks: ``True`` to return the whole (Ta, A) chunk at every call, re-planning each
            time (for envs wrapped in :class:`~dp_gym.wrappers.ActionChunking`); ``False``
            (default): one action per call, re-planning when the queue runs out.
        seed: seeds the sampling noise of non-deterministic calls.

    Example (plain env, one action per call)::

        agent = PolicyAgent.load("runs/pusht_kp/checkpoints/latest")
        env = gymnasium.make("dp_gym/PushT-v0", obs_type="keypoints")
        obs, _ = env.reset(seed=100000)
        action, _ = agent.predict(obs, episode_start=np.array([True]))

    It also plugs into ``stable_baselines3.common.evaluation.evaluate_policy(agent, vec_env)``.
    """

    def __init__(self, policy: torch.nn.Module, device: str | torch.device | None = None, env_history: bool = False,
                 return_chunks: bool = False, seed: int = 0) -> None:
        self.device = torch.device(device) if device is not None else next(policy.parameters()).device
        self.policy = policy.to(self.device).eval()
        self.config = policy.config
        self.obs_shapes = {k: tuple(v) for k, v in self.config.obs_shapes.items()}
        self._image_keys = set(self.config.image_keys)  # stay uint8 until the encoder
        self.n_obs_steps = self.config.n_obs_steps
        self.n_action_steps = self.config.n_action_steps
        self.env_history = env_history
        self.return_chunks = return_chunks
        self.seed = seed
        self.sample_kwargs: dict[str, Any] = {}  # e.g. {"sampler": "ddim", "num_inference_steps": 10}
        self._generator = torch.Generator(device="cpu").manual_seed(seed)
        self._histories: list[HistoryBuffer] = []
        self._queues: list[ActionQueue] = []
        self._replans: list[int] = []
        self._noise_keys: list[int] = []
        self.n_replans = 0  # total chunks sampled (for latency statistics)
        # The sampling accelerator of the latest chunk (its active_mode / fallback_reason say how
        # it ran). Unless accelerate() set one, it is built per sampler setting in the default
        # mode (OpenVINO on CPU, else ONNX Runtime; $DP_GYM_ACCELERATE overrides it).
        self.accelerator = None
        self._default_accelerators: dict[tuple, Any] = {}

    def __repr__(self) -> str:
        obs = ", ".join(f"{k!r}: {shape}" for k, shape in self.obs_shapes.items())
        sampler = {**{k: getattr(self.config, k) for k in ("sampler", "num_inference_steps") if hasattr(self.config, k)},
                   **self.sample_kwargs}
        return (f"{type(self).__name__}(policy={self.policy.policy_type!r}, obs={{{obs}}}, action_dim={self.config.action_dim}, "
                f"n_obs_steps={self.n_obs_steps}, n_action_steps={self.n_action_steps}"
                + (f", sampler={sampler}" if sampler else "") + f", device={str(self.device)!r})")

    # --- persistence ----------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write ``model.safetensors`` + ``config.json`` into directory ``path``."""
        return save_policy(self.policy, path)

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> "PolicyAgent":
        """Load a checkpoint folder written by :meth:`save` or the trainer, or a ``zoo:`` entry."""
        policy, _ = load_policy(path, device)
        return cls(policy, device=device, **kwargs)

    @classmethod
    def from_pretrained(cls, name_or_path: str | Path, device: str | torch.device = "cpu", **kwargs: Any) -> "PolicyAgent":
        """An agent for a shipped policy, ``"zoo:<task>/<policy>"`` (``python -m dp_gym.zoo list``
        lists them), or for a checkpoint folder; the same as :meth:`load`.

        Example::

            agent = PolicyAgent.from_pretrained("zoo:pusht_keypoints/diffusion")
            env = gymnasium.make("dp_gym/PushT-v0", obs_type="keypoints")
            obs, _ = env.reset(seed=100000)
            action, _ = agent.predict(obs, episode_start=np.array([True]), deterministic=True)
        """
        return cls.load(name_or_path, device=device, **kwargs)

    def accelerate(self, mode: str = "cuda_graph", autocast: str = "no"):
        """Run an ``accelerable`` policy's sampling loop (the diffusion policy's denoising loop)
        compiled (``"compile"``), captured as one CUDA graph (``"cuda_graph"``), in OpenVINO
        (``"openvino"``, the CPU default) or ONNX Runtime (``"onnx"``) or plain (``"eager"``), optionally under ``autocast``
        ("bf16" | "fp16"), for the sampler in :attr:`sample_kwargs` (set those first). Falls back
        to eager when the mode is unavailable; returns the accelerator (for the diffusion policy a
        :class:`~dp_gym.policies.diffusion.accelerate.SamplingAccelerator`; see its
        ``active_mode`` / ``fallback_reason``)."""
        if not self.policy.accelerable:
            raise TypeError(f"accelerate() applies to accelerable policies (such as diffusion), not "
                            f"{type(self.policy).__name__}")
        acc = self.policy.make_accelerator(mode, autocast, **self._loop_kwargs())
        self.policy.accelerator = acc
        return acc

    def _sampling_accelerator(self):
        """The accelerator for the next chunk: the policy's own (set by :meth:`accelerate`), else
        one in the default mode for the current sampler settings, built once per setting."""
        if self.policy.accelerator is not None:
            return self.policy.accelerator
        from dp_gym.policies.diffusion.accelerate import default_mode

        mode = default_mode(self.device)
        loop_kwargs = self._loop_kwargs()
        # the config's own sampler settings fill in what sample_kwargs leave unset
        key = (mode, repr(self.policy.config), *sorted((k, v) for k, v in loop_kwargs.items() if v is not None))
        if key not in self._default_accelerators:
            self._default_accelerators[key] = self.policy.make_accelerator(mode, "no", **loop_kwargs)
        return self._default_accelerators[key]

    def _loop_kwargs(self) -> dict[str, Any]:
        """The sampling settings that shape the sampling loop and its noise: :attr:`sample_kwargs`
        without ``noise_scale``, which only scales the draws."""
        return {k: v for k, v in self.sample_kwargs.items() if k != "noise_scale"}

    # --- observation handling -------------------------------------------------------------
    def _as_dict(self, observation: ObsType) -> dict[str, np.ndarray]:
        if isinstance(observation, dict):
            missing = [k for k in self.obs_shapes if k not in observation]
            if missing:
                raise KeyError(f"observation dict is missing keys {missing}; the policy expects {list(self.obs_shapes)}")
            return {k: np.asarray(observation[k]) for k in self.obs_shapes}
        if len(self.obs_shapes) != 1:
            raise TypeError(f"the policy expects a dict observation with keys {list(self.obs_shapes)}, got {type(observation).__name__}")
        return {next(iter(self.obs_shapes)): np.asarray(observation)}

    def _split(self, observation: ObsType) -> tuple[dict[str, np.ndarray], bool]:
        """Return per-key arrays shaped (n_envs, [To,] *shape) and whether the input was batched."""
        obs = self._as_dict(observation)
        extra = 1 if self.env_history else 0
        batched = None
        for key, arr in obs.items():
            if key in self._image_keys:
                if arr.dtype != np.uint8:
                    raise TypeError(f"image observation {key!r} has dtype {arr.dtype}; expected uint8 (H, W, C) with values 0-255")
            elif not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
                raise TypeError(f"observation {key!r} has dtype {arr.dtype}; expected a numeric array")
            base = self.obs_shapes[key]
            hist = (self.n_obs_steps,) if self.env_history else ()
            if arr.shape == hist + base:
                b = False
            elif arr.ndim == len(base) + extra + 1 and arr.shape[1:] == hist + base:
                b = True
            else:
                raise ValueError(
                    f"observation {key!r} has shape {arr.shape}; expected {hist + base} or (n_envs, {', '.join(map(str, hist + base))})"
                    + (" (env_history=True: observations must carry the To-step history)" if self.env_history else "")
                )
            if batched is not None and b != batched:
                raise ValueError("observation keys disagree on whether the observation is batched")
            batched = b
            if np.issubdtype(arr.dtype, np.floating) and not np.isfinite(arr).all():
                raise ValueError(f"observation {key!r} contains NaN or inf")
        if not batched:
            obs = {k: v[None] for k, v in obs.items()}
        return obs, bool(batched)

    def reset(self, n_envs: int | None = None) -> None:
        """Forget every env's history and queued actions."""
        n = len(self._queues) if n_envs is None else n_envs
        self._histories = [HistoryBuffer(self.n_obs_steps) for _ in range(n)]
        self._queues = [ActionQueue() for _ in range(n)]
        self._replans = [0 for _ in range(n)]
        self._noise_keys = list(range(n))

    def set_noise_key(self, env_index: int, key: int) -> None:
        """Key env ``env_index``'s deterministic noise by ``key`` (e.g. its episode's reset seed)
        instead of its index, so an episode replays identically in whatever env slot it runs."""
        self._noise_keys[env_index] = int(key)

    # --- acting ---------------------------------------------------------------------------
    def predict(
        self,
        observation: ObsType,
        state: Any = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, Any]:
        """Return ``(actions, state)`` like SB3's ``BasePolicy.predict``.

        ``observation``: one observation or a batch (leading n_envs axis); dict observations are
        dicts of such arrays. ``episode_start[i]`` true clears env i's history and queue.
        ``deterministic=True`` makes the sampling noise a fixed function of (seed, env index or
        the key given to :meth:`set_noise_key`, chunk index within the episode), so the same
        episode replays the same actions.
        ``state`` is passed through unchanged (the queues live in the agent).
        """
        obs, batched = self._split(observation)
        n_envs = next(iter(obs.values())).shape[0]
        if n_envs == 0:
            raise ValueError("observation batch is empty (n_envs = 0); pass one observation or a batch of at least one")
        starts = None
        if episode_start is not None:
            starts = np.asarray(episode_start, dtype=bool).reshape(-1)
            if starts.shape[0] != n_envs:
                raise ValueError(f"episode_start has {starts.shape[0]} entries for {n_envs} envs")
        if len(self._queues) != n_envs:
            if self._queues and not (starts is not None and starts.all()):
                raise ValueError(
                    f"the batch has {n_envs} envs but the agent tracks {len(self._queues)}; a new number of envs "
                    "starts new episodes everywhere: pass episode_start all true, or call agent.reset(n_envs) first")
            self.reset(n_envs)
        if starts is not None:
            for i in np.flatnonzero(starts):
                self._histories[i].clear()
                self._queues[i].clear()
                self._replans[i] = 0
        # Update histories (pad with the first observation after a reset).
        if not self.env_history:
            for i in range(n_envs):
                self._histories[i].push({k: v[i] for k, v in obs.items()})
        need = [i for i in range(n_envs) if self.return_chunks or not self._queues[i]]
        if need:
            chunks = self._plan(obs, need, deterministic)
            for j, i in enumerate(need):
                self._queues[i].fill(chunks[j])
        if self.return_chunks:
            actions = np.stack([q.drain() for q in self._queues])
        else:
            actions = np.stack([q.pop() for q in self._queues])
        return (actions if batched else actions[0]), state

    def _plan(self, obs: dict[str, np.ndarray], env_ids: list[int], deterministic: bool) -> np.ndarray:
        if self.env_history:
            stacked = {k: v[env_ids] for k, v in obs.items()}
        else:
            histories = [self._histories[i].stacked() for i in env_ids]
            stacked = {k: np.stack([h[k] for h in histories]) for k in self.obs_shapes}
        batch = {k: self._to_tensor(v, keep_dtype=k in self._image_keys) for k, v in stacked.items()}
        self._check_range(batch, env_ids)
        shape = self.policy.noise_shape(**self._loop_kwargs()) if self.policy.stochastic else None
        kwargs = dict(self.sample_kwargs)
        if shape is not None:
            gens = []
            for i in env_ids:
                if deterministic:
                    gens.append(torch.Generator().manual_seed(hash((self.seed, self._noise_keys[i], self._replans[i])) & 0x7FFF_FFFF))
                else:
                    gens.append(self._generator)
            noise = torch.stack([torch.randn(shape, generator=g) for g in gens])
            kwargs["noise"] = noise.to(self.device)
        if self.policy.accelerable:
            self.accelerator = kwargs["accelerator"] = self._sampling_accelerator()
        for i in env_ids:
            self._replans[i] += 1
        self.n_replans += 1
        with torch.inference_mode():
            chunk = self.policy.predict_chunk(batch, **kwargs).float().cpu().numpy()
        bad = ~np.isfinite(chunk).reshape(len(env_ids), -1).all(axis=1)
        if bad.any():
            raise ValueError(
                f"the policy produced non-finite actions for env(s) {[env_ids[j] for j in np.flatnonzero(bad)]}: their "
                "observations are finite but too far outside the training data's range for the network "
                f"(largest magnitude per key: { {k: float(np.abs(v[bad].astype(np.float64)).max()) for k, v in stacked.items()} })")
        return chunk

    def _check_range(self, batch: dict[str, torch.Tensor], env_ids: list[int]) -> None:
        """Refuse low-dim observations absurdly far outside the training data: float32 networks
        overflow on them, and a runtime's clip may turn the resulting NaN into finite but
        meaningless actions, so the output check alone cannot catch them."""
        for key, normalizer in self.policy.obs_normalizers.items():
            z = normalizer.normalize(batch[key].float()).abs().flatten(1).amax(1)
            far = ~(z <= OBS_RANGE_LIMIT)  # NaN-safe
            if far.any():
                raise ValueError(
                    f"observation {key!r} of env(s) {[env_ids[j] for j in torch.nonzero(far).flatten().tolist()]} is "
                    f"{float(z.max()):.3g} normalised units from the centre, far outside the training data's range "
                    f"(the data spans [-1, 1]; values beyond ±{OBS_RANGE_LIMIT:g} are refused)")

    def _to_tensor(self, x: np.ndarray, keep_dtype: bool = False) -> torch.Tensor:
        t = torch.from_numpy(np.ascontiguousarray(x)).to(self.device)
        return t if keep_dtype or t.dtype == torch.float32 else t.float()


# The agent's original name, kept for existing code: it runs every policy, not only diffusion.
DiffusionAgent = PolicyAgent
