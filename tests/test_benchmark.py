"""Benchmark runner: seeded rollouts, metrics, Wilson interval, outputs on disk."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from dp_gym import DiffusionAgent
from dp_gym.benchmark import BenchmarkConfig, main, parse_seeds, run
from dp_gym.evaluation import evaluate_agent, evaluate_policy, wilson_interval
from dp_gym.policies import make_policy
from dp_gym.policies.diffusion.policy import DiffusionPolicy
from dp_gym.tasks import get_task

EP_LEN = 16


def short_task():
    task = get_task("pusht_keypoints")
    return dataclasses.replace(task, env_kwargs={**task.env_kwargs, "max_episode_steps": EP_LEN})


def tiny_policy():
    policy = make_policy("diffusion", dict(obs_shapes={"obs": [20]}, action_dim=2, horizon=16, n_obs_steps=2, n_action_steps=8,
                                           down_dims=[16, 32], diffusion_step_embed_dim=16, sampler="ddim", num_inference_steps=3))
    policy.fit_normalizers({"obs": torch.rand(64, 20) * 512, "action": torch.rand(64, 2) * 512})
    return policy.eval()


def test_parse_seeds_and_wilson():
    assert parse_seeds("100000:100003") == [100000, 100001, 100002]
    assert parse_seeds("5,7") == [5, 7]
    lo, hi = wilson_interval(0, 50)
    assert lo == 0.0 and 0.05 < hi < 0.1
    lo, hi = wilson_interval(25, 50)
    assert lo < 0.5 < hi and abs((lo + hi) / 2 - 0.5) < 1e-9
    lo, hi = wilson_interval(50, 50)
    assert hi == 1.0 and 0.9 < lo < 0.95
    for n in range(1, 301):  # the bounds hold the proportion exactly, 0 and 1 included (no float shortfall)
        assert wilson_interval(n, n)[1] == 1.0 and wilson_interval(0, n)[0] == 0.0
        assert all(lo <= k / n <= hi for k in range(n + 1) for lo, hi in [wilson_interval(k, n)])


def test_rollout_metrics_are_seeded_and_consistent():
    task, policy = short_task(), tiny_policy()
    seeds = [100000, 100001, 100002, 100003, 100004]
    # 2 envs for 5 seeds: envs are refilled with the next seed as they finish
    r1 = evaluate_agent(DiffusionAgent(policy), task, seeds, n_envs=2, latency_repeats=2)
    r2 = evaluate_agent(DiffusionAgent(policy), task, seeds, n_envs=5, latency_repeats=0)
    assert r1["episodes"] == 5 and r1["seeds"] == seeds
    assert r1["per_episode"]["length"] == [EP_LEN] * 5
    # deterministic sampling: the same seed gives the same episode whatever the env layout
    np.testing.assert_allclose(r1["per_episode"]["max_reward"], r2["per_episode"]["max_reward"], atol=1e-3)
    assert r1["mean_max_reward"] == pytest.approx(np.mean(r1["per_episode"]["max_reward"]), abs=1e-3)
    assert 0.0 <= r1["success_ci95"][0] <= r1["success_rate"] <= r1["success_ci95"][1] <= 1.0
    assert r1["predict_latency_ms_median"] > 0
    # periodic evaluation hook used by the trainer restores the training mode
    policy.train()
    r3 = evaluate_policy(policy, task, seeds[:2], n_envs=2)
    assert policy.training and r3["episodes"] == 2


def test_benchmark_run_writes_outputs(tmp_path, monkeypatch):
    policy = tiny_policy()
    DiffusionAgent(policy).save(tmp_path / "ckpt")
    monkeypatch.setitem(__import__("dp_gym.tasks", fromlist=["TASKS"]).TASKS, "pusht_short", dataclasses.replace(short_task(), name="pusht_short"))
    argv = ["--task", "pusht_short", "--policy", f"tiny={tmp_path / 'ckpt'}", "--seeds", "100000:100003",
            "--n-envs", "3", "--videos", "1", "--latency-repeats", "2", "--out-dir", str(tmp_path / "out")]
    main(argv)
    out = tmp_path / "out"
    data = json.loads((out / "results.json").read_text())
    assert data["command"] == "python -m dp_gym.benchmark " + " ".join(argv)  # the run can be repeated from it
    assert data["config"]["n_envs"] == 3 and data["config"]["seeds"] == "100000:100003"
    # what the outcomes depend on: the CPU model and the sampling runtime's and simulator's builds
    machine = data["machine"]
    assert machine["cpu"] and machine["torch"] == torch.__version__ and machine["torch_threads"] >= 1
    assert machine["libraries"]["pymunk"] and machine["libraries"]["numpy"] == np.__version__
    results = data["results"]
    assert set(results) == {"tiny"}
    r = results["tiny"]
    for key in ("episodes", "seeds", "mean_max_reward", "success_rate", "success_ci95", "mean_episode_length", "predict_latency_ms_median"):
        assert key in r
    assert r["seeds"] == [100000, 100001, 100002]
    assert (out / "scores.png").stat().st_size > 1000
    assert (out / "tiny_seed100000.mp4").stat().st_size > 1000
    assert "| tiny | 3 |" in (out / "results.md").read_text()
    assert results["tiny"]["videos"] == ["tiny_seed100000.mp4"]


def test_benchmark_requires_policy():
    with pytest.raises(ValueError, match="--policy"):
        run(BenchmarkConfig(policies=[]))


def test_benchmark_accelerate_flag_falls_back_and_matches_eager(tmp_path, monkeypatch):
    policy = tiny_policy()
    DiffusionAgent(policy).save(tmp_path / "ckpt")
    monkeypatch.setitem(__import__("dp_gym.tasks", fromlist=["TASKS"]).TASKS, "pusht_short", dataclasses.replace(short_task(), name="pusht_short"))
    scores = {}
    for mode in ("eager", "cuda_graph"):
        cfg = BenchmarkConfig(task="pusht_short", policies=[f"tiny={tmp_path / 'ckpt'}"], seeds="100000:100002", n_envs=2,
                              videos=0, latency_repeats=0, accelerate=mode, out_dir=str(tmp_path / mode))
        scores[mode] = run(cfg)["tiny"]["per_episode"]["max_reward"]
    assert scores["eager"] == scores["cuda_graph"]  # on CPU: the recorded fallback runs the same eager loop


class _RejectsZeroAction(__import__("gymnasium").Wrapper):
    """Like an absolute-pose action space (rot6d), where an all-zero action is not a rotation.
    Episodes reset without a seed (the benchmark's idle envs) end after 3 steps, so an idle env
    finishes while others still run."""

    def reset(self, *, seed=None, options=None):
        self._idle_steps_left = 3 if seed is None else None
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        if not np.any(action):
            raise ValueError("all-zero action")
        obs, reward, terminated, truncated, info = self.env.step(action)
        if self._idle_steps_left is not None:
            self._idle_steps_left -= 1
            terminated = terminated or self._idle_steps_left <= 0
        return obs, reward, terminated, truncated, info


def test_idle_envs_are_not_stepped_with_invalid_actions():
    import gymnasium as gym

    env_id = "dp_gym_test/RejectsZeroAction-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=lambda **kw: _RejectsZeroAction(gym.make("dp_gym/PushT-v0", **kw)))
    task = dataclasses.replace(short_task(), env_id=env_id)
    # 3 seeds on 2 envs: one env idles (and finishes, and is reset) while the last episode runs
    policy = tiny_policy()
    r = evaluate_agent(DiffusionAgent(policy), task, [100000, 100001, 100002], n_envs=2, latency_repeats=0)
    assert r["per_episode"]["length"] == [EP_LEN] * 3
    # the idle env's resets change nothing for the scored episodes
    ref = evaluate_agent(DiffusionAgent(policy), short_task(), [100000, 100001, 100002], n_envs=2, latency_repeats=0)
    np.testing.assert_allclose(r["per_episode"]["max_reward"], ref["per_episode"]["max_reward"], atol=1e-6)


def test_n_action_steps_override_replans_more_often_and_is_validated(tmp_path, monkeypatch):
    from dp_gym.benchmark import with_action_horizon

    task, policy = short_task(), tiny_policy()
    replans = {}
    for ta in (8, 4):
        policy.config = with_action_horizon(policy, ta)
        agent = DiffusionAgent(policy)
        evaluate_agent(agent, task, [100000], n_envs=1, latency_repeats=0)
        replans[ta] = agent.n_replans
    assert replans == {8: EP_LEN // 8, 4: EP_LEN // 4}
    with pytest.raises(ValueError, match="horizon"):  # To - 1 + Ta = 17 > Tp = 16
        with_action_horizon(policy, 16)
    bc = make_policy("bc", dict(obs_shapes={"obs": [20]}, action_dim=2, n_obs_steps=2, n_action_steps=8))
    with pytest.raises(ValueError, match="diffusion policies only"):
        with_action_horizon(bc, 4)
    # through the CLI: the executed Ta is recorded with the results
    DiffusionAgent(tiny_policy()).save(tmp_path / "ckpt")
    monkeypatch.setitem(__import__("dp_gym.tasks", fromlist=["TASKS"]).TASKS, "pusht_short", dataclasses.replace(task, name="pusht_short"))
    main(["--task", "pusht_short", "--policy", f"tiny={tmp_path / 'ckpt'}", "--seeds", "100000:100001", "--n-envs", "1",
          "--videos", "0", "--latency-repeats", "0", "--n-action-steps", "4", "--out-dir", str(tmp_path / "out")])
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["config"]["n_action_steps"] == 4 and data["results"]["tiny"]["n_action_steps"] == 4


def test_noise_scale_flag_reaches_the_sampler_and_is_recorded(tmp_path, monkeypatch):
    task = short_task()
    monkeypatch.setitem(__import__("dp_gym.tasks", fromlist=["TASKS"]).TASKS, "pusht_short", dataclasses.replace(task, name="pusht_short"))
    DiffusionAgent(tiny_policy()).save(tmp_path / "ckpt")
    seen = []
    orig = DiffusionPolicy.sample_actions

    def spy(self, obs, **kw):
        seen.append(kw.get("noise_scale"))
        return orig(self, obs, **kw)

    monkeypatch.setattr(DiffusionPolicy, "sample_actions", spy)
    args = ["--task", "pusht_short", "--policy", f"tiny={tmp_path / 'ckpt'}", "--seeds", "100000:100001", "--n-envs", "1",
            "--videos", "0", "--latency-repeats", "0"]
    main(args + ["--noise-scale", "0", "--out-dir", str(tmp_path / "zero")])
    data = json.loads((tmp_path / "zero" / "results.json").read_text())
    assert data["config"]["noise_scale"] == 0.0 and data["results"]["tiny"]["noise_scale"] == 0.0
    assert seen and set(seen) == {0.0}
    seen.clear()
    main(args + ["--out-dir", str(tmp_path / "default")])
    assert set(seen) == {None}  # not passed: the policy's default scale 1
    assert json.loads((tmp_path / "default" / "results.json").read_text())["results"]["tiny"]["noise_scale"] == 1.0
    bc = make_policy("bc", dict(obs_shapes={"obs": [20]}, action_dim=2, n_obs_steps=2, n_action_steps=8))
    bc.fit_normalizers({"obs": torch.rand(64, 20) * 512, "action": torch.rand(64, 2) * 512})
    DiffusionAgent(bc.eval()).save(tmp_path / "bc")
    assert main(["--task", "pusht_short", "--policy", f"bc={tmp_path / 'bc'}", "--seeds", "100000:100001", "--n-envs", "1",
                 "--videos", "0", "--latency-repeats", "0", "--noise-scale", "0", "--out-dir", str(tmp_path / "bcout")]) == 1
    assert "diffusion policies only" in json.loads((tmp_path / "bcout" / "results.json").read_text())["results"]["bc"]["error"]


# --- episode log, resume, crashes, failing policies -------------------------------------------

@pytest.fixture
def pusht_short(monkeypatch):
    task = dataclasses.replace(short_task(), name="pusht_short")
    monkeypatch.setitem(__import__("dp_gym.tasks", fromlist=["TASKS"]).TASKS, "pusht_short", task)
    return task


def _log(out):
    return [json.loads(line) for line in (out / "episodes.jsonl").read_text().splitlines()]


def test_killed_benchmark_resumes_with_only_the_missing_episodes(tmp_path, pusht_short, monkeypatch):
    DiffusionAgent(tiny_policy()).save(tmp_path / "ckpt")
    cfg = dict(task="pusht_short", policies=[f"tiny={tmp_path / 'ckpt'}"], seeds="100000:100005", n_envs=2, videos=0,
               latency_repeats=0)
    full = run(BenchmarkConfig(**cfg, out_dir=str(tmp_path / "full")))["tiny"]
    assert sorted(r["seed"] for r in _log(tmp_path / "full")) == list(range(100000, 100005))

    real_predict, calls = DiffusionAgent.predict, []

    def predict_then_die(self, *a, **kw):  # the process is killed part-way through
        calls.append(1)
        if len(calls) > 2 * EP_LEN + 1:
            raise KeyboardInterrupt
        return real_predict(self, *a, **kw)

    monkeypatch.setattr(DiffusionAgent, "predict", predict_then_die)
    part = tmp_path / "part"
    with pytest.raises(KeyboardInterrupt):
        run(BenchmarkConfig(**cfg, out_dir=str(part)))
    first = [r["seed"] for r in _log(part)]
    assert 2 <= len(first) < 5 and not (part / "results.json").exists()
    with open(part / "episodes.jsonl", "a") as f:
        f.write('{"policy": "tiny", "checkpoint": "')  # a line torn by the kill
    monkeypatch.setattr(DiffusionAgent, "predict", real_predict)
    ran = []
    monkeypatch.setattr(DiffusionAgent, "set_noise_key", lambda self, i, key: (ran.append(key), real_set(self, i, key)))
    resumed = run(BenchmarkConfig(**cfg, out_dir=str(part), resume=True))["tiny"]
    assert sorted(ran) == sorted(set(range(100000, 100005)) - set(first)), "only the missing episodes run"
    assert sorted(r["seed"] for r in _log(part)) == list(range(100000, 100005))
    assert resumed["episodes"] == full["episodes"] == 5 and resumed["success_rate"] == full["success_rate"]
    np.testing.assert_allclose(resumed["per_episode"]["max_reward"], full["per_episode"]["max_reward"], atol=1e-3)
    assert resumed["per_episode"]["length"] == full["per_episode"]["length"]
    # options that change the episodes cannot be mixed into a resumed run
    with pytest.raises(ValueError, match="--num-inference-steps: saved None, now 2"):
        run(BenchmarkConfig(**cfg, out_dir=str(part), resume=True, num_inference_steps=2))


real_set = DiffusionAgent.set_noise_key


class _CrashingEnv(__import__("gymnasium").Wrapper):
    """Dies like a killed async worker (EOFError): always on seed 100001, once on seed 100002."""

    crashed_once: set = set()

    def reset(self, *, seed=None, options=None):
        self._seed = seed if seed is not None else getattr(self, "_seed", None)
        return self.env.reset(seed=seed, options=options)

    def step(self, action):
        if self._seed == 100001 or (self._seed == 100002 and 100002 not in self.crashed_once):
            self.crashed_once.add(self._seed)
            raise EOFError("worker died")
        return self.env.step(action)


def test_crashed_env_is_retried_once_then_recorded_as_errored(tmp_path, pusht_short, monkeypatch):
    import gymnasium as gym

    env_id = "dp_gym_test/Crashing-v0"
    if env_id not in gym.registry:
        gym.register(env_id, entry_point=lambda **kw: _CrashingEnv(gym.make("dp_gym/PushT-v0", **kw)))
    _CrashingEnv.crashed_once = set()
    monkeypatch.setitem(__import__("dp_gym.tasks", fromlist=["TASKS"]).TASKS, "pusht_short", dataclasses.replace(pusht_short, env_id=env_id))
    DiffusionAgent(tiny_policy()).save(tmp_path / "ckpt")
    res = run(BenchmarkConfig(task="pusht_short", policies=[f"tiny={tmp_path / 'ckpt'}"], seeds="100000:100004", n_envs=2,
                              videos=0, latency_repeats=0, out_dir=str(tmp_path / "out")))["tiny"]
    assert res["episodes"] == 3 and res["errored_episodes"] == 1
    assert res["errors"] == [{"seed": 100001, "error": "EOFError: worker died"}]
    assert res["per_episode"]["length"] == [EP_LEN, None, EP_LEN, EP_LEN]  # 100002 succeeded on its retry
    log = {r["seed"]: r for r in _log(tmp_path / "out")}
    assert sorted(log) == [100000, 100001, 100002, 100003] and "error" in log[100001]


def test_one_bad_policy_does_not_cost_the_others_their_results(tmp_path, pusht_short, capsys):
    from safetensors.torch import load_file, save_file
    from safetensors import safe_open

    DiffusionAgent(tiny_policy()).save(tmp_path / "good")
    DiffusionAgent(tiny_policy()).save(tmp_path / "bad")
    file = tmp_path / "bad" / "model.safetensors"
    tensors = load_file(str(file))
    with safe_open(str(file), framework="pt") as f:
        meta = f.metadata()
    tensors["action_normalizer.scale"] = tensors["action_normalizer.scale"] * float("nan")
    save_file(tensors, str(file), metadata=meta)
    out = tmp_path / "out"
    assert main(["--task", "pusht_short", "--policy", f"bad={tmp_path / 'bad'}", "--policy", f"good={tmp_path / 'good'}",
                 "--seeds", "100000:100002", "--n-envs", "2", "--videos", "0", "--latency-repeats", "0", "--out-dir", str(out)]) == 1
    results = json.loads((out / "results.json").read_text())["results"]
    assert "non-finite" in results["bad"]["error"] and results["good"]["episodes"] == 2
    captured = capsys.readouterr()
    assert "pusht_short episodes" in captured.err  # progress bar over episodes
    assert "| good | 2 |" in captured.out and "| bad | failed: CheckpointError" in captured.out  # the summary table
    assert captured.err.strip().splitlines()[-1].startswith("error: 1 of 2 policies failed")


def test_killed_async_env_worker_is_rebuilt_and_its_episodes_rerun(pusht_short, monkeypatch):
    """A SIGKILLed worker process of an AsyncVectorEnv (EOFError in the parent): the env is rebuilt
    and the episodes that were running are run again; the results equal an undisturbed run's."""
    import os
    import signal

    import dp_gym.evaluation as bm

    policy, seeds = tiny_policy(), [100000, 100001, 100002]
    ref = evaluate_agent(DiffusionAgent(policy), pusht_short, seeds, n_envs=2, latency_repeats=0)
    envs, real_make, real_predict, calls = [], bm.make_vector_env, DiffusionAgent.predict, []
    monkeypatch.setattr(bm, "make_vector_env", lambda *a, **kw: envs.append(real_make(*a, **kw)) or envs[-1])

    def predict_and_kill_once(self, *a, **kw):
        calls.append(1)
        if len(calls) == 5:
            os.kill(envs[0].processes[1].pid, signal.SIGKILL)
        return real_predict(self, *a, **kw)

    monkeypatch.setattr(DiffusionAgent, "predict", predict_and_kill_once)
    res = evaluate_agent(DiffusionAgent(policy), pusht_short, seeds, n_envs=2, vector="async", latency_repeats=0)
    assert len(envs) >= 2, "the crashed vector env was rebuilt"
    assert res["episodes"] == 3 and "errors" not in res
    np.testing.assert_allclose(res["per_episode"]["max_reward"], ref["per_episode"]["max_reward"], atol=1e-3)
    assert res["per_episode"]["length"] == ref["per_episode"]["length"]


def test_trainer_periodic_evaluation_scores_with_the_shared_evaluation(tmp_path, monkeypatch):
    """``train --eval-every`` calls dp_gym.evaluation.evaluate_policy on the EMA policy and logs its
    score; the score is what evaluate_policy returns for the same seeds."""
    import dp_gym.evaluation as evaluation
    from dp_gym.data.replay import EpisodeData
    from dp_gym.train import TrainConfig, train

    def toy_pusht(_data_dir=None) -> EpisodeData:
        rng = np.random.default_rng(0)
        obs = rng.uniform(0, 512, size=(100, 20)).astype(np.float32)
        return EpisodeData({"obs": obs, "action": obs[:, -2:].copy()}, np.arange(1, 6) * 20)

    task = dataclasses.replace(short_task(), name="pusht_toy", load_dataset=toy_pusht)
    monkeypatch.setitem(__import__("dp_gym.tasks", fromlist=["TASKS"]).TASKS, "pusht_toy", task)
    calls, real = [], evaluation.evaluate_policy
    monkeypatch.setattr(evaluation, "evaluate_policy", lambda *a, **kw: calls.append(kw) or real(*a, **kw))
    out = tmp_path / "run"
    train(TrainConfig(task="pusht_toy", steps=2, batch_size=8, model_size="small",
                      policy_overrides={"down_dims": [16, 32], "diffusion_step_embed_dim": 16, "num_inference_steps": 2},
                      warmup_steps=0, checkpoint_every=2, val_every=0, log_every=1, eval_every=2, eval_episodes=2,
                      out_dir=str(out)))
    assert calls == [{"seeds": [100000, 100001], "n_envs": 2}]
    row = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()][-1]
    assert row["step"] == 2 and 0 <= row["eval_score"] <= 1 and row["eval_success"] in (0.0, 0.5, 1.0)
