"""IQL: expectile asymmetry, weight cap, reward scale, update orders, a short run, resume equality."""
import math

import numpy as np
import pytest
import torch

from conftest import train_interrupted, load_algorithm, make_config, read_metrics, without_timing


@pytest.fixture(scope="module")
def iql():
    return load_algorithm("iql")


def test_expectile_loss_is_asymmetric(iql):
    diff = torch.tensor([2.0, -2.0])
    assert iql.expectile_loss(diff[:1], 0.7).item() == pytest.approx(0.7 * 4)
    assert iql.expectile_loss(diff[1:], 0.7).item() == pytest.approx(0.3 * 4)
    assert iql.expectile_loss(diff, 0.5).item() == pytest.approx(0.5 * 4)


def test_actor_weights_are_capped(iql):
    bc = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    adv = torch.tensor([0.0, 0.5, 5.0])  # exp(3 * 5) is capped at 100
    loss = iql.awr_actor_loss(bc, adv, beta=3.0, weight_max=100.0)
    weights = [1.0, math.exp(1.5), 100.0]
    assert loss.item() == pytest.approx((weights[0] * 1 + weights[1] * 2 + weights[2] * 3) / 3)
    loss.backward()
    torch.testing.assert_close(bc.grad, torch.tensor(weights) / 3)


def test_reward_scale_uses_official_trajectory_split(iql):
    """Trajectories: [0,1] ends at a terminal, [2,3] ends where s' != next s, [4] is partial."""
    s = np.array([[0], [1], [5], [6], [9]], np.float32)
    s2 = np.array([[1], [2], [6], [7], [10]], np.float32)  # s2[1] = 2 but s[2] = 5: a cut; s2[3] != s[4]
    s2[1] = 99
    data = iql.Dataset(s, np.zeros((5, 1), np.float32), np.array([1, 2, 3, 4, 10], np.float32), s2,
                       np.array([0, 1, 0, 0, 0], np.float32), None, None, None, "t")
    assert iql.return_range(data) == (3.0, 10.0)
    buffer = iql.ReplayBuffer(data, False, torch.device("cpu"), normalize_reward=True)
    torch.testing.assert_close(buffer.rewards, torch.tensor([1.0, 2, 3, 4, 10]) * 1000 / 7)
    assert buffer.actions.abs().max() < 1


@pytest.mark.parametrize("order", ["official", "corl"])
def test_both_update_orders_and_actor_types_train(iql, order):
    cfg = iql.TrainConfig(dataset_id="x", hidden_dim=16, update_order=order,
                          actor_type="deterministic" if order == "corl" else "gaussian")
    agent = iql.IQL(4, 2, cfg, torch.device("cpu"))
    batch = (torch.randn(8, 4), torch.rand(8, 2) * 2 - 1, torch.randn(8), torch.randn(8, 4), torch.zeros(8))
    lr0 = agent.actor_opt.param_groups[0]["lr"]
    out = agent.update(*batch)
    assert all(torch.isfinite(v) for v in out.values())
    assert agent.actor_opt.param_groups[0]["lr"] < lr0  # cosine schedule stepped


def test_interrupted_run_resumes_identically(iql, tmp_path, monkeypatch):
    full = iql.train(make_config(iql, tmp_path, max_timesteps=300, name="full"))
    part = train_interrupted(iql, monkeypatch, make_config(iql, tmp_path, max_timesteps=300, name="part"), 200)
    iql.train(iql.parse_config(["--resume", str(part)]))
    assert [r["step"] for r in read_metrics(part)] == [100, 200, 300]
    assert without_timing(read_metrics(part)) == without_timing(read_metrics(full))
