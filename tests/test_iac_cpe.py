"""IAC-CPE: losses on hand-computed inputs, data pipelines, CLI, run outputs, resume, bad input."""
import os
import subprocess
import sys
from types import SimpleNamespace

import h5py
import numpy as np
import pytest
import torch

from conftest import ROOT, SHIPPED, check_resume_matches, make_config, read_metrics

MEDIUM_REPLAY = SHIPPED / "medium-replay-v0"
config = make_config


# ----------------------------------------------------------------------------------- losses
def test_cpe_loss_matches_gaussian_closed_form(iac_cpe):
    """eq. (12) with pi and pibar sharing sigma: d = sum_j (m_j - mbar_j)(a1_j - a2_j) / sigma_j^2."""
    torch.manual_seed(0)
    m, m_bar = torch.randn(5, 3), torch.randn(5, 3)
    sigma = torch.tensor([0.5, 1.0, 2.0])
    pairs = torch.randn(2, 5, 3)
    dq = torch.randn(5)
    beta = 3.0
    logp = torch.distributions.Normal(m, sigma).log_prob(pairs).sum(-1)
    logp_bar = torch.distributions.Normal(m_bar, sigma).log_prob(pairs).sum(-1)
    got = iac_cpe.cpe_loss(logp, logp_bar, dq, beta)
    d = ((m - m_bar) * (pairs[0] - pairs[1]) / sigma ** 2).sum(-1)
    assert got.item() == pytest.approx(((d - beta * dq) ** 2).mean().item(), rel=1e-5)
    clipped = iac_cpe.cpe_loss(logp, logp_bar, dq, beta, clip=0.5)
    assert clipped.item() == pytest.approx(((d - (beta * dq).clamp(-0.5, 0.5)) ** 2).mean().item(), rel=1e-5)


def test_cpe_loss_is_zero_when_beta_zero_and_pi_equals_pibar(iac_cpe):
    cfg = iac_cpe.TrainConfig(dataset_id="x", hidden_dim=16)
    agent = iac_cpe.IACCPE(4, 2, cfg, torch.device("cpu"))
    s, pairs = torch.randn(8, 4), torch.randn(2, 1, 8, 2)
    logp = agent.actor(s).log_prob(pairs).sum(-1)
    logp_bar = agent.actor_target(s).log_prob(pairs).sum(-1)
    loss = iac_cpe.cpe_loss(logp, logp_bar, torch.randn(1, 8), beta=0.0)
    assert loss.item() == 0.0
    loss_nonzero = iac_cpe.cpe_loss(logp, logp_bar, torch.ones(1, 8), beta=1.0)
    assert loss_nonzero.item() == pytest.approx(1.0)


def test_critic_and_bc_losses(iac_cpe):
    q = torch.tensor([[1.0, 2.0], [3.0, 5.0]])  # (2 critics, B=2)
    y = torch.tensor([0.0, 2.0])
    assert iac_cpe.critic_loss(q, y).item() == pytest.approx((1 + 0) / 2 + (9 + 9) / 2)
    assert iac_cpe.bc_loss(torch.tensor([-1.0, -3.0])).item() == pytest.approx(2.0)


def test_twin_q_members_are_independent_linear_stacks(iac_cpe):
    """The batched ensemble computes each critic exactly like its own nn.Linear stack."""
    cfg = iac_cpe.TrainConfig(dataset_id="x", hidden_dim=8, n_hidden=2)
    q = iac_cpe.TwinQ(3, 2, cfg)
    s, a = torch.randn(5, 3), torch.randn(4, 5, 2)
    out = q(s, a)
    assert out.shape == (2, 4, 5)
    x = torch.cat([s.expand(4, 5, 3), a], -1)
    for i in range(2):
        h = x
        for layer in q.net:
            h = torch.relu(h) if isinstance(layer, torch.nn.ReLU) else h @ layer.weight[i] + layer.bias[i, 0]
        torch.testing.assert_close(out[i], h[..., 0])
    assert not torch.allclose(out[0], out[1])


# -------------------------------------------------------------------------------------- data
def test_minari_episodes_become_transitions(iac_cpe):
    obs1, obs2 = np.arange(4 * 2).reshape(4, 2), 100 + np.arange(3 * 2).reshape(3, 2)
    eps = [SimpleNamespace(observations=obs1, actions=np.ones((3, 1)), rewards=np.array([1, 2, 3]),
                           terminations=np.array([0, 0, 1]), truncations=np.array([0, 0, 0])),
           SimpleNamespace(observations=obs2, actions=np.zeros((2, 1)), rewards=np.array([4, 5]),
                           terminations=np.array([0, 0]), truncations=np.array([0, 1]))]
    s, a, r, s2, d = iac_cpe.minari_transitions(eps)
    np.testing.assert_array_equal(s, np.concatenate([obs1[:-1], obs2[:-1]]))
    np.testing.assert_array_equal(s2, np.concatenate([obs1[1:], obs2[1:]]))  # no boundary crossing
    np.testing.assert_array_equal(r, [1, 2, 3, 4, 5])
    np.testing.assert_array_equal(d, [0, 0, 1, 0, 0])  # the truncation does not stop bootstrapping
    assert a.shape == (5, 1) and s.dtype == np.float32


def test_shipped_minari_dataset_loads_with_refs(iac_cpe, tmp_path):
    data = iac_cpe.load_dataset(config(iac_cpe, tmp_path))
    import minari
    ds = minari.MinariDataset(MEDIUM_REPLAY / "data")
    assert len(data.rewards) == ds.total_steps
    assert data.dones.sum() == sum(ep.terminations.sum() for ep in ds.iterate_episodes())
    assert data.env_id == "Hopper-v5" and data.states.shape[1] == 11 and data.actions.shape[1] == 3
    assert data.ref_min < data.ref_max


def write_d4rl(path, obs_dim=11, act_dim=3):
    """7 rows: ep1 rows 0-2 (timeout at 2), ep2 rows 3-4 (terminal at 4), ep3 rows 5-6."""
    n = 7
    with h5py.File(path, "w") as f:
        f["observations"] = np.arange(n * obs_dim, dtype=np.float64).reshape(n, obs_dim)
        f["actions"] = np.full((n, act_dim), 0.5, np.float32)
        f["rewards"] = np.arange(n, dtype=np.float32)
        f["terminals"] = np.array([0, 0, 0, 0, 1, 0, 0], bool)
        f["timeouts"] = np.array([0, 0, 1, 0, 0, 0, 0], bool)
    return path


def test_d4rl_hdf5_becomes_qlearning_dataset(iac_cpe, tmp_path):
    path = write_d4rl(tmp_path / "hopper-medium-v2.hdf5")
    data = iac_cpe.load_dataset(iac_cpe.TrainConfig(dataset_path=str(path)))
    kept = [0, 1, 3, 4, 5]  # the timed-out step 2 and the last row 6 are dropped, as d4rl does
    obs = np.arange(7 * 11).reshape(7, 11)
    np.testing.assert_array_equal(data.states, obs[kept])
    np.testing.assert_array_equal(data.next_states, obs[[i + 1 for i in kept]])
    np.testing.assert_array_equal(data.rewards, kept)
    np.testing.assert_array_equal(data.dones, [0, 0, 0, 1, 0])
    assert (data.env_id, data.ref_min, data.ref_max) == ("Hopper-v4", -20.272305, 3234.3)


def test_normalized_score_arithmetic(iac_cpe):
    ref_min, ref_max = -20.272305, 3234.3
    np.testing.assert_allclose(iac_cpe.normalized_score([ref_min, ref_max, (ref_min + ref_max) / 2],
                                                        ref_min, ref_max), [0, 100, 50])


# --------------------------------------------------------------------------------- training
def test_cli_quickstart_writes_metrics_checkpoint_and_offline_wandb(tmp_path):
    """The user's command (--config spelling, wandb offline, no login, no network) on shipped data."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"} | {"HOME": str(tmp_path)}
    cmd = [sys.executable, "algorithms/iac_cpe.py", "--config", "configs/iac_cpe/quickstart.yaml",
           "--dataset_path", str(MEDIUM_REPLAY), "--max_timesteps", "200", "--eval_freq", "100",
           "--n_episodes", "2", "--hidden_dim", "32", "--output_dir", str(tmp_path / "runs"), "--name", "q"]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "q"
    rows = read_metrics(run)
    assert [r["step"] for r in rows] == [100, 200]
    for key in ("return_mean", "return_std", "normalized_score", "elapsed_s", "critic_loss", "cpe_loss", "bc_loss"):
        assert all(np.isfinite(r[key]) for r in rows), key
    assert "step 200: return" in out.stdout
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert state["step"] == 200
    assert list((run / "wandb").glob("offline-run-*")), "wandb offline run folder missing"
    saved = (run / "config.yaml").read_text()
    assert "max_timesteps: 200" in saved and "hidden_dim: 32" in saved


def test_reference_override_normalises_returns(iac_cpe, tmp_path):
    run = iac_cpe.train(config(iac_cpe, tmp_path, max_timesteps=100, ref_min_score=0.0, ref_max_score=1000.0))
    row = read_metrics(run)[0]
    assert row["normalized_score"] == pytest.approx(row["return_mean"] / 10)


def test_resume_gives_the_same_metrics_as_an_uninterrupted_run(iac_cpe, tmp_path):
    check_resume_matches(iac_cpe, tmp_path)


def test_no_reference_scores_logs_raw_returns(iac_cpe, tmp_path, capsys):
    import minari
    from minari.data_collector import EpisodeBuffer
    rng = np.random.default_rng(0)
    eps = [EpisodeBuffer(observations=rng.normal(size=(21, 11)).astype(np.float32),
                         actions=rng.uniform(-1, 1, (20, 3)).astype(np.float32), rewards=rng.normal(size=20),
                         terminations=np.zeros(20, bool), truncations=np.r_[np.zeros(19, bool), True])
           for _ in range(3)]
    minari.create_dataset_from_buffers("test/hopper/norefs-v0", eps, env="Hopper-v5")
    run = iac_cpe.train(config(iac_cpe, tmp_path, dataset_path=None, dataset_id="test/hopper/norefs-v0",
                               max_timesteps=100))
    assert read_metrics(run)[0]["normalized_score"] is None
    assert "carries no reference returns" in capsys.readouterr().out


# -------------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kw, field", [
    (dict(dataset_path=None), "exactly one of dataset_id"),
    (dict(dataset_id="mujoco/hopper/medium-v0"), "exactly one of dataset_id"),
    (dict(batch_size=0), "batch_size"),
    (dict(delta_q="max"), "delta_q"),
    (dict(dataset_path="nowhere/hopper-medium-v2.hdf5"), "dataset_path nowhere"),
    (dict(env="HalfCheetah-v5"), "set env to the dataset's env"),
    (dict(dataset_path=str(ROOT / "configs")), "neither a Minari dataset folder"),
])
def test_bad_config_fails_before_training(iac_cpe, tmp_path, kw, field):
    with pytest.raises(iac_cpe.InputError, match=field):
        iac_cpe.train(config(iac_cpe, tmp_path, **kw))
    assert not (tmp_path / "runs").exists()


def test_d4rl_file_whose_shape_does_not_match_its_env(iac_cpe, tmp_path):
    path = write_d4rl(tmp_path / "halfcheetah-medium-v2.hdf5", obs_dim=11, act_dim=3)
    with pytest.raises(iac_cpe.InputError, match="HalfCheetah-v4"):
        iac_cpe.train(config(iac_cpe, tmp_path, dataset_path=str(path)))


def test_missing_minari_id_says_how_to_get_it(iac_cpe, tmp_path):
    with pytest.raises(iac_cpe.InputError, match="minari download mujoco/hopper/medium-v0"):
        iac_cpe.train(config(iac_cpe, tmp_path, dataset_path=None, dataset_id="mujoco/hopper/medium-v0"))


def test_download_without_network_fails_fast_with_advice(tmp_path):
    cmd = [sys.executable, "algorithms/iac_cpe.py", "--dataset_id", "mujoco/hopper/medium-v0", "--download", "true"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MINARI_DATASETS_PATH": str(tmp_path)}
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1
    assert "download of dataset_id 'mujoco/hopper/medium-v0' failed" in out.stderr
    assert "Traceback" not in out.stderr


@pytest.mark.parametrize("args, message", [
    (["--batch_size", "abc"], "batch_size"),
    (["--normalize", "maybe"], "normalize must be true or false"),
])
def test_wrong_types_are_named(iac_cpe, args, message):
    with pytest.raises(iac_cpe.InputError, match=message):
        iac_cpe.parse_config(["--dataset_id", "x"] + args)


def test_unknown_keys_are_named(iac_cpe, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_id: x\nbeat: 3.0\n")
    with pytest.raises(iac_cpe.InputError, match="beat"):
        iac_cpe.parse_config(["--config", str(bad)])
    with pytest.raises(SystemExit):
        iac_cpe.parse_config(["--dataset_id", "x", "--beat", "3"])
    assert "--beat" in capsys.readouterr().err


def test_nan_loss_stops_and_keeps_last_good_checkpoint(iac_cpe, tmp_path, monkeypatch):
    update = iac_cpe.IACCPE.update
    calls = {"n": 0}

    def poisoned(self, *batch):
        losses = update(self, *batch)
        calls["n"] += 1
        if calls["n"] > 150:
            losses["critic_loss"] = losses["critic_loss"] * float("nan")
        return losses

    monkeypatch.setattr(iac_cpe.IACCPE, "update", poisoned)
    with pytest.raises(FloatingPointError, match="critic_loss.*step 100"):
        iac_cpe.train(config(iac_cpe, tmp_path, max_timesteps=300))
    run = tmp_path / "runs" / "t"
    assert torch.load(run / "checkpoint.pt", weights_only=False)["step"] == 100
    assert [r["step"] for r in read_metrics(run)] == [100]
