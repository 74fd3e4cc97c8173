"""TD3+BC: the lambda-normalised actor loss, the delayed actor and target updates, offline only."""
import pytest
import torch

from conftest import load_algorithm, make_config


@pytest.fixture(scope="module")
def td3_bc():
    return load_algorithm("td3_bc")


def test_actor_loss_normalises_q_by_its_mean_magnitude(td3_bc):
    q = torch.tensor([2.0, -4.0])  # mean|Q| = 3, mean Q = -1
    pi = torch.tensor([[0.5, 0.0], [0.0, 0.0]])
    a = torch.tensor([[0.0, 0.0], [0.0, 1.0]])  # mean squared error over B and dims = (0.25 + 1) / 4
    loss = td3_bc.td3_bc_actor_loss(q, pi, a, alpha=2.5)
    assert loss.item() == pytest.approx(-(2.5 / 3) * -1 + 1.25 / 4)
    # scaling Q leaves the Q term unchanged: that is what the normalisation is for
    assert td3_bc.td3_bc_actor_loss(100 * q, pi, a, 2.5).item() == pytest.approx(loss.item())
    q.requires_grad_(True)
    td3_bc.td3_bc_actor_loss(q, pi, a, 2.5).backward()  # the normaliser is detached
    torch.testing.assert_close(q.grad, torch.full((2,), -(2.5 / 3) / 2))


def test_actor_and_targets_move_only_every_policy_freq_steps(td3_bc):
    cfg = td3_bc.TrainConfig(dataset_id="x", hidden_dim=16)
    agent = td3_bc.Agent(4, 2, cfg, td3_bc.Normalizer(4), torch.device("cpu"))
    batch = (torch.randn(8, 4), torch.rand(8, 2) * 2 - 1, torch.randn(8), torch.randn(8, 4), torch.zeros(8))
    before = [p.clone() for p in (*agent.actor.parameters(), *agent.critic_target.parameters())]
    out = agent.update(*batch, step=1)
    assert "actor_loss" not in out
    after = (*agent.actor.parameters(), *agent.critic_target.parameters())
    assert all(torch.equal(p, q) for p, q in zip(before, after))
    out = agent.update(*batch, step=2)
    assert "actor_loss" in out
    assert not torch.equal(before[0], next(agent.actor.parameters()))


def test_online_fine_tuning_is_refused_with_the_alternatives(td3_bc, tmp_path):
    with pytest.raises(td3_bc.InputError, match="online_steps=100: TD3\\+BC is offline-only.*spot.py, iql.py"):
        td3_bc.train(make_config(td3_bc, tmp_path, online_steps=100))
