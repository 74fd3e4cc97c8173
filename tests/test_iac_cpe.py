"""IAC-CPE: the CPE loss on hand-computed inputs, the critic and BC terms, the batched critics, the
update moving what Algorithm 1 says. (Data, CLI, resume and bad input: tests/test_plumbing.py.)"""
import pytest
import torch


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
    agent = iac_cpe.Agent(4, 2, cfg, iac_cpe.Normalizer(4), torch.device("cpu"))
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


def test_one_update_moves_actor_critic_and_both_targets_by_tau(iac_cpe):
    torch.manual_seed(0)
    cfg = iac_cpe.TrainConfig(dataset_id="x", hidden_dim=16, n_hidden=2, tau=0.25)
    agent = iac_cpe.Agent(4, 2, cfg, iac_cpe.Normalizer(4), torch.device("cpu"))
    nets = ("actor", "actor_target", "critic", "critic_target")
    before = {k: [p.clone() for p in getattr(agent, k).parameters()] for k in nets}
    out = agent.update(torch.randn(8, 4), torch.rand(8, 2) * 2 - 1, torch.randn(8), torch.randn(8, 4),
                       torch.zeros(8), step=1)
    assert {"critic_loss", "actor_loss", "cpe_loss", "bc_loss", "q_mean"} == out.keys()
    for net, target in (("actor", "actor_target"), ("critic", "critic_target")):
        for p, t0, t in zip(getattr(agent, net).parameters(), before[target],
                                getattr(agent, target).parameters()):
            torch.testing.assert_close(t, t0 + 0.25 * (p - t0))  # eq. (15) with the updated online net
        assert any(not torch.equal(a, b) for a, b in zip(before[net], getattr(agent, net).parameters()))
