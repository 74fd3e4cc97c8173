"""IQL: expectile asymmetry, weight cap, reward scale, update orders, the official orthogonal init of
every network, the cosine schedule when a run is extended."""
import math

import numpy as np
import pytest
import torch

from conftest import dataset, load_algorithm, make_config, train_interrupted


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
    s2 = np.array([[1], [99], [6], [7], [10]], np.float32)
    data = dataset(iql, s, np.full((5, 1), 0.9999999), [1, 2, 3, 4, 10], s2, [0, 1, 0, 0, 0])
    assert iql.return_range(data) == (3.0, 10.0)
    cfg = iql.TrainConfig(dataset_id="x")
    assert iql.preprocessing(cfg, data) == (False, pytest.approx(1000 / 7), 0.0)
    buffer = iql.ReplayBuffer(data, iql.Normalizer(1), *iql.preprocessing(cfg, data)[1:], 5, torch.device("cpu"))
    torch.testing.assert_close(buffer.rewards, torch.tensor([1.0, 2, 3, 4, 10]) * 1000 / 7)


@pytest.mark.parametrize("order", ["official", "corl"])
def test_both_update_orders_and_actor_types_train(iql, order):
    cfg = iql.TrainConfig(dataset_id="x", hidden_dim=16, update_order=order,
                          actor_type="deterministic" if order == "corl" else "gaussian")
    agent = iql.Agent(4, 2, cfg, iql.Normalizer(4), torch.device("cpu"))
    batch = (torch.randn(8, 4), torch.rand(8, 2) * 2 - 1, torch.randn(8), torch.randn(8, 4), torch.zeros(8))
    lr0 = agent.actor_opt.param_groups[0]["lr"]
    out = agent.update(*batch, step=1)
    assert all(torch.isfinite(v) for v in out.values())
    assert agent.actor_opt.param_groups[0]["lr"] < lr0  # cosine schedule stepped


def test_every_network_is_orthogonally_initialised_like_the_official_code(iql):
    """common.default_init: orthogonal kernels of gain sqrt 2 and zero biases in every Dense layer,
    the Q networks' included (each member of the batched ensemble on its own)."""
    torch.manual_seed(0)
    agent = iql.Agent(11, 3, iql.TrainConfig(dataset_id="x"), iql.Normalizer(11), torch.device("cpu"))
    kernels = [(m.weight, m.bias) for net in (agent.actor, agent.value) for m in net.modules()
               if isinstance(m, torch.nn.Linear)]
    kernels += [(m.weight[i].T, m.bias[i]) for m in agent.critic.modules() if isinstance(m, iql.VectorizedLinear)
                for i in range(2)]
    assert len(kernels) == 3 + 3 + 2 * 3
    for w, b in kernels:  # w (out, in): orthonormal rows or columns, scaled by sqrt 2
        small = w @ w.T if w.shape[0] <= w.shape[1] else w.T @ w
        torch.testing.assert_close(small, 2 * torch.eye(len(small)), atol=1e-4, rtol=0)
        assert not b.any()
    q = agent.critic.net[0]
    assert not torch.allclose(q.weight[0], q.weight[1])  # two independent critics
    default = iql.Agent(11, 3, iql.TrainConfig(dataset_id="x", orthogonal_init=False), iql.Normalizer(11),
                        torch.device("cpu"))
    assert default.critic.net[0].bias.any()  # CORL's PyTorch default init when switched off


def test_extending_a_run_recomputes_the_cosine_schedule(iql, tmp_path, monkeypatch):
    """The bug this guards: --resume --max_timesteps <larger> kept the old cosine, whose learning
    rate climbs back up past its end. Here at step 200 of a run extended from 100 to 400 updates the
    actor's learning rate is the new cosine's: half of actor_lr."""
    run = iql.train(make_config(iql, tmp_path, max_timesteps=100))
    train_interrupted(iql, monkeypatch, iql.parse_config(["--resume", str(run), "--max_timesteps", "400"]), 200)
    lr = torch.load(run / "checkpoint.pt", weights_only=False)["agent"]["actor_opt"]["param_groups"][0]["lr"]
    assert lr == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi * 200 / 400)))
