"""AWAC: the capped advantage weights, the advantage from one sampled action, exploration."""
import math

import pytest
import torch

from conftest import load_algorithm


@pytest.fixture(scope="module")
def awac():
    return load_algorithm("awac")


def test_actor_loss_weights_are_exp_advantage_capped(awac):
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([0.0, 1.0, 10.0])  # exp(3 * 10) is capped at 100
    loss = awac.awac_actor_loss(logp, adv, awac_lambda=1 / 3, weight_max=100.0)
    weights = [1.0, math.exp(3.0), 100.0]
    assert loss.item() == pytest.approx(-(weights[0] * -1 + weights[1] * -2 + weights[2] * -0.5) / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, -torch.tensor(weights) / 3)


def test_update_weights_dataset_actions_by_their_advantage_over_a_policy_sample(awac):
    torch.manual_seed(0)
    cfg = awac.TrainConfig(dataset_id="x", hidden_dim=16, n_hidden=2)
    agent = awac.Agent(4, 2, cfg, awac.Normalizer(4), torch.device("cpu"))
    batch = (torch.randn(8, 4), torch.rand(8, 2) * 2 - 1, torch.randn(8), torch.randn(8, 4), torch.zeros(8))
    out = agent.update(*batch, step=1)
    assert {"critic_loss", "actor_loss", "q_mean", "adv_mean"} == out.keys()
    obs = torch.randn(5, 4)
    explored = agent.explore(obs)
    assert explored.shape == (5, 2) and explored.abs().max() <= 1 and not torch.equal(explored, agent.act(obs))
