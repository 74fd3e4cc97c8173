"""SPOT: VAE loss and density estimates on hand-set weights, the actor loss, both phases of a short
run, reuse of a trained VAE, the kill switch, the official lambda in the configs, bad VAE input.
(Resume inside each phase, CLI and general bad input: tests/test_plumbing.py.)"""
import math

import pytest
import torch

from conftest import ROOT, SHIPPED, load_algorithm, make_config, read_metrics


@pytest.fixture(scope="module")
def spot():
    return load_algorithm("spot")


def config(spot, tmp_path, **kw):
    """A tiny run: 200 VAE steps (32 wide), then 200 actor-critic steps, records every 100."""
    return make_config(spot, tmp_path, **{"vae_hidden_dim": 32, "vae_steps": 200, "max_timesteps": 200, **kw})


def constant_vae(spot, mean, log_std, decoded, obs_dim=2):
    """A VAE whose encoder outputs (mean, exp(log_std)) and decoder tanh(decoded) for every input."""
    vae = spot.VAE(obs_dim, len(decoded), len(mean), hidden=4)
    with torch.no_grad():
        for p in vae.parameters():
            p.zero_()
        vae.mean.bias.copy_(torch.tensor(mean))
        vae.log_std.bias.copy_(torch.tensor(log_std))
        vae.d3.bias.copy_(torch.tensor(decoded))
    return vae


# ----------------------------------------------------------------------------------- losses
def test_vae_loss_matches_hand_computed_reconstruction_and_kl(spot):
    vae = constant_vae(spot, mean=[0.5, -1.0], log_std=[math.log(0.5), -10.0], decoded=[0.0, 1.0])
    s, a = torch.zeros(2, 2), torch.tensor([[0.5, 0.0], [-0.5, 0.5]])
    u = [0.0, math.tanh(1.0)]
    recon = [((u[0] - 0.5) ** 2 + (u[1] - 0.0) ** 2) / 2, ((u[0] + 0.5) ** 2 + (u[1] - 0.5) ** 2) / 2]
    sigma = [0.5, math.exp(-4)]  # log std -10 is clamped to -4
    kl = -0.5 * sum(1 + 2 * math.log(sd) - m ** 2 - sd ** 2 for m, sd in zip([0.5, -1.0], sigma)) / 2
    got_recon, got_kl = spot.vae_terms(vae, s, a, num_samples=3)
    torch.testing.assert_close(got_recon, torch.tensor(recon))
    torch.testing.assert_close(got_kl, torch.tensor([kl, kl]))
    torch.testing.assert_close(spot.neg_log_density(vae, s, a, beta=0.5),
                               torch.tensor(recon) + 0.5 * kl)
    agent = spot.Agent(2, 2, spot.TrainConfig(dataset_id="x", vae_hidden_dim=4, latent_dim=2, beta=0.5),
                       spot.Normalizer(2), torch.device("cpu"))
    agent.vae.load_state_dict(vae.state_dict())
    out = agent.pretrain_update(s, a, None, None, None)  # L_VAE = mean_B recon + beta * mean_B kl
    assert out["vae_loss"].item() == pytest.approx(sum(recon) / 2 + 0.5 * kl, rel=1e-6)


def test_importance_sampled_density_is_exact_when_the_encoder_is_the_prior(spot):
    """q(z|s,a) = p(z) and a decoder that ignores z: every importance weight is p(a|s), so the
    estimate is log N(a; D, beta/4) for any L, and equals the ELBO in nats."""
    beta = 0.5
    vae = constant_vae(spot, mean=[0.0, 0.0, 0.0, 0.0], log_std=[0.0] * 4, decoded=[0.3, -0.2])
    s, a = torch.zeros(2, 2), torch.tensor([[0.5, 0.0], [-0.5, 0.5]])
    u, var = torch.tanh(torch.tensor([0.3, -0.2])), beta / 4
    exact = (-(a - u) ** 2 / (2 * var) - 0.5 * math.log(2 * math.pi * var)).sum(-1)
    for L in (1, 7):
        torch.testing.assert_close(spot.iwae_log_density(vae, s, a, beta, L), exact)
    torch.testing.assert_close(spot.neg_log_density(vae, s, a, beta, 5, iwae=True), -exact)


def elbo_nats(spot, vae, s, a, beta, num_samples):
    """The ELBO in nats from the ELBO loss: with latent = 2|a|, decoder variance beta/4,
    -ELBO = (2|a|/beta) * (recon + beta * kl) + (|a|/2) log(pi beta / 2)."""
    act = a.shape[-1]
    loss = spot.neg_log_density(vae, s, a, beta, num_samples)
    return -(2 * act / beta) * loss - act / 2 * math.log(math.pi * beta / 2)


def test_importance_sampled_estimate_is_above_the_elbo_on_average(spot):
    torch.manual_seed(0)
    vae = spot.VAE(3, 2, 4, hidden=16)  # latent = 2|a|, as the conversion needs
    s, a = torch.randn(32, 3), torch.rand(32, 2) * 2 - 1
    beta = 0.5
    with torch.no_grad():
        elbo = elbo_nats(spot, vae, s, a, beta, num_samples=4000)
        # with L = 1 importance sampling is a one-sample ELBO: its mean is the same ELBO
        one = spot.iwae_log_density(vae, s.repeat(4000, 1), a.repeat(4000, 1), beta, 1).view(4000, 32)
        iwae = spot.iwae_log_density(vae, s, a, beta, 500)
    torch.testing.assert_close(one.mean(0), elbo, atol=0.15, rtol=0)
    assert iwae.mean() > elbo.mean() + 0.05
    assert (iwae > elbo).all()


def test_actor_loss_normalises_q_and_adds_the_density_term(spot):
    q = torch.tensor([2.0, -4.0], requires_grad=True)  # mean|Q| = 3, mean Q = -1
    n = torch.tensor([1.0, 3.0], requires_grad=True)  # mean 2
    loss = spot.spot_actor_loss(q, n, lambda_=0.1)
    assert loss.item() == pytest.approx(1 / 3 + 0.1 * 2)
    assert spot.spot_actor_loss(100 * q, n, 0.1).item() == pytest.approx(loss.item())  # scale-free Q term
    assert spot.spot_actor_loss(q, n, 0.1, q_norm=False).item() == pytest.approx(1 + 0.2)
    loss.backward()  # the normaliser is detached
    torch.testing.assert_close(q.grad, torch.full((2,), -1 / 3 / 2))
    torch.testing.assert_close(n.grad, torch.full((2,), 0.1 / 2))


def test_phase_two_update_trains_actor_through_a_frozen_vae(spot, tmp_path):
    torch.manual_seed(0)
    cfg = spot.TrainConfig(dataset_id="x", hidden_dim=16, vae_hidden_dim=16, lambda_=1.0)
    agent = spot.Agent(4, 2, cfg, spot.Normalizer(4), torch.device("cpu"))
    agent.end_pretraining(tmp_path)
    assert (tmp_path / "vae.pt").exists()
    s = torch.randn(8, 4)
    agent.actor.eval()
    n = spot.neg_log_density(agent.vae, s, agent.actor(s), cfg.beta)
    n.mean().backward()  # the density gradient reaches the actor ...
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in agent.actor.parameters())
    assert all(p.grad is None for p in agent.vae.parameters())  # ... and never the VAE
    agent.actor.train()
    assert not torch.equal(agent.actor(s), agent.actor(s))  # dropout on in training
    batch = (s, torch.rand(8, 2) * 2 - 1, torch.randn(8), torch.randn(8, 4), torch.zeros(8))
    vae_before = [p.clone() for p in agent.vae.parameters()]
    actor_before = [p.clone() for p in agent.actor.parameters()]
    assert "actor_loss" not in agent.update(*batch, step=1)
    assert all(torch.equal(p, q) for p, q in zip(actor_before, agent.actor.parameters()))
    out = agent.update(*batch, step=2)
    assert {"actor_loss", "neg_log_beta", "q_pi"} <= out.keys()
    assert not torch.equal(actor_before[0], next(agent.actor.parameters()))
    assert all(torch.equal(p, q) for p, q in zip(vae_before, agent.vae.parameters()))


# --------------------------------------------------------------------------------- training
@pytest.fixture(scope="module")
def full_run(spot, tmp_path_factory):
    return spot.train(config(spot, tmp_path_factory.mktemp("full"), name="full"))


def test_short_run_logs_both_phases_and_saves_the_vae(spot, full_run):
    rows = read_metrics(full_run)
    assert [(r["step"], r["phase"]) for r in rows] == [(-100, "pretrain"), (0, "pretrain"), (100, "offline"),
                                                        (200, "offline")]
    assert all(r.get("normalized_score") is None and math.isfinite(r["vae_loss"]) for r in rows[:2])
    for key in ("normalized_score", "return_mean", "critic_loss", "actor_loss", "neg_log_beta", "q_pi"):
        assert all(math.isfinite(r[key]) for r in rows[2:]), key
    state = torch.load(full_run / "checkpoint.pt", weights_only=False)
    assert state["progress"]["step"] == 200
    vae = torch.load(full_run / "vae.pt", weights_only=False)["vae"]
    for k, v in vae.items():  # phase 2 never changes the VAE
        torch.testing.assert_close(state["agent"]["vae"][k], v, rtol=0, atol=0)


def test_vae_path_skips_phase_one(spot, full_run, tmp_path):
    run = spot.train(config(spot, tmp_path, vae_path=str(full_run), vae_steps=0))
    assert [(r["step"], r["phase"]) for r in read_metrics(run)] == [(100, "offline"), (200, "offline")]
    assert not (run / "vae.pt").exists()
    vae = torch.load(full_run / "vae.pt", weights_only=False)["vae"]
    got = torch.load(run / "checkpoint.pt", weights_only=False)["agent"]["vae"]
    for k, v in vae.items():
        torch.testing.assert_close(got[k], v, rtol=0, atol=0)


def test_diverging_q_stops_the_run_and_keeps_the_last_checkpoint(spot, tmp_path):
    with pytest.raises(FloatingPointError, match="q_abort.*checkpoint .*step 0. is kept"):
        spot.train(config(spot, tmp_path, vae_steps=100, q_abort=-math.inf))  # any Q "diverges"
    run = tmp_path / "runs" / "t"
    assert torch.load(run / "checkpoint.pt", weights_only=False)["progress"]["step"] == 0  # the VAE is kept
    assert [r["step"] for r in read_metrics(run)] == [0]


# --------------------------------------------------------------------------- configs, input
def test_configs_carry_the_official_lambda(spot):
    official = {"halfcheetah": (0.05, 0.05, 1.0), "hopper": (0.1, 0.1, 0.2), "walker2d": (0.2, 0.2, 0.5)}
    for env, values in official.items():
        for level, value in zip(("medium", "medium-replay", "medium-expert"), values):
            cfg = spot.parse_config(["--config", str(ROOT / f"configs/spot/d4rl/{env}/{level}.yaml")])
            assert cfg.lambda_ == value, (env, level)


@pytest.mark.parametrize("kw, message", [
    (dict(vae_steps=0), "vae_steps must be positive"),
    (dict(vae_path="nowhere/vae.pt"), "vae_path nowhere/vae.pt does not exist"),
    (dict(vae_path="FULL", vae_hidden_dim=16), "does not fit this config"),
    (dict(vae_path="FULL", dataset_path=str(SHIPPED / "medium-v0")), "normalised differently"),
    (dict(beta=0.0), "beta must be > 0"),
])
def test_bad_vae_settings_fail_before_training(spot, full_run, tmp_path, kw, message):
    kw = {k: str(full_run) if v == "FULL" else v for k, v in kw.items()}
    with pytest.raises(spot.InputError, match=message):
        spot.train(config(spot, tmp_path, **kw))
    assert not (tmp_path / "runs").exists()
