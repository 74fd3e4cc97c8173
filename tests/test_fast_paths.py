"""Each algorithm's fast paths compute what a plain reference computation computes (float tolerance):
the batched critic ensemble against each member run as ordinary Linear layers, TD3's Q_1-only actor
path against the full ensemble, the vector-env evaluation against episodes run one at a time, and
the torch.compile'd update against the eager one."""

import copy
import dataclasses

import gymnasium as gym
import numpy as np
import pytest
import torch
import torch._inductor.config
import torch.nn.functional as F

from conftest import load_algorithm

ALGOS = ["iac_cpe", "td3_bc", "iql", "awac", "spot", "por"]


def random_batch(n: int, generator=None):
    """A hopper-shaped batch (s, a, r, s', done) of n transitions."""
    g = generator
    return (torch.randn(n, 11, generator=g), torch.rand(n, 3, generator=g) * 2 - 1,
            torch.randn(n, generator=g), torch.randn(n, 11, generator=g), torch.zeros(n))


def plain_member(net, x, i):
    """Member i of a VectorizedLinear stack, layer by layer with F.linear: x (B, in) -> (B, out)."""
    for layer in net:
        if type(layer).__name__ == "VectorizedLinear":  # weight (n, in, out), bias (n, 1, out)
            x = F.linear(x, layer.weight[i].T, layer.bias[i, 0])
        elif type(layer).__name__ == "VectorizedLayerNorm":
            x = F.layer_norm(x, x.shape[-1:], layer.weight[i, 0], layer.bias[i, 0])
        else:
            x = layer(x)
    return x


@pytest.mark.parametrize("name", ALGOS)
def test_batched_ensemble_equals_each_member_run_alone(name):
    mod = load_algorithm(name)
    torch.manual_seed(0)
    cfg = mod.TrainConfig(dataset_id="x", hidden_dim=32, n_hidden=2)
    s, a = torch.randn(7, 11), torch.rand(7, 3) * 2 - 1
    if name == "por":
        cfg.layer_norm = True
        critic, x = mod.TwinV(11, cfg), s
    else:
        critic, x = mod.TwinQ(11, 3, cfg), torch.cat([s, a], -1)
    for p in critic.parameters():  # distinct members and non-trivial biases and norms
        torch.nn.init.normal_(p, std=0.3)
    out = critic(s) if name == "por" else critic(s, a)
    assert out.shape == (critic.n, 7)
    for i in range(critic.n):
        torch.testing.assert_close(out[i], plain_member(critic.net, x, i)[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", ["td3_bc", "spot"])
def test_q1_path_matches_the_ensemble_and_its_action_gradient(name):
    mod = load_algorithm(name)
    torch.manual_seed(0)
    critic = mod.TwinQ(11, 3, mod.TrainConfig(dataset_id="x", hidden_dim=32))
    s = torch.randn(9, 11)
    a1 = (torch.rand(9, 3) * 2 - 1).requires_grad_()
    a2 = a1.detach().clone().requires_grad_()
    q1 = critic.q1(s, a1)
    torch.testing.assert_close(q1, critic(s, a2)[0], rtol=1e-5, atol=1e-5)
    q1.sum().backward()
    critic(s, a2)[0].sum().backward()
    torch.testing.assert_close(a1.grad, a2.grad, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("name", ["td3_bc", "spot"])
def test_actor_step_adds_nothing_to_the_critic_gradients(name):
    """After a critic + actor iteration the critic's .grad is the critic loss's gradient alone."""
    mod = load_algorithm(name)
    torch.manual_seed(0)
    cfg = mod.TrainConfig(dataset_id="x", hidden_dim=32, policy_freq=1)
    agent = mod.Agent(11, 3, cfg, mod.Normalizer(11), torch.device("cpu"))
    critic_only = copy.deepcopy(agent)
    critic_only.cfg = dataclasses.replace(cfg, policy_freq=2)  # iteration 1: no actor step
    batch = random_batch(16)
    torch.manual_seed(1)
    assert "actor_loss" in agent.update(*batch, step=1)
    torch.manual_seed(1)
    assert "actor_loss" not in critic_only.update(*batch, step=1)
    for p, q in zip(agent.critic.parameters(), critic_only.critic.parameters()):
        assert p.requires_grad and torch.equal(p.grad, q.grad)


def sequential_returns(act, n, seed):
    """The plain reference: one env, episodes one after another, episode i reset with seed + i."""
    env, returns = gym.make("Hopper-v5"), np.zeros(n)
    for i in range(n):
        obs, _ = env.reset(seed=seed + i)
        done = False
        while not done:
            obs, r, term, trunc, _ = env.step(act(torch.as_tensor(obs, dtype=torch.float32)[None])[0])
            returns[i] += r
            done = term or trunc
    return returns


@pytest.mark.parametrize("name", ALGOS)
def test_vector_env_evaluation_equals_episodes_run_one_by_one(name):
    mod = load_algorithm(name)
    torch.manual_seed(0)
    cfg = mod.TrainConfig(dataset_id="x", hidden_dim=32)
    normalizer = mod.Normalizer(11, np.random.default_rng(0).normal(size=(100, 11)))  # not the identity
    agent = mod.Agent(11, 3, cfg, normalizer, torch.device("cpu"))
    env = gym.make_vec("Hopper-v5", num_envs=3, vectorization_mode="sync")
    returns, success = mod.evaluate(env, agent, 5, torch.device("cpu"))
    expected = sequential_returns(lambda obs: agent.act(obs).numpy(), 3, 5)
    np.testing.assert_allclose(returns, expected, rtol=1e-4)
    assert len(set(np.round(returns, 3))) == 3 and not success.any()  # three start states; no goal in Hopper


@pytest.mark.parametrize("name", ALGOS)
@torch._inductor.config.patch(fallback_random=True)  # compiled code draws eager's random numbers
def test_compiled_update_computes_the_eager_losses(name):
    """torch_compile: true runs torch.compile(agent.update); two iterations (a critic-only and, for
    the TD3 family, an actor iteration) give the eager losses and parameters to float tolerance."""
    mod = load_algorithm(name)
    torch.manual_seed(0)
    cfg = mod.TrainConfig(dataset_id="x", hidden_dim=16, n_hidden=2)
    if name == "por":
        cfg.execute_hidden_dim = 16
    eager = mod.Agent(11, 3, cfg, mod.Normalizer(11), torch.device("cpu"))
    fast = copy.deepcopy(eager)
    update = torch.compile(fast.update)
    g = torch.Generator().manual_seed(1)
    batches = [random_batch(8, g) for _ in range(2)]
    for i, batch in enumerate(batches, start=1):
        torch.manual_seed(i)
        want = eager.update(*batch, step=i)
        torch.manual_seed(i)
        got = update(*batch, step=i)
        assert want.keys() == got.keys()
        for k in want:
            torch.testing.assert_close(got[k], want[k], rtol=1e-4, atol=1e-5, msg=f"{name} {k} iteration {i}")
    for p, q in zip(eager.actor.parameters() if name != "por" else eager.execute.parameters(),
                    fast.actor.parameters() if name != "por" else fast.execute.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-4, atol=1e-5)
