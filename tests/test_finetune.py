"""Offline-to-online fine-tuning in the four files that do it (IAC-CPE, IQL, AWAC, SPOT): the online
phase appends exactly online_steps transitions to the offline buffer, keeps the offline state
normaliser, logs phase, env steps and training-episode returns, resumes mid-episode to the same
metrics, starts a fresh episode when an env cannot be replayed; SPOT's lambda cooling; the
offline-only files refuse online steps."""
import json

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from conftest import ONLINE, SHIPPED, load_algorithm, make_config, read_metrics, train_interrupted, without_timing


@pytest.fixture(params=ONLINE)
def online_algo(request):
    return load_algorithm(request.param)


def online_config(mod, tmp_path, **kw):
    """100 offline updates, then 200 env steps with one update each; records every 100 updates."""
    return make_config(mod, tmp_path, **{"max_timesteps": 100, "online_steps": 200, **kw})


def test_online_phase_appends_exactly_online_steps_and_keeps_the_normaliser(online_algo, tmp_path):
    run = online_algo.train(online_config(online_algo, tmp_path))
    rows = read_metrics(run)
    assert [(r["step"], r["phase"], r["env_steps"]) for r in rows if r["phase"] != "pretrain"] == \
        [(100, "offline", 0), (200, "online", 100), (300, "online", 200)]
    assert any(r.get("online_episodes") for r in rows) and all(
        np.isfinite(r["online_return_mean"]) for r in rows if "online_episodes" in r)
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    data = online_algo.load_dataset(online_config(online_algo, tmp_path))
    assert state["progress"]["buffer_size"] == len(data.rewards) + 200
    with h5py.File(run / "online_buffer.hdf5") as f:
        assert {k: len(f[k]) for k in f} == dict.fromkeys(["actions", "dones", "next_states", "rewards", "states"], 200)
    normalize = online_algo.preprocessing(online_algo.TrainConfig(dataset_id="x"), data)[0]
    want = online_algo.Normalizer(data.states.shape[1], data.states if normalize else None)
    for k, v in want.state_dict().items():  # still the offline data's statistics
        torch.testing.assert_close(state["agent"]["normalizer"][k], v, rtol=0, atol=0)


def test_an_online_run_interrupted_mid_episode_resumes_to_the_same_metrics(online_algo, tmp_path, monkeypatch):
    full = online_algo.train(online_config(online_algo, tmp_path, name="full"))
    part = train_interrupted(online_algo, monkeypatch, online_config(online_algo, tmp_path, name="part"), 200)
    progress = torch.load(part / "checkpoint.pt", weights_only=False)["progress"]
    assert progress["online"]["start"] < progress["buffer_size"]  # stopped inside an episode
    with h5py.File(part / "online_buffer.hdf5", "a") as f:  # rows written after the checkpoint (a crash
        for k in f:                                            # between appending and the checkpoint's rename)
            f[k].resize(len(f[k]) + 3, axis=0)
    online_algo.train(online_algo.parse_config(["--resume", str(part)]))
    assert without_timing(read_metrics(part)) == without_timing(read_metrics(full))
    with h5py.File(part / "online_buffer.hdf5") as f:
        assert len(f["rewards"]) == 200
    a, b = (torch.load(r / "checkpoint.pt", weights_only=False)["agent"] for r in (full, part))
    for net in ("actor", "critic"):
        for k in a[net]:
            torch.testing.assert_close(a[net][k], b[net][k], rtol=0, atol=0)


class JitteryHopper(gym.Wrapper):
    """Hopper-v5 whose dynamics get noise from an unseeded generator: not reproducible from a seed
    and a list of actions, as a real non-deterministic env."""

    def __init__(self):
        super().__init__(gym.make("Hopper-v5"))
        self.jitter = np.random.default_rng()  # deliberately unseeded

    def step(self, action):
        obs, *rest = self.env.step(action)
        return obs + 1e-3 * self.jitter.normal(size=obs.shape), *rest


def test_an_env_that_cannot_be_replayed_resumes_with_a_fresh_episode(tmp_path, monkeypatch, capsys):
    """What differs from an uninterrupted run: the episode that was running at the checkpoint is
    abandoned (its transitions stay in the buffer), the env resets with the next episode's seed, and
    the run still takes exactly online_steps env steps."""
    gym.register("JitteryHopper-v0", entry_point=f"{__name__}:JitteryHopper", max_episode_steps=1000)
    iql = load_algorithm("iql")
    part = train_interrupted(iql, monkeypatch, online_config(iql, tmp_path, env="JitteryHopper-v0"), 200)
    episode = torch.load(part / "checkpoint.pt", weights_only=False)["progress"]["online"]["episode"]
    iql.train(iql.parse_config(["--resume", str(part)]))
    assert "did not replay the unfinished online episode; a fresh one starts" in capsys.readouterr().out
    state = torch.load(part / "checkpoint.pt", weights_only=False)["progress"]
    assert state["env_steps"] == 200 and state["online"]["episode"] > episode
    assert [r["env_steps"] for r in read_metrics(part)] == [0, 100, 200]


def test_spot_lambda_cools_as_the_official_schedule():
    """SPOT.py train_online: lambda * max(lambd_end, 1 - t / T), t the online updates done."""
    spot = load_algorithm("spot")
    cfg = spot.TrainConfig(dataset_id="x", lambda_=0.25, max_timesteps=100, online_steps=1000, lambd_end=0.2)
    got = [spot.cooled_lambda(cfg, step) for step in (1, 100, 101, 600, 900, 1100)]
    assert got == pytest.approx([0.25, 0.25, 0.25 * 0.999, 0.125, 0.05, 0.05])
    off = spot.TrainConfig(dataset_id="x", lambda_=0.25, max_timesteps=100, online_steps=1000, lambd_cool=False)
    assert spot.cooled_lambda(off, 600) == 0.25


def test_exploration_samples_around_the_evaluation_action(online_algo):
    torch.manual_seed(0)
    agent = online_algo.Agent(11, 3, online_algo.TrainConfig(dataset_id="x", hidden_dim=16), online_algo.Normalizer(11),
                              torch.device("cpu"))
    obs = torch.randn(512, 11)
    explored, greedy = agent.explore(obs), agent.act(obs)
    assert explored.shape == greedy.shape and explored.abs().max() <= 1
    assert not torch.equal(explored, agent.explore(obs))  # random
    assert (explored - greedy).abs().mean() < 1.0  # around the evaluation action


@pytest.mark.parametrize("name", ["td3_bc", "por"])
def test_offline_only_files_refuse_online_steps(name, tmp_path):
    mod = load_algorithm(name)
    with pytest.raises(mod.InputError, match="online_steps=10: .* is offline-only"):
        mod.train(make_config(mod, tmp_path, online_steps=10))


def test_the_buffer_capacity_is_checked_before_the_run(tmp_path):
    iql = load_algorithm("iql")
    n = json.loads((SHIPPED / "medium-replay-v0" / "data" / "metadata.json").read_text())["total_steps"]
    with pytest.raises(iql.InputError, match=f"buffer_size {n + 50} cannot hold .* plus online_steps 100"):
        iql.train(make_config(iql, tmp_path, online_steps=100, buffer_size=n + 50))
    assert not (tmp_path / "runs").exists()
