"""Model zoo: shipped entries load by name and give their golden actions; cards are complete and
their training commands parse; export, the suite command and the README table work end to end."""

from __future__ import annotations

import dataclasses
import json
import shlex

import pytest
import torch

from dp_gym import DiffusionAgent
from dp_gym.benchmark import read_result
from dp_gym.checkpoint import load_policy, load_tensors
from dp_gym.policies import make_policy
from dp_gym.tasks import TASKS, get_task
from dp_gym.zoo import (GOLDEN_FILE, GOLDEN_TOLERANCE, ZooEntryNotFoundError, check_golden, export, get_entry, list_entries,
                        zoo_root)

SHIPPED = list_entries(zoo_root())
REQUIRED_CARD_KEYS = {"task", "policy", "benchmark_args", "training", "results", "data", "training_seed_spread", "versions"}


def test_the_zoo_ships_entries_for_the_comparison_tasks():
    names = {e.name for e in SHIPPED}
    assert {"pusht_keypoints/diffusion", "kitchen_complete_abs/diffusion"} <= names, names


@pytest.mark.parametrize("entry", SHIPPED, ids=lambda e: e.name)
def test_shipped_entry_gives_its_golden_actions(entry):
    assert check_golden(entry) <= GOLDEN_TOLERANCE


@pytest.mark.parametrize("entry", SHIPPED, ids=lambda e: e.name)
def test_shipped_entry_loads_by_name_in_float32_with_the_weights_its_card_declares(entry):
    agent = DiffusionAgent.from_pretrained(f"zoo:{entry.name}")
    assert all(p.dtype == torch.float32 for p in agent.policy.parameters())
    stored, meta = load_tensors(entry.path / "model.safetensors")
    weights = [v for k, v in stored.items() if "normalizer" not in k and v.is_floating_point()]
    dtype = getattr(torch, entry.card.get("weights_dtype", "float16"))
    assert weights and all(v.dtype == dtype for v in weights)
    assert meta["versions"]["torch"] and meta["versions"]["dp_gym"]
    assert meta["task"] == entry.task and entry.task in TASKS


@pytest.mark.parametrize("entry", SHIPPED, ids=lambda e: e.name)
def test_shipped_card_is_complete_and_its_commands_parse(entry):
    from dp_gym.benchmark import parse_args as parse_benchmark
    from dp_gym.train import parse_args as parse_train

    card = entry.card
    assert REQUIRED_CARD_KEYS <= set(card), REQUIRED_CARD_KEYS - set(card)
    assert (card["task"], card["policy"]) == (entry.task, entry.policy)
    # one command, or a chain of stages joined by "&&" (each later stage starts from the one before)
    stages = card["training"]["command"].split(" && ")
    steps = 0
    for i, command in enumerate(stages):
        argv = shlex.split(command)
        assert argv[:3] == ["python", "-m", "dp_gym.train"]
        cfg = parse_train(argv[3:])
        assert cfg.task == entry.task and cfg.seed == card["training"]["shipped_seed"]
        assert (cfg.init_from is not None) == (i > 0)
        steps += cfg.steps
    assert steps == card["training"]["steps"]
    assert card["training"]["shipped_seed"] in card["training"]["seeds"]
    bench = parse_benchmark(["--task", entry.task, "--policy", f"x=zoo:{entry.name}", *card["benchmark_args"]])
    assert bench.task == entry.task
    for r in card["results"]:
        lo, hi = r["success_ci95"]
        assert 0 <= lo <= r["success_rate"] <= hi <= 1 and r["episodes"] > 0
    assert (entry.path / "README.md").read_text().startswith(f"# {entry.task} / {entry.policy}")
    if "gpu_recipe" in card:  # an entry trained below the paper's budget carries the paper's recipe
        argv = shlex.split(card["gpu_recipe"]["command"])
        with pytest.MonkeyPatch.context() as mp:  # parsed as on a GPU machine
            mp.setattr(torch.cuda, "is_available", lambda: True)
            cfg = parse_train(argv[3:])
        assert argv[:3] == ["python", "-m", "dp_gym.train"] and cfg.task == entry.task and cfg.device == "cuda"
        assert card["gpu_recipe"]["command"] in (entry.path / "README.md").read_text()


@pytest.mark.parametrize("entry", SHIPPED, ids=lambda e: e.name)
def test_shipped_card_matches_the_protocols_recipe(entry):
    # a recipe changed in benchmarks/zoo_protocol.py must be re-shipped, not left beside an older entry
    zp = load_protocol()
    recipe, card = zp.RECIPES[entry.name], entry.card
    assert card["training"]["command"] == zp.train_command(entry.name, card["training"]["shipped_seed"])
    assert card["training"]["seeds"] == recipe["seeds"] and card["training"]["steps"] == zp.total_steps(entry.name)
    assert card["benchmark_args"] == recipe["benchmark_args"] and card["summary"] == recipe["summary"]
    assert card["data"]["file"] == recipe["data"]


def tiny_bc():
    policy = make_policy("bc", dict(obs_shapes={"obs": [20]}, action_dim=2, horizon=9, n_obs_steps=2, n_action_steps=8, hidden_dims=[16]))
    policy.fit_normalizers({"obs": torch.rand(64, 20) * 512, "action": torch.rand(64, 2) * 512})
    return policy.eval()


def tiny_diffusion():
    policy = make_policy("diffusion", dict(obs_shapes={"obs": [20]}, action_dim=2, down_dims=[16, 32], diffusion_step_embed_dim=16))
    policy.fit_normalizers({"obs": torch.rand(64, 20) * 512, "action": torch.rand(64, 2) * 512})
    return policy.eval()


@pytest.fixture()
def tmp_zoo(tmp_path, monkeypatch, data_dir):
    """A zoo in tmp_path with a tiny diffusion entry (DDIM-3) and a tiny BC entry for pusht_keypoints."""
    monkeypatch.setenv("DP_GYM_ZOO_DIR", str(tmp_path / "zoo"))
    for name, policy, sample in (("diffusion", tiny_diffusion(), {"sampler": "ddim", "num_inference_steps": 3}), ("bc", tiny_bc(), None)):
        DiffusionAgent(policy).save(tmp_path / name)
        card = {"benchmark_args": ["--sampler", "ddim", "--num-inference-steps", "3"] if sample else []}
        export(tmp_path / name, "pusht_keypoints", name, sample_overrides=sample, card=card, data_dir=str(data_dir))
    return tmp_path / "zoo"


def test_export_stores_half_precision_and_loads_close_to_float32(tmp_path, tmp_zoo):
    entry = get_entry("zoo:pusht_keypoints/diffusion")
    policy, meta = load_policy("zoo:pusht_keypoints/diffusion")
    assert policy.config.sampler == "ddim" and policy.config.num_inference_steps == 3  # sample overrides applied
    full, _ = load_policy(tmp_path / "diffusion")
    for (k, a), b in zip(policy.state_dict().items(), full.state_dict().values()):
        assert a.dtype == b.dtype == torch.float32
        torch.testing.assert_close(a, b, atol=2e-3 * max(1.0, float(b.abs().max())), rtol=1e-3, msg=k)
    assert check_golden(entry) < 1e-5  # eager gives the stored actions exactly; the ONNX path to float rounding


def test_export_keeps_float32_weights_when_asked(tmp_path, tmp_zoo, data_dir):
    entry = export(tmp_path / "bc", "pusht_keypoints", "bc32", weights_dtype="float32", data_dir=str(data_dir))
    tensors, _ = load_tensors(entry.path / "model.safetensors")
    assert all(v.dtype == torch.float32 for v in tensors.values() if v.is_floating_point())
    assert entry.card["weights_dtype"] == "float32"
    full, _ = load_policy(tmp_path / "bc")
    shipped, _ = load_policy(entry.path)
    for a, b in zip(shipped.state_dict().values(), full.state_dict().values()):
        assert torch.equal(a, b)  # nothing rounded
    assert check_golden(entry) == 0.0
    with pytest.raises(ValueError, match="weights_dtype"):
        export(tmp_path / "bc", "pusht_keypoints", "bc8", weights_dtype="int8", data_dir=str(data_dir))


def test_golden_check_catches_a_changed_policy(tmp_zoo):
    entry = get_entry("pusht_keypoints/bc")
    tensors, meta = load_tensors(entry.path / "model.safetensors")
    key = next(k for k in tensors if k.endswith("weight"))
    tensors[key] = tensors[key] + 0.05
    from dp_gym.checkpoint import atomic_save_tensors

    atomic_save_tensors(entry.path / "model.safetensors", tensors, meta)
    with pytest.raises(AssertionError, match="moved"):
        check_golden(entry)


def test_unknown_or_malformed_zoo_names_are_refused(tmp_zoo):
    with pytest.raises(ZooEntryNotFoundError, match="available: pusht_keypoints/bc, pusht_keypoints/diffusion"):
        DiffusionAgent.from_pretrained("zoo:pusht_keypoints/ibc")
    with pytest.raises(ValueError, match="zoo:<task>/<policy>"):
        get_entry("zoo:pusht_keypoints")


def test_zoo_list_command(tmp_zoo, capsys):
    from dp_gym.zoo import main

    main(["list"])
    out = capsys.readouterr().out
    assert "zoo:pusht_keypoints/diffusion" in out and "zoo:pusht_keypoints/bc" in out


def test_suite_command_evaluates_every_entry_and_renders_the_readme_table(tmp_path, tmp_zoo, monkeypatch):
    from dp_gym import benchmark
    from dp_gym.suite import README_BEGIN, README_END, render_readme

    task = get_task("pusht_keypoints")
    monkeypatch.setitem(TASKS, "pusht_keypoints", dataclasses.replace(task, env_kwargs={**task.env_kwargs, "max_episode_steps": 12}))
    suite = tmp_path / "mini.json"
    suite.write_text(json.dumps({"name": "mini", "seeds": "100000:100003",
                                 "paper": {"pusht_keypoints": {"text": "0.91"}}}))
    benchmark.main(["--suite", str(suite), "--n-envs", "3", "--out-dir", str(tmp_path / "out")])
    record = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(record["results"]["pusht_keypoints"]) == {"diffusion", "bc"}
    r = record["results"]["pusht_keypoints"]["diffusion"]
    assert r["episodes"] == 3 and r["sampler"] == "ddim" and r["num_inference_steps"] == 3
    assert (tmp_path / "out" / "scores.png").stat().st_size > 1000
    assert "| pusht_keypoints |" in (tmp_path / "out" / "results.md").read_text()
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{README_BEGIN}\nstale table\n{README_END}\noutro\n")
    render_readme(tmp_path / "out" / "results.json", readme)
    text = readme.read_text()
    assert "stale table" not in text and "| pusht_keypoints |" in text and "| 0.91 |" in text
    assert text.startswith("intro\n") and text.endswith(f"{README_END}\noutro\n")
    readme.write_text("no markers")
    with pytest.raises(ValueError, match="markers"):
        render_readme(tmp_path / "out" / "results.json", readme)


def test_unknown_suite_is_refused_with_the_known_ones():
    from dp_gym.suite import load_suite

    with pytest.raises(FileNotFoundError, match="known suites: .*zoo"):
        load_suite("no_such_suite")


def load_protocol():
    """benchmarks/zoo_protocol.py as a module."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parent.parent / "benchmarks" / "zoo_protocol.py"
    spec = importlib.util.spec_from_file_location("zoo_protocol", path)
    zp = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zp)
    return zp


def test_protocol_recipes_parse_and_keep_the_seed_ranges_apart():
    from pathlib import Path

    from dp_gym.benchmark import parse_args as parse_benchmark, parse_seeds
    from dp_gym.collect import CollectConfig
    from dp_gym.utils.cli import parse_config
    from dp_gym.train import parse_args as parse_train

    zp = load_protocol()
    ranges = [set(parse_seeds(s)) for s in (zp.SELECTION_SEEDS, zp.HELD_OUT_SEEDS, zp.PAPER_SEEDS)]
    assert all(not (a & b) for i, a in enumerate(ranges) for b in ranges[i + 1:])  # disjoint
    for name, recipe in zp.RECIPES.items():
        task, policy = name.split("/")
        for seed in recipe["seeds"]:
            stages = zp.stage_commands(name, seed)
            assert zp.train_command(name, seed) == " && ".join(stages)
            total = 0
            for i, command in enumerate(stages):
                cfg = parse_train(shlex.split(command)[3:])
                assert (cfg.task, cfg.policy, cfg.seed, cfg.resume) == (task, policy, seed, True)
                total += cfg.steps
                if i:  # a later stage starts from the final checkpoint of the one before
                    before = parse_train(shlex.split(stages[i - 1])[3:])
                    assert Path(cfg.init_from) == Path(before.out_dir) / "checkpoints" / "latest"
            assert Path(cfg.out_dir) == zp.run_dir(name, seed) and total == zp.total_steps(name)
        parse_benchmark(["--task", task, "--policy", "x=y", *recipe["benchmark_args"]])
        if "collect" in recipe:  # scripted demos: the command writes the file the training reads
            argv = shlex.split(recipe["collect"])
            collect_cfg = parse_config(CollectConfig, argv[3:])
            assert collect_cfg.task == task.split("_")[0]
            assert Path(collect_cfg.out) == Path(cfg.data_dir) / recipe["data"]


def test_suite_entries_in_parallel_processes_give_the_in_process_results(tmp_path, tmp_zoo):
    from dp_gym.suite import run_suite

    suite = {"name": "mini", "seeds": "100000:100002"}
    # one thread in both: the thread count is part of an entry's command (it changes float rounding)
    serial = run_suite(suite, out_dir=tmp_path / "serial", n_envs=2, num_threads=1)
    parallel = run_suite(suite, out_dir=tmp_path / "parallel", n_envs=2, jobs=2, num_threads=1)
    for policy in ("diffusion", "bc"):
        a, b = serial["results"]["pusht_keypoints"][policy], parallel["results"]["pusht_keypoints"][policy]
        assert (a["success_rate"], a["episodes"]) == (b["success_rate"], b["episodes"])
        assert a["mean_max_reward"] == pytest.approx(b["mean_max_reward"], abs=1e-9)
    with pytest.raises(ValueError, match="jobs"):
        run_suite(suite, out_dir=tmp_path / "x", jobs=0)


def test_suite_resume_reruns_only_entries_whose_weights_or_options_changed(tmp_path, tmp_zoo, monkeypatch):
    from dp_gym import benchmark
    from dp_gym.checkpoint import atomic_save_tensors
    from dp_gym.suite import run_suite

    suite = {"name": "mini", "seeds": "100000:100002"}
    first = run_suite(suite, out_dir=tmp_path / "s", n_envs=2)
    ran = []
    real_run = benchmark.run
    monkeypatch.setattr(benchmark, "run", lambda cfg, command="": ran.append(cfg.policies[0]) or real_run(cfg, command))
    again = run_suite(suite, out_dir=tmp_path / "s", n_envs=2, resume=True)
    assert ran == [] and again["results"] == first["results"]  # nothing changed: nothing re-run
    entry = get_entry("pusht_keypoints/bc")  # re-ship one entry with other weights
    tensors, meta = load_tensors(entry.path / "model.safetensors")
    key = next(k for k in tensors if k.endswith("weight"))
    atomic_save_tensors(entry.path / "model.safetensors", {**tensors, key: tensors[key] * 1.5}, meta)
    run_suite(suite, out_dir=tmp_path / "s", n_envs=2, resume=True)
    assert ran == ["bc=zoo:pusht_keypoints/bc"]
    run_suite({**suite, "seeds": "100000:100003"}, out_dir=tmp_path / "s", n_envs=2, resume=True)  # other seeds: all re-run
    assert len(ran) == 3


def test_readme_spread_table_comes_from_the_cards(tmp_zoo):
    from dp_gym.suite import seed_spread_table
    from dp_gym.zoo import write_card

    record = {"results": {"pusht_keypoints": {"diffusion": {}, "bc": {}}}}
    assert seed_spread_table(record) == ""  # no card has a spread yet
    entry = get_entry("pusht_keypoints/bc")
    write_card(entry, {**entry.card, "training_seed_spread": {"seeds": "300000:300100", "per_seed": {"0": 0.5, "1": 0.7, "2": 0.6},
                                                              "mean": 0.6, "min": 0.5, "max": 0.7, "metric": "success rate",
                                                              "per_seed_results": {"0": {"mean_max_reward": 0.8, "success_rate": 0.5, "success_ci95": [0.3, 0.7]},
                                                                                   "1": {"mean_max_reward": 0.9, "success_rate": 0.7, "success_ci95": [0.5, 0.85]}}}})
    table = seed_spread_table(record)
    assert "| pusht_keypoints | bc | 3 | 0.600 | 0.50, 0.70, 0.60 | 0.850 (coverage) | 300000:300100 |" in table
    assert "diffusion" not in table


def test_protocol_record_gives_a_single_float32_seed_its_spread_from_the_suite(tmp_path, tmp_zoo, monkeypatch):
    """One training seed shipped in float32 is scored once, by the suite: ``record`` copies that
    held-out result into the card's seed spread (and ``score`` refuses to run it a second time)."""
    from dp_gym.zoo import write_card

    zp = load_protocol()
    monkeypatch.setitem(zp.RECIPES, "pusht_keypoints/bc", {**zp.RECIPES["pusht_keypoints/bc"], "seeds": [3], "weights_dtype": "float32"})
    assert zp.scored_by_suite("pusht_keypoints/bc") and not zp.scored_by_suite("pusht_keypoints/diffusion")
    entry = get_entry("pusht_keypoints/bc")
    write_card(entry, {**entry.card, "training": {"seeds": [3], "shipped_seed": 3}, "training_seed_spread": None})
    r = {"episodes": 4, "mean_max_reward": 0.5, "success_rate": 0.25, "success_ci95": [0.05, 0.7]}
    (tmp_path / "held_out" / "pusht_keypoints" / "bc").mkdir(parents=True)
    (tmp_path / "held_out" / "results.json").write_text(json.dumps({"seeds": "300000:300004", "results": {"pusht_keypoints": {"bc": r}}}))
    per_episode = {"success": [True, False, False, False], "max_reward": [1.0, 0.9, 0.1, 0.0]}
    (tmp_path / "held_out" / "pusht_keypoints" / "bc" / "results.json").write_text(
        json.dumps({"results": {"bc": {**r, "per_episode": per_episode}}}))
    zp.record(str(tmp_path / "held_out" / "results.json"), "held_out")
    card = get_entry("pusht_keypoints/bc").card
    assert card["training_seed_spread"]["per_seed"] == {"3": 0.25}
    assert card["training_seed_spread"]["per_seed_results"]["3"]["success_ci95"] == [0.05, 0.7]
    assert card["results"][0]["split"] == "held_out" and card["results"][0]["success_rate"] == 0.25
    assert card["failure_modes"] == ["3 of 4 episodes on seeds 300000:300004 fail; best score reached: 0 at 0.97 or more (within "
                                     "3% of the success threshold), 1 from 0.8 to 0.97, 2 below 0.8"]
    monkeypatch.setattr("sys.argv", ["zoo_protocol.py", "score", "pusht_keypoints/bc", "--seed", "3"])
    with pytest.raises(SystemExit, match="the zoo suite scores it"):
        zp.main()


def test_failure_modes_say_how_failed_episodes_end():
    zp = load_protocol()
    dense = {"success": [True, False, False, None, False], "max_reward": [1.0, 0.99, 0.5, None, 0.85],
             "length": [120, 300, 300, None, 250]}
    assert zp.failure_modes(dense, "0:5", max_steps=300) == [
        "3 of 5 episodes on seeds 0:5 fail (1 more raised an error), 2 of them at the 300-step limit; best score reached: "
        "1 at 0.97 or more (within 3% of the success threshold), 1 from 0.8 to 0.97, 1 below 0.8"]
    kitchen = {"success": [False, False, True], "max_reward": [0.5, 0.75, 1.0], "completed": [2, 3, 4], "length": [280, 280, 200]}
    assert zp.failure_modes(kitchen, "0:3", max_steps=280) == [
        "2 of 3 episodes on seeds 0:3 fail, all at the 280-step limit: 1 stop after 2 of the tasks, 1 stop after 3 of the tasks"]
    sparse = {"success": [False, True, False, False], "max_reward": [0.0, 1.0, 0.0, 0.0], "length": [400, 90, 400, 400]}
    labels = {"episodes": [{"seed": 10, "mode": "never_lifted"}, {"seed": 12, "mode": "lifted_not_in_bin"},
                           {"seed": 13, "mode": "lifted_not_in_bin"}]}
    lines = zp.failure_modes(sparse, "10:14", max_steps=400, labels=labels)
    assert lines == [
        "3 of 4 episodes on seeds 10:14 fail, all at the 400-step limit (the reward is sparse: 0 until success)",
        "how they end, from the simulator (`benchmarks/tools/robosuite_failure_modes.py` replays each failed seed alone; "
        "the labels are defined there): 2 lifted_not_in_bin, 1 never_lifted"]
    labels["n_envs"] = 10
    assert "robosuite_failure_modes.py` replays the suite's episodes in its batches of 10 envs; the labels" in \
        zp.failure_modes(sparse, "10:14", max_steps=400, labels=labels)[1]
    labels["episodes"][0]["mode"] = "success"  # a replay at another batch size can diverge from the suite's run
    assert zp.failure_modes(sparse, "10:14", max_steps=400, labels=labels)[1].endswith(
        "): 2 lifted_not_in_bin; 1 succeeded when replayed (float rounding differs from the suite's run with the batch "
        "size and the CPU, and small differences grow over a contact-rich episode)")
    assert zp.failure_modes({"success": [True], "max_reward": [1.0]}, "0:1") == ["no failed episode on seeds 0:1"]


def test_failure_labels_cover_every_failed_seed(tmp_path):
    zp = load_protocol()
    per_episode = {"success": [False, True, False]}
    assert zp.failure_labels(tmp_path, [10, 11, 12], per_episode) is None  # no labels file: none used
    failed_only = {"n_envs": 1, "episodes": [{"seed": 12, "mode": "never_lifted"}, {"seed": 10, "mode": "lifted_not_in_bin"}]}
    (tmp_path / "failure_modes.json").write_text(json.dumps(failed_only))
    assert zp.failure_labels(tmp_path, [10, 11, 12], per_episode)["episodes"] == [
        {"seed": 10, "mode": "lifted_not_in_bin"}, {"seed": 12, "mode": "never_lifted"}]  # in seed order
    every_seed = {"n_envs": 10, "episodes": [*failed_only["episodes"], {"seed": 11, "mode": "success"}]}
    (tmp_path / "failure_modes.json").write_text(json.dumps(every_seed))
    got = zp.failure_labels(tmp_path, [10, 11, 12], per_episode)
    assert [ep["seed"] for ep in got["episodes"]] == [10, 12] and got["n_envs"] == 10  # the failed ones only
    (tmp_path / "failure_modes.json").write_text(json.dumps({"episodes": failed_only["episodes"][:1]}))
    with pytest.raises(ValueError, match=r"no label for the failed seeds \[10\]"):
        zp.failure_labels(tmp_path, [10, 11, 12], per_episode)


def test_shipped_seed_is_the_median_of_the_committed_selection_runs():
    # every multi-seed entry ships the seed its recipe's ranking puts in the middle of the
    # selection-seed results committed beside it (benchmarks/results/zoo/<entry>/seedN/selection/)
    zp = load_protocol()
    checked = 0
    for entry in SHIPPED:
        recipe = zp.RECIPES[entry.name]
        if len(recipe["seeds"]) < 2:
            continue
        selection = {s: read_result(zp.score_dir(entry.name, s, "selection")) for s in recipe["seeds"]}
        assert zp.median_seed(entry.name, selection) == entry.card["training"]["shipped_seed"], entry.name
        checked += 1
    assert checked >= 10


def test_median_seed_ranks_by_the_recipes_rule():
    zp = load_protocol()
    results = {0: {"success_rate": 0.06, "mean_max_reward": 0.674}, 1: {"success_rate": 0.10, "mean_max_reward": 0.736},
               2: {"success_rate": 0.08, "mean_max_reward": 0.670}}
    assert zp.RECIPES["pusht_image/diffusion"]["rank_by"] == "task_score"
    assert zp.median_seed("pusht_image/diffusion", results) == 0  # coverage: 0.670 < 0.674 < 0.736
    assert zp.median_seed("pusht_keypoints/diffusion", results) == 2  # success first: 0.06 < 0.08 < 0.10
