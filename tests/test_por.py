"""POR: losses on hand-computed inputs, twin V, decoupled updates, the eq. (7) action, reward
scale, por_q's pre-training phase, offline only. (Resume, bad input, CLI: tests/test_plumbing.py.)"""
import math

import numpy as np
import pytest
import torch

from conftest import dataset, load_algorithm, make_config, read_metrics, train_interrupted


@pytest.fixture(scope="module")
def por():
    return load_algorithm("por")


def batch(n=8, obs=4, act=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, obs, generator=g), torch.rand(n, act, generator=g) * 2 - 1,
            torch.randn(n, generator=g), torch.randn(n, obs, generator=g), torch.zeros(n))


# ----------------------------------------------------------------------------------- losses
def test_expectile_loss_is_asymmetric_and_averages_the_heads(por):
    assert por.expectile_loss(torch.tensor([2.0]), 0.7).item() == pytest.approx(0.7 * 4)
    assert por.expectile_loss(torch.tensor([-2.0]), 0.7).item() == pytest.approx(0.3 * 4)
    assert por.expectile_loss(torch.tensor([2.0, -2.0]), 0.5).item() == pytest.approx(0.5 * 4)
    diff = torch.tensor([[1.0, -1.0], [3.0, 0.0]])  # (2 heads, B=2)
    per_head = [(0.9 * 1 + 0.1 * 1) / 2, (0.9 * 9 + 0) / 2]
    assert por.expectile_loss(diff, 0.9).item() == pytest.approx(sum(per_head) / 2)


def test_guide_residual_loss_weights_are_exp_alpha_adv_capped_and_detached(por):
    logp = torch.tensor([-1.0, -2.0, -3.0], requires_grad=True)
    adv = torch.tensor([0.0, 0.5, 5.0], requires_grad=True)  # exp(3 * 5) is capped at 100
    loss = por.guide_residual_loss(logp, adv, alpha=3.0, weight_max=100.0)
    w = [1.0, math.exp(1.5), 100.0]
    assert loss.item() == pytest.approx((w[0] * 1 + w[1] * 2 + w[2] * 3) / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, -torch.tensor(w) / 3)
    assert adv.grad is None  # the weights carry no gradient
    slides = por.guide_residual_loss(logp.detach(), adv.detach(), alpha=1.0, weight_max=None)
    assert slides.item() == pytest.approx((1 + math.exp(0.5) * 2 + math.exp(5.0) * 3) / 3)


def test_guide_value_loss_normalises_by_mean_abs_v(por):
    v_hat = torch.tensor([1.0, -3.0], requires_grad=True)
    logp_b = torch.tensor([-1.0, -2.0], requires_grad=True)
    loss = por.guide_value_loss(v_hat, logp_b, alpha=2.0)  # lambda = 2 / mean(1, 3) = 1
    assert loss.item() == pytest.approx(((-1 + 1) + (3 + 2)) / 2)
    loss.backward()
    torch.testing.assert_close(v_hat.grad, torch.tensor([-0.5, -0.5]))  # normaliser detached
    torch.testing.assert_close(logp_b.grad, torch.tensor([-0.5, -0.5]))
    slides = por.guide_value_loss_slides(torch.tensor([1.0, 2.0]), torch.tensor([-1.0, -3.0]), alpha=0.5)
    assert slides.item() == pytest.approx(-((1 - 0.5) + (2 - 1.5)) / 2)


def test_execute_and_behaviour_losses_on_a_known_gaussian(por):
    cfg = por.TrainConfig(dataset_id="x", hidden_dim=8, n_hidden=1)
    pi = por.GaussianPolicy(4, 2, 8, cfg)
    with torch.no_grad():
        pi.mu[-1].weight.zero_()
        pi.mu[-1].bias.copy_(torch.tensor([0.5, -1.0]))
        pi.log_std.copy_(torch.tensor([math.log(0.5), -10.0]))  # the second is clamped to -5
    x, a = torch.randn(2, 4), torch.tensor([[1.0, -1.0], [0.0, 0.0]])
    logp = pi(x).log_prob(a).sum(-1)

    def log_normal(y, m, s):
        return -(y - m) ** 2 / (2 * s ** 2) - math.log(s) - 0.5 * math.log(2 * math.pi)
    s2 = math.exp(-5)
    hand = [log_normal(1, 0.5, 0.5) + log_normal(-1, -1, s2), log_normal(0, 0.5, 0.5) + log_normal(0, -1, s2)]
    torch.testing.assert_close(logp, torch.tensor(hand))
    assert por.execute_loss(logp).item() == pytest.approx(-sum(hand) / 2, rel=1e-5)
    assert por.behavior_guide_loss(logp).item() == pytest.approx(-sum(hand) / 2, rel=1e-5)


def test_twin_v_heads_are_independent_mlps_with_layer_norm(por):
    cfg = por.TrainConfig(dataset_id="x", hidden_dim=8, n_hidden=2, layer_norm=True)
    v = por.TwinV(3, cfg)
    with torch.no_grad():  # distinct LayerNorm gains per head
        for p in v.parameters():
            p.add_(0.1 * torch.randn_like(p))
    s = torch.randn(5, 3)
    out = v(s)
    assert out.shape == (2, 5)
    for i in range(2):
        h = s
        for layer in v.net:
            if isinstance(layer, por.VectorizedLinear):
                h = h @ layer.weight[i] + layer.bias[i, 0]
            elif isinstance(layer, por.VectorizedLayerNorm):
                h = torch.nn.functional.layer_norm(h, (8,), layer.weight[i, 0], layer.bias[i, 0])
            else:
                h = torch.relu(h)
        torch.testing.assert_close(out[i], h[..., 0])
    assert sum(isinstance(m, por.VectorizedLayerNorm) for m in v.net) == 2
    no_ln = por.TwinV(3, por.TrainConfig(dataset_id="x", hidden_dim=8, layer_norm=False))
    assert not any(isinstance(m, por.VectorizedLayerNorm) for m in no_ln.net)


# ------------------------------------------------------------------------------------ update
def test_execute_policy_is_decoupled_from_v_and_guide(por):
    """pi's training uses only dataset (s, a, s'): different V/g settings give the same pi."""
    nets = []
    for kw in (dict(), dict(guide="por_q", expectile=0.9, alpha=50.0, layer_norm=False)):
        torch.manual_seed(0)  # same initial V, g and pi (b, when there, is built after them)
        agent = por.Agent(4, 2, por.TrainConfig(dataset_id="x", hidden_dim=16, execute_hidden_dim=16, **kw),
                          por.Normalizer(4), torch.device("cpu"))
        for i in range(5):
            agent.update(*batch(seed=i), step=i + 1)
        nets.append(agent)
    for p, q in zip(nets[0].execute.parameters(), nets[1].execute.parameters()):
        torch.testing.assert_close(p, q, rtol=0, atol=0)
    assert not torch.equal(nets[0].guide.mu[0].weight, nets[1].guide.mu[0].weight)


@pytest.mark.parametrize("kw", [dict(), dict(guide="por_q"), dict(guide="por_q", por_q_objective="slides")])
def test_one_update_moves_v_target_by_polyak_and_leaves_b_frozen(por, kw):
    cfg = por.TrainConfig(dataset_id="x", hidden_dim=16, execute_hidden_dim=16, tau=0.1, **kw)
    agent = por.Agent(4, 2, cfg, por.Normalizer(4), torch.device("cpu"))
    assert (agent.behavior_guide is not None) == (kw == dict(guide="por_q"))
    target0 = [p.clone() for p in agent.value_target.parameters()]
    b0 = [p.clone() for p in agent.behavior_guide.parameters()] if agent.behavior_guide else []
    lr0 = agent.guide_opt.param_groups[0]["lr"]
    out = agent.update(*batch(), step=1)
    assert set(out) == {"value_loss", "guide_loss", "execute_loss", "v_mean"}
    assert all(torch.isfinite(v) and not v.requires_grad for v in out.values())
    for t0, t, v in zip(target0, agent.value_target.parameters(), agent.value.parameters()):
        torch.testing.assert_close(t, t0 + 0.1 * (v - t0))
    for p0, p in zip(b0, agent.behavior_guide.parameters() if b0 else []):
        torch.testing.assert_close(p, p0, rtol=0, atol=0)
    assert agent.guide_opt.param_groups[0]["lr"] < lr0  # cosine schedules stepped
    assert agent.execute_opt.param_groups[0]["lr"] < lr0


def test_action_is_pi_mean_at_the_guide_mean_clipped(por):
    cfg = por.TrainConfig(dataset_id="x", hidden_dim=16, execute_hidden_dim=16)
    agent = por.Agent(4, 2, cfg, por.Normalizer(4), torch.device("cpu"))
    with torch.no_grad():
        agent.guide.log_std.fill_(2.0)  # a sample of g would be far from its mean
        agent.execute.log_std.fill_(2.0)
    s = torch.randn(6, 4)
    want = agent.execute.mu(torch.cat([s, agent.guide.mu(s)], -1)).clamp(-1, 1)
    torch.testing.assert_close(agent.act(s), want)
    torch.testing.assert_close(agent.act(s), agent.act(s), rtol=0, atol=0)  # deterministic
    with torch.no_grad():
        agent.execute.mu[-1].bias.copy_(torch.tensor([5.0, -5.0]))
        agent.execute.mu[-1].weight.mul_(1e-3)
    assert agent.act(s)[:, 0].eq(1).all() and agent.act(s)[:, 1].eq(-1).all()


def test_reward_scale_uses_por_trajectory_split(por):
    """max_episode_steps 2: [1, 2] cut by length, [3] by the terminal, [4, 10] by length, [5] trailing."""
    n = 6
    data = dataset(por, np.zeros((n, 1)), np.full((n, 1), 1.5), [1, 2, 3, 4, 10, 5], np.zeros((n, 1)),
                   [0, 0, 1, 0, 0, 0])
    assert por.return_range(data, 2) == (3.0, 14.0)
    cfg = por.TrainConfig(dataset_id="x", max_episode_steps=2)
    assert por.preprocessing(cfg, data) == (False, 1000 / 11, 0.0)
    buffer = por.ReplayBuffer(data, por.Normalizer(1), *por.preprocessing(cfg, data)[1:], n, torch.device("cpu"))
    torch.testing.assert_close(buffer.rewards, torch.tensor([1.0, 2, 3, 4, 10, 5]) * 1000 / 11)
    assert buffer.actions.max().item() == 1.5  # not clipped (official POR)
    assert por.preprocessing(por.TrainConfig(dataset_id="x", normalize_reward=False), data) == (False, 1.0, 0.0)


# --------------------------------------------------------------------------------- training
def test_por_q_pretrains_b_as_a_first_phase_then_trains_with_b_frozen(por, tmp_path):
    kw = dict(guide="por_q", expectile=0.7, alpha=50.0, layer_norm=False, guide_pretrain_steps=200, max_timesteps=200)
    run = por.train(make_config(por, tmp_path, **kw))
    rows = read_metrics(run)
    assert [(r["step"], r["phase"]) for r in rows] == [(-100, "pretrain"), (0, "pretrain"), (100, "offline"),
                                                        (200, "offline")]
    assert all("return_mean" not in r and math.isfinite(r["behavior_guide_loss"]) for r in rows[:2])
    state = torch.load(run / "checkpoint.pt", weights_only=False)
    assert "behavior_guide" in state["agent"]
    plain = por.train(make_config(por, tmp_path, name="por_r", max_timesteps=100))
    assert "behavior_guide" not in torch.load(plain / "checkpoint.pt", weights_only=False)["agent"]
    assert [r["phase"] for r in read_metrics(plain)] == ["offline"]


def test_extending_a_run_recomputes_the_cosine_schedules(por, tmp_path, monkeypatch):
    """--resume --max_timesteps 400 on a 100-step run: at step 200 the policies' learning rate is
    the cosine of the new total (half of policy_lr), not a cosine restarted past its old end."""
    run = por.train(make_config(por, tmp_path, max_timesteps=100, policy_lr=1e-3))
    train_interrupted(por, monkeypatch, por.parse_config(["--resume", str(run), "--max_timesteps", "400"]), 200)
    state = torch.load(run / "checkpoint.pt", weights_only=False)["agent"]
    for opt in ("guide_opt", "execute_opt"):
        assert state[opt]["param_groups"][0]["lr"] == pytest.approx(1e-3 * 0.5 * (1 + math.cos(math.pi / 2)))


@pytest.mark.parametrize("kw, field", [
    (dict(guide="por_x"), "guide must be"),
    (dict(por_q_objective="paper"), "por_q_objective"),
    (dict(expectile=1.0), "expectile"),
    (dict(guide_pretrain_steps=-1), "guide_pretrain_steps"),
    (dict(online_steps=10), "POR is offline-only"),
])
def test_bad_config_fails_before_training(por, tmp_path, kw, field):
    with pytest.raises(por.InputError, match=field):
        por.train(make_config(por, tmp_path, **kw))
    assert not (tmp_path / "runs").exists()
