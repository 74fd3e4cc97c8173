"""SPOT: Supported Policy Optimization, TD3 with a VAE behaviour-density regulariser, in one file.

Paper: Wu, Wu, Qiu, Wang, Long. "Supported Policy Optimization for Offline Reinforcement
Learning", NeurIPS 2022. Official code: github.com/thuml/SPOT (vae.py, train_vae.py, SPOT.py,
main.py, configs/offline/*.yml). Two phases, one run:
  phase 1, pre-training (train_vae.py, slides eq. 7): a conditional VAE, encoder q(z|s,a) =
         N(mu, sigma^2) (log sigma clamped to [-4, 15]), decoder D(s, z) in [-1, 1], prior N(0, I),
         L_VAE = mean_{B,dims} (D(s, z) - a)^2 + beta * mean_{B,latent} KL(N(mu, sigma^2) || N(0, I)),
         z = mu + sigma * eps. With decoder p(a|z,s) = N(D(s,z), beta/4) and latent = 2|a| this is
         beta / (2|a|) * (-ELBO) + const, so it is a scaled negative log-density bound.
  phase 2 (SPOT.py, slides eq. 9): TD3 exactly as TD3+BC (see td3_bc.py) with the BC term replaced
         by the density term. The VAE is frozen; gradients flow through it into pi(s):
         critic (every step): y = r + discount * (1 - done) * min_i Qbar_i(s', clip(pibar(s') + eps, -1, 1)),
                eps ~ N(0, policy_noise^2) clipped to +-noise_clip; L_Q = sum_i mean_B (Q_i(s,a) - y)^2
         actor (every policy_freq steps): with q = Q_1(s, pi(s)) and n(s) ~ -log pi_beta(pi(s)|s),
                L_pi = -mean_B q / mean_B |q| (detached) + lambda_ * mean_B n(s);
                then Polyak(tau) on the actor and critic targets.
         n(s) = L_VAE(s, pi(s)) per state (ELBO estimator, official default), or with ``iwae`` the
         importance-sampled estimate (slides eq. 8) n(s) = -log (1/L) sum_l p(a|z_l,s) p(z_l) /
         q(z_l|s,a), a = pi(s), z_l ~ q(.|s,a), L = num_samples, in nats.
Defaults follow the official code: VAE 2x750 ReLU, latent 2|a|, beta 0.5, Adam 1e-3, 1e5 steps,
batch 256 (train_vae.py); actor and critics 2x256 ReLU, actor dropout 0.1 after each hidden layer
(on in training, also in the target actor giving a'; off in evaluation), Adam 3e-4 for both,
batch 256, discount 0.99, tau 0.005, policy_noise 0.2, noise_clip 0.5, policy_freq 2, ELBO with
L = 1, Q normalisation on, lambda_ 1.0 (main.py) overridden per dataset by configs/spot with the
official configs/offline values (halfcheetah 0.05 / 0.05 / 1.0, hopper 0.1 / 0.1 / 0.2, walker2d
0.2 / 0.2 / 0.5 for medium / medium-replay / medium-expert); states normalised in both phases,
raw rewards; a run stops when the actor's mean Q exceeds q_abort = 1e4 (official kill switch).
Where the slides differ, their variant is a config field, off by default:
- iwae: true, num_samples: L > 1 = the importance-sampled estimator of slides eq. 8 (the slides'
  "practical implementation" uses L = 1 and the ELBO, as the code does). It is in nats, about
  2|a| / beta times the ELBO loss, so lambda_ must be retuned with it.
- q_norm: false = slides eq. 9 as written (-Q, no 1/mean|Q|; the official ``--without_Q_norm``).
- policy_freq: 1 = slides Algorithm 1 (actor and target update every iteration).
Our choices (no official value): lambda_ for random and expert data, which the official code never
ran (configs: random = the env's medium value, its weakest official one, since random data has the
broadest support; expert = the env's medium-expert value, its strongest, since expert data is the
narrowest); Minari simple = medium value; shipped local Hopper data = the hopper values by level.
Deviations: the official code trains the VAE in a separate script once per dataset and reuses
it for every seed; here phase 1 runs inside the run (1e5 steps, not train_vae.py's 1e5 + 1), and
``vae_path`` reuses a trained VAE (a run directory, its vae.pt, or an official train_vae.py .pt:
the layer names match) and skips phase 1. The official kill switch exits at once; here the check
runs at each evaluation on the largest mean Q since the previous one (no host sync per step).
Online fine-tuning (online_steps > 0; main_finetune.py, configs/online_finetune/antmaze-*.yml): after
the offline updates the agent acts in the env with pi(s) (dropout off) + N(0, expl_noise^2) noise,
every transition joins the same buffer, one update per env step; lambda_ cools linearly to
lambd_end * lambda_ over the online steps (lambd_cool, ``cooled_lambda``), the discount may change
(online_discount), the VAE stays frozen, and the optimisers carry on (official; CORL resets them and
uses 0.995 on every maze). Online rewards pass through the same preprocessing as the data (on a
maze the env's reward is 1 exactly at the terminal step, so this is main_finetune's rule).
Maze tasks (official configs/offline/antmaze-*.yml, main.py): per-dataset lambda_ (umaze 0.25,
umaze-diverse 0.25, medium-play 0.05, medium-diverse 0.025, large 0.025), actor_lr 1e-4, no actor
dropout, output layers initialised U(-0.001, 0.001) (actor) and U(-0.003, 0.003) (critic), no state
normalisation (normalize: null follows the task), rewards 1 -> antmaze_center_reward (0), 0 -> -1,
100 evaluation episodes every 50k updates.
Metrics: phase-1 records have phase "pretrain" and step <= 0 (step = VAE steps done - vae_steps:
the VAE losses every eval_freq VAE steps and at its end, no evaluation); the trained VAE is also
written to <run dir>/vae.pt when phase 1 ends.

Usage: python algorithms/spot.py --config configs/spot/local/hopper/medium.yaml [--field value ...]
       python algorithms/spot.py --config configs/spot/local/hopper/medium.yaml --vae_path runs/<run>
       python algorithms/spot.py --resume runs/<run name> [--max_timesteps N]
       python algorithms/spot.py --evaluate runs/<run name> [--n_episodes N] [--save_video true]
"""

import copy
import dataclasses
import hashlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import gymnasium as gym
import h5py
import numpy as np
import pyrallis
import torch
import torch.nn as nn
import wandb
import yaml
from tqdm import tqdm

ALGORITHM = "spot"


@dataclass
class TrainConfig:
    # SPOT actor loss (SPOT.py / main.py defaults, where it is "lambd"; configs/spot set it per dataset)
    lambda_: float = 1.0  # weight of the density term -log pi_beta(pi(s)|s)
    q_norm: bool = True  # divide the Q term by mean|Q| (false: slides eq. 9, official --without_Q_norm)
    iwae: bool = False  # density estimate: false = ELBO loss, true = importance sampling (slides eq. 8)
    num_samples: int = 1  # latent samples L per state in the density estimate
    q_abort: Optional[float] = 1e4  # stop when the actor's mean Q exceeds this; None = never
    # TD3 (official defaults)
    policy_noise: float = 0.2  # std of the target policy smoothing noise
    noise_clip: float = 0.5  # clip of that noise
    policy_freq: int = 2  # critic steps per actor step
    actor_dropout: float = 0.1  # dropout after each hidden actor layer, on in training; 0 = off
    hidden_dim: int = 256
    n_hidden: int = 2  # hidden layers in actor and critics
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    discount: float = 0.99
    tau: float = 0.005  # Polyak rate of the actor and critic targets
    normalize: Optional[bool] = None  # normalise states (both phases); None = official: locomotion yes, mazes no
    antmaze_center_reward: float = 0.0  # goal-reaching tasks: reward 1 -> this, 0 -> -1 (official main.py)
    actor_init_w: Optional[float] = None  # output layers' weights and biases ~ U(-w, w); None = PyTorch's
    critic_init_w: Optional[float] = None  # (official AntMaze configs: actor 0.001, critic 0.003)
    # behaviour VAE, phase 1 (train_vae.py defaults)
    vae_steps: int = 100_000  # VAE gradient steps; ignored with vae_path
    vae_path: Optional[str] = None  # trained VAE (run dir, its vae.pt, or official .pt): skip phase 1
    vae_hidden_dim: int = 750  # width of the 2 hidden layers of encoder and decoder
    latent_dim: Optional[int] = None  # None = 2 * action dim
    beta: float = 0.5  # KL weight; the decoder variance of the density model is beta / 4
    vae_lr: float = 1e-3
    # online fine-tuning (main_finetune.py defaults; runs only with online_steps > 0)
    expl_noise: float = 0.1  # exploration: pi(s) (dropout off) + N(0, expl_noise^2), clipped to [-1, 1]
    lambd_cool: bool = True  # online: lambda_ * max(lambd_end, 1 - t / online_steps), t = online updates
    lambd_end: float = 0.2
    online_discount: Optional[float] = None  # online discount; None = discount (official large mazes: 0.995)
    # ---- data, evaluation and run: the same fields in every algorithm file
    dataset_id: Optional[str] = None  # Minari id, e.g. mujoco/hopper/medium-v0
    dataset_path: Optional[str] = None  # Minari dataset folder or D4RL .hdf5 file
    download: bool = False  # let Minari download dataset_id when it is not local
    env: Optional[str] = None  # evaluation env id; default: the dataset's (D4RL files: see D4RL_ENVS)
    ref_min_score: Optional[float] = None  # override the dataset's random-policy return
    ref_max_score: Optional[float] = None  # override the dataset's expert return
    batch_size: int = 256
    max_timesteps: int = 1_000_000  # offline gradient steps (after any pre-training phase)
    online_steps: int = 0  # online fine-tuning: env steps after the offline ones, one update each
    buffer_size: Optional[int] = None  # replay capacity; None = dataset size + online_steps
    eval_freq: int = 5000  # evaluate, log and checkpoint every eval_freq updates
    n_episodes: Optional[int] = None  # evaluation episodes; None = 100 for goal-reaching tasks, else 10
    save_video: bool = False  # record one evaluation episode per evaluation as MP4 (run dir + wandb)
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    torch_compile: bool = False  # torch.compile the update (slower on a 2-core CPU, see README)
    torch_threads: Optional[int] = None  # torch CPU threads; None = torch's default
    output_dir: str = "runs"
    name: Optional[str] = None  # run name; default <algorithm>-<dataset>-seed<seed>-<time>
    resume: Optional[str] = None  # run directory to continue (its config.yaml is the base config)
    evaluate: Optional[str] = None  # run directory whose checkpoint to evaluate, without training
    progress_bar: bool = True
    wandb_mode: Optional[str] = None  # online | offline | disabled; None = $WANDB_MODE or offline
    wandb_project: str = "offline-rl"


def check_config(cfg: TrainConfig) -> None:
    """Raise InputError (defined with the plumbing below) for SPOT fields that cannot work."""
    for name in ("policy_freq", "hidden_dim", "n_hidden", "num_samples", "vae_hidden_dim"):
        if getattr(cfg, name) <= 0:
            raise InputError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    if cfg.vae_path is None and cfg.vae_steps <= 0:
        raise InputError(f"vae_steps must be positive (got {cfg.vae_steps}), or set vae_path to a trained VAE")
    if cfg.latent_dim is not None and cfg.latent_dim <= 0:
        raise InputError(f"latent_dim must be positive or null (= 2 * action dim), got {cfg.latent_dim}")
    if cfg.beta <= 0 or cfg.lambda_ < 0:
        raise InputError(f"beta must be > 0 and lambda_ >= 0; got beta={cfg.beta}, lambda_={cfg.lambda_}")
    if not 0 <= cfg.actor_dropout < 1:
        raise InputError(f"actor_dropout must be in [0, 1), got {cfg.actor_dropout}")
    if not 0 < cfg.tau <= 1 or not 0 <= cfg.discount <= 1:
        raise InputError(f"tau must be in (0, 1] and discount in [0, 1]; got {cfg.tau}, {cfg.discount}")
    if cfg.expl_noise < 0 or not 0 <= cfg.lambd_end <= 1 or not 0 <= (cfg.online_discount or 0) <= 1:
        raise InputError(f"expl_noise must be >= 0, lambd_end and online_discount in [0, 1]; got {cfg.expl_noise}, "
                         f"{cfg.lambd_end}, {cfg.online_discount}")


def cooled_lambda(cfg: TrainConfig, step: int) -> float:
    """The density weight at update ``step``: lambda_ offline; online, with ``lambd_cool``,
    lambda_ * max(lambd_end, 1 - t / online_steps) with t = step - max_timesteps the online updates
    done (SPOT.py train_online, whose 1e6 is its online budget; CORL finetune/spot.py alike)."""
    t = step - cfg.max_timesteps
    if t <= 0 or not cfg.lambd_cool:
        return cfg.lambda_
    return cfg.lambda_ * max(cfg.lambd_end, 1.0 - t / cfg.online_steps)


def preprocessing(cfg: TrainConfig, data: "Dataset") -> Tuple[bool, float, float]:
    """(normalise states?, reward scale, reward shift): every reward becomes scale * r + shift, offline
    and online. As the official main.py: locomotion data normalised, raw rewards; goal-reaching
    (AntMaze) data not normalised (antmaze_no_normalize) and its 0/1 rewards mapped 1 ->
    antmaze_center_reward, 0 -> -1, which is -1 + (1 + antmaze_center_reward) * r."""
    normalize = (not data.goal_reaching) if cfg.normalize is None else cfg.normalize
    return (normalize, 1.0 + cfg.antmaze_center_reward, -1.0) if data.goal_reaching else (normalize, 1.0, 0.0)


# ------------------------------------------------------------------------------------- networks
def mlp(in_dim: int, out_dim: int, hidden: int, n_hidden: int, dropout: float = 0.0) -> nn.Sequential:
    layers, d = [], in_dim
    for _ in range(n_hidden):
        layers += [nn.Linear(d, hidden), nn.ReLU()] + ([nn.Dropout(dropout)] if dropout else [])
        d = hidden
    return nn.Sequential(*layers, nn.Linear(d, out_dim))


class VAE(nn.Module):
    """Conditional VAE of the behaviour policy (official vae.py; its layer names, so its state dicts
    load). Encoder q(z|s,a) = N(mean, std^2) with log std clamped to [-4, 15]; decoder
    D(s, z) = tanh(MLP(s, z)) in [-1, 1]; both 2 hidden ReLU layers."""

    def __init__(self, obs_dim: int, act_dim: int, latent_dim: int, hidden: int):
        super().__init__()
        self.e1, self.e2 = nn.Linear(obs_dim + act_dim, hidden), nn.Linear(hidden, hidden)
        self.mean, self.log_std = nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)
        self.d1, self.d2 = nn.Linear(obs_dim + latent_dim, hidden), nn.Linear(hidden, hidden)
        self.d3 = nn.Linear(hidden, act_dim)

    def encode(self, s: torch.Tensor, a: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """s (..., obs), a (..., act) -> mean, std (..., latent)."""
        h = torch.relu(self.e2(torch.relu(self.e1(torch.cat([s, a], -1)))))
        return self.mean(h), self.log_std(h).clamp(-4, 15).exp()

    def decode(self, s: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """s (..., obs), z (..., latent) -> D(s, z) (..., act)."""
        return torch.tanh(self.d3(torch.relu(self.d2(torch.relu(self.d1(torch.cat([s, z], -1)))))))


class Actor(nn.Module):
    """Deterministic policy pi(s) = tanh(MLP(s)) with dropout after each hidden layer (active in
    train mode only): (..., obs) -> (..., act) in [-1, 1]. With ``actor_init_w`` the output layer's
    weights and biases start ~ U(-w, w) (official SPOT.py)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: TrainConfig):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, cfg.hidden_dim, cfg.n_hidden, cfg.actor_dropout)
        if cfg.actor_init_w is not None:
            for p in self.net[-1].parameters():
                nn.init.uniform_(p, -cfg.actor_init_w, cfg.actor_init_w)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.net(s))


class VectorizedLinear(nn.Module):
    """``n`` independent Linear layers applied as one batched matmul: (n, B, in) -> (n, B, out).
    Each member is initialised like ``nn.Linear``."""

    def __init__(self, in_dim: int, out_dim: int, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(n, in_dim, out_dim))
        self.bias = nn.Parameter(torch.empty(n, 1, out_dim))
        bound = 1 / math.sqrt(in_dim)
        for i in range(n):  # kaiming_uniform(a=sqrt(5)) on a (out, in) matrix = U(-bound, bound)
            nn.init.uniform_(self.weight[i], -bound, bound)
            nn.init.uniform_(self.bias[i], -bound, bound)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class TwinQ(nn.Module):
    """Twin critics Q_1, Q_2 (each (s, a) -> hidden x n_hidden -> 1, ReLU) as one ensemble. With
    ``critic_init_w`` the output layers' weights and biases start ~ U(-w, w) (official SPOT.py)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: TrainConfig, n: int = 2):
        super().__init__()
        dims = [obs_dim + act_dim] + [cfg.hidden_dim] * cfg.n_hidden
        layers = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [VectorizedLinear(d_in, d_out, n), nn.ReLU()]
        self.net = nn.Sequential(*layers, VectorizedLinear(dims[-1], 1, n))
        self.n = n
        if cfg.critic_init_w is not None:
            for p in self.net[-1].parameters():
                nn.init.uniform_(p, -cfg.critic_init_w, cfg.critic_init_w)

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """s (B, obs), a (..., B, act) -> Q values (n, ..., B)."""
        x = torch.cat([s.expand(*a.shape[:-1], s.shape[-1]), a], -1)
        return self.net(x.reshape(1, -1, x.shape[-1]).expand(self.n, -1, -1)).view(self.n, *a.shape[:-1])

    def q1(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Q_1 alone: s (B, obs), a (B, act) -> (B,), member 0's weights through the same layers,
        half the matmuls of ``forward`` (TD3's actor loss uses Q_1 only)."""
        x = torch.cat([s, a], -1)
        for layer in self.net:
            x = torch.addmm(layer.bias[0], x, layer.weight[0]) if isinstance(layer, VectorizedLinear) else layer(x)
        return x.squeeze(-1)


# ------------------------------------------------------------------------------------ the update
def vae_terms(vae: VAE, s: torch.Tensor, a: torch.Tensor, num_samples: int = 1) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per-state terms of L_VAE (official ``elbo_loss``). s (B, obs), a (B, act) ->
    recon (B,) = mean_{L,dims} (D(s, z_l) - a)^2 with z_l = mean + std * eps_l, eps_l ~ N(0, I);
    kl (B,) = mean_latent KL(N(mean, std^2) || N(0, I)) = -1/2 mean_latent (1 + log std^2 - mean^2 - std^2)."""
    mean, std = vae.encode(s, a)
    z = mean + std * torch.randn((num_samples, *std.shape), device=std.device, dtype=std.dtype)  # (L, B, latent)
    recon = ((vae.decode(s.expand(num_samples, *s.shape), z) - a) ** 2).mean((0, -1))
    kl = -0.5 * (1 + 2 * std.log() - mean ** 2 - std ** 2).mean(-1)
    return recon, kl


def iwae_log_density(vae: VAE, s: torch.Tensor, a: torch.Tensor, beta: float, num_samples: int) -> torch.Tensor:
    """Slides eq. (8), official ``importance_sampling_estimator``: log pi_beta(a|s) ~
    log (1/L) sum_l p(a|z_l,s) p(z_l) / q(z_l|s,a), z_l ~ q(.|s,a), p(a|z,s) = N(D(s,z), beta/4 I),
    p(z) = N(0, I). s (B, obs), a (B, act) -> (B,) in nats."""
    mean, std = vae.encode(s, a)
    z = mean + std * torch.randn((num_samples, *std.shape), device=std.device, dtype=std.dtype)  # (L, B, latent)
    log_q = torch.distributions.Normal(mean, std, validate_args=False).log_prob(z).sum(-1)  # (L, B)
    log_prior = -0.5 * (z ** 2 + math.log(2 * math.pi)).sum(-1)
    decoded = vae.decode(s.expand(num_samples, *s.shape), z)
    log_lik = torch.distributions.Normal(decoded, math.sqrt(beta / 4), validate_args=False).log_prob(a).sum(-1)
    return torch.logsumexp(log_lik + log_prior - log_q, 0) - math.log(num_samples)


def neg_log_density(vae: VAE, s: torch.Tensor, a: torch.Tensor, beta: float, num_samples: int = 1,
                    iwae: bool = False) -> torch.Tensor:
    """n(s, a) ~ -log pi_beta(a|s), (B,): L_VAE per state, recon + beta * kl (official default, a
    scaled negative ELBO), or with ``iwae`` the negative importance-sampled estimate (nats)."""
    if iwae:
        return -iwae_log_density(vae, s, a, beta, num_samples)
    recon, kl = vae_terms(vae, s, a, num_samples)
    return recon + beta * kl


def critic_loss(q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TD3 critic loss for both critics: sum_i mean_B (Q_i(s,a) - y)^2. q (n, B), y (B,) -> scalar."""
    return ((q - y) ** 2).mean(-1).sum()


def spot_actor_loss(q: torch.Tensor, neg_log_beta: torch.Tensor, lambda_: float, q_norm: bool = True) -> torch.Tensor:
    """Slides eq. (9) with TD3+BC's Q normalisation (SPOT.py): -mean_B q / mean_B |q| (detached)
    + lambda_ * mean_B n; without ``q_norm`` -mean_B q + lambda_ * mean_B n.
    q (B,) = Q_1(s, pi(s)), neg_log_beta (B,) = n(s, pi(s)) -> scalar."""
    q_term = -q.mean() / q.abs().mean().detach() if q_norm else -q.mean()
    return q_term + lambda_ * neg_log_beta.mean()


class Agent:
    """SPOT: the behaviour VAE (phase 1, ``pretrain_update``), actor, twin critics, their targets,
    the optimisers and one TD3 iteration with the density regulariser (phase 2, ``update``)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: TrainConfig, normalizer: "Normalizer",
                 device: torch.device):
        self.cfg, self.normalizer = cfg, normalizer.to(device)
        self.vae = VAE(obs_dim, act_dim, cfg.latent_dim or 2 * act_dim, cfg.vae_hidden_dim).to(device)
        self.vae_opt = torch.optim.Adam(self.vae.parameters(), lr=cfg.vae_lr, fused=True)
        self.actor = Actor(obs_dim, act_dim, cfg).to(device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)  # train mode: dropout on
        self.critic = TwinQ(obs_dim, act_dim, cfg).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, fused=True)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, fused=True)
        self.q_pi_max = torch.tensor(-math.inf, device=device)  # largest actor mean Q since stop_reason
        self.pretrain_steps = 0 if cfg.vae_path else cfg.vae_steps
        if cfg.vae_path:  # a resumed or evaluated run takes its VAE from the checkpoint
            if not (cfg.resume or cfg.evaluate):
                self.load_vae(Path(cfg.vae_path))
            self.vae.requires_grad_(False).eval()

    def pretrain_update(self, s, a, r, s_next, done) -> Dict[str, torch.Tensor]:
        """One phase-1 step on L_VAE = mean_B recon + beta * mean_B kl. Returns detached losses."""
        recon, kl = vae_terms(self.vae, s, a)
        loss = recon.mean() + self.cfg.beta * kl.mean()
        self.vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.vae_opt.step()
        return {"vae_loss": loss.detach(), "recon_loss": recon.detach().mean(), "kl_loss": kl.detach().mean()}

    def end_pretraining(self, run_dir: Path) -> None:
        """Phase 1 done: the VAE becomes a fixed density model (gradients pass through it, never
        into it) and is written to <run_dir>/vae.pt with the state normalisation it was trained under."""
        self.vae.requires_grad_(False).eval()
        tmp = run_dir / "vae.tmp"
        torch.save({"vae": self.vae.state_dict(), "obs_mean": self.normalizer.mean.cpu().numpy(),
                    "obs_std": self.normalizer.std.cpu().numpy()}, tmp)
        os.replace(tmp, run_dir / "vae.pt")

    def load_vae(self, path: Path) -> None:
        """Load ``vae_path``: a run directory (its vae.pt), a vae.pt, or an official train_vae.py state
        dict. Raises InputError when it is missing, shaped unlike this config, or was trained on states
        normalised differently (another dataset, or another ``normalize``)."""
        path = path.expanduser() / "vae.pt" if path.expanduser().is_dir() else path.expanduser()
        if not path.exists():
            raise InputError(f"vae_path {path} does not exist; give a run directory holding vae.pt, a "
                             "vae.pt, or an official train_vae.py model file, or set vae_path: null")
        state = torch.load(path, map_location="cpu", weights_only=False)
        if "obs_mean" in state and not (np.allclose(state["obs_mean"], self.normalizer.mean.cpu().numpy())
                                        and np.allclose(state["obs_std"], self.normalizer.std.cpu().numpy())):
            raise InputError(f"vae_path {path} was trained on states normalised differently (another "
                             "dataset or normalize setting); train it on this dataset or drop vae_path")
        try:
            self.vae.load_state_dict(state.get("vae", state))
        except RuntimeError as e:
            raise InputError(f"vae_path {path} does not fit this config (set vae_hidden_dim and latent_dim "
                             f"as when it was trained): {str(e).splitlines()[0]}") from None

    def update(self, s, a, r, s_next, done, step: int) -> Dict[str, torch.Tensor]:
        """Phase-2 iteration ``step`` (1-based) on a batch (shapes as ``ReplayBuffer.sample``): a
        critic step, and on every ``policy_freq``-th iteration an actor step and the target updates.
        Online (step > max_timesteps) with online_discount and the cooled lambda (``cooled_lambda``).
        Returns detached losses (no host sync); actor terms only on actor steps."""
        cfg = self.cfg
        online = step > cfg.max_timesteps
        discount = cfg.online_discount if online and cfg.online_discount is not None else cfg.discount
        with torch.no_grad():  # target policy smoothing
            noise = (torch.randn_like(a) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a_next = (self.actor_target(s_next) + noise).clamp(-1, 1)
            y = r + discount * (1 - done) * self.critic_target(s_next, a_next).min(0).values
        q = self.critic(s, a)
        loss_q = critic_loss(q, y)
        self.critic_opt.zero_grad(set_to_none=True)
        loss_q.backward()
        self.critic_opt.step()
        out = {"critic_loss": loss_q.detach(), "q_mean": q.detach().mean()}
        if step % cfg.policy_freq:
            return out

        pi = self.actor(s)
        self.critic.requires_grad_(False)  # the actor step needs dQ/da, not the critic's weight grads
        q_pi = self.critic.q1(s, pi)
        n = neg_log_density(self.vae, s, pi, cfg.beta, cfg.num_samples, cfg.iwae)
        loss_pi = spot_actor_loss(q_pi, n, cooled_lambda(cfg, step), cfg.q_norm)
        self.actor_opt.zero_grad(set_to_none=True)
        loss_pi.backward()
        self.critic.requires_grad_(True)
        self.actor_opt.step()
        with torch.no_grad():
            for net, target in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                torch._foreach_lerp_(list(target.parameters()), list(net.parameters()), cfg.tau)
            self.q_pi_max = torch.maximum(self.q_pi_max, q_pi.mean())
        return {**out, "actor_loss": loss_pi.detach(), "neg_log_beta": n.detach().mean(),
                "q_pi": q_pi.detach().mean()}

    def stop_reason(self) -> Optional[str]:
        """The official kill switch (main.py): the actor's mean Q above q_abort means the critic
        diverged. Reads and resets the largest mean Q since the previous call (one host sync)."""
        peak, self.q_pi_max = float(self.q_pi_max), torch.full_like(self.q_pi_max, -math.inf)
        if self.cfg.q_abort is not None and peak > self.cfg.q_abort:
            return (f"the actor's mean Q reached {peak:.4g} (> q_abort {self.cfg.q_abort:g}: the critic "
                    "diverged; a larger lambda_ may help)")
        return None

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """Evaluation policy: raw observations (n, obs) -> pi(s) with dropout off, in [-1, 1] (n, act)."""
        self.actor.eval()
        action = self.actor(self.normalizer(obs))
        self.actor.train()
        return action

    @torch.no_grad()
    def explore(self, obs: torch.Tensor) -> torch.Tensor:
        """Online exploration (main_finetune.py): pi(s) with dropout off + N(0, expl_noise^2), clipped."""
        action = self.act(obs)
        return (action + self.cfg.expl_noise * torch.randn_like(action)).clamp(-1, 1)

    def state_dict(self) -> dict:
        return {k: getattr(self, k).state_dict() for k in ("normalizer", "vae", "vae_opt", "actor", "actor_target",
                                                          "critic", "critic_target", "actor_opt", "critic_opt")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            getattr(self, k).load_state_dict(v)


# ==============================================================================================
# SHARED PLUMBING: data, replay buffer, evaluation, checkpoints, the run loop and the CLI.
# Everything below this banner is the same, line for line, in every file of algorithms/
# (tests/test_plumbing.py fails when a copy drifts; `python tools/plumbing.py --write` copies
# this file's block into the others). The algorithm above plugs in through ALGORITHM,
# TrainConfig, check_config(cfg), preprocessing(cfg, data) and Agent, which has
#   update(s, a, r, s_next, done, step) -> losses  act(obs) -> action  state_dict/load_state_dict
# and where the algorithm has them: pretrain_steps, pretrain_update(s, a, r, s_next, done) and
# end_pretraining(run_dir) (a phase before the offline updates: SPOT's VAE, POR's behaviour
# guide), explore(obs) -> action (online fine-tuning), stop_reason() -> message (an extra stop).
# ==============================================================================================
class InputError(ValueError):
    """Bad config or data, reported before any training starts."""


def validate(cfg: TrainConfig) -> None:
    """Raise InputError naming the field and the fix for values that cannot work."""
    if cfg.evaluate is None and (cfg.dataset_id is None) == (cfg.dataset_path is None):
        raise InputError("give exactly one of dataset_id (a Minari id) and dataset_path (a Minari "
                         f"folder or D4RL .hdf5); got dataset_id={cfg.dataset_id!r}, "
                         f"dataset_path={cfg.dataset_path!r}")
    for name in ("batch_size", "max_timesteps", "eval_freq"):
        if getattr(cfg, name) <= 0:
            raise InputError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    if cfg.online_steps < 0 or (cfg.n_episodes is not None and cfg.n_episodes <= 0):
        raise InputError(f"online_steps must be >= 0 and n_episodes positive or null; got "
                         f"{cfg.online_steps}, {cfg.n_episodes}")
    if cfg.wandb_mode not in (None, "online", "offline", "disabled"):
        raise InputError(f"wandb_mode must be online, offline or disabled, got {cfg.wandb_mode!r}")
    if cfg.device != "auto" and not cfg.device.startswith(("cpu", "cuda")):
        raise InputError(f"device must be auto, cpu or cuda[:i], got {cfg.device!r}")
    check_config(cfg)


# ----------------------------------------------------------------------------------------- data
# D4RL locomotion files by robot: the Gymnasium env that replays them and D4RL's reference
# returns (d4rl/infos.py; the same for every level and dataset version).
D4RL_ENVS = {"halfcheetah": ("HalfCheetah-v4", -280.178953, 12135.0),
             "hopper": ("Hopper-v4", -20.272305, 3234.3),
             "walker2d": ("Walker2d-v4", 1.629008, 4592.3)}
# D4RL AntMaze files by maze: the Gymnasium-Robotics env that replays them and D4RL's evaluation
# map (d4rl/locomotion/maze_env.py U_MAZE_TEST, BIG_MAZE_TEST, HARDEST_MAZE_TEST; 1 wall, 0 free,
# r start, g the goal); references 0 and 1 (success); episodes of 700 / 1000 steps, as registered.
D4RL_MAZES = {"umaze": ("AntMaze_UMaze-v4", ["11111", "1r001", "11101", "1g001", "11111"]),
              "medium": ("AntMaze_Medium-v4", ["11111111", "1r011001", "10010001", "11000111", "10010001",
                                               "10100101", "100010g1", "11111111"]),
              "large": ("AntMaze_Large-v4", ["111111111111", "1r0001000001", "101101010101", "100000010001",
                                             "101111011101", "100101000001", "110101010111", "100100010g01",
                                             "111111111111"])}


@dataclass
class Dataset:
    """Flat transitions (float32 numpy, N rows) and what evaluation needs."""
    states: np.ndarray  # (N, obs_dim); Dict observations flattened by flatten_observations
    actions: np.ndarray  # (N, act_dim)
    rewards: np.ndarray  # (N,)
    next_states: np.ndarray  # (N, obs_dim)
    dones: np.ndarray  # (N,) 1.0 only for true terminations
    episode_returns: np.ndarray  # (E,) undiscounted return of each episode of the data
    env_spec: Optional[gym.envs.registration.EnvSpec]  # the evaluation env
    ref_min: Optional[float]
    ref_max: Optional[float]
    name: str
    files: List[Path]  # the files read (their checksums go into run_info.json)
    goal_reaching: bool = False  # a maze task (Dict observations with a desired_goal, or D4RL AntMaze): success
    d4rl_maze: Optional[str] = None  # a D4RL AntMaze file's maze (umaze | medium | large): see D4RLAntMaze
    walls: Optional[list] = None  # a maze dataset's walls (rows of 0/1) where the data was collected


def flatten_observations(obs, space: gym.Space) -> np.ndarray:
    """Observations (T, ...) -> float32 (T, d). A Dict observation (Minari's maze datasets) is the
    concatenation of its keys in the order of the Dict space (alphabetical for Gymnasium's maze
    envs: achieved_goal, desired_goal, observation), which is what gymnasium's FlattenObservation
    gives the evaluation env. Raises InputError for other non-Box spaces."""
    if isinstance(space, gym.spaces.Dict):
        return np.concatenate([flatten_observations(obs[k], s) for k, s in space.spaces.items()], -1)
    if not isinstance(space, gym.spaces.Box):
        raise InputError(f"observation space {space} is not supported (Box or Dict of Box only)")
    return np.asarray(obs, dtype=np.float32).reshape(len(obs), -1)


def minari_transitions(episodes, space: gym.Space) -> Tuple[np.ndarray, ...]:
    """Episodes with observations (T+1, obs) and actions/rewards/terminations (T, .) -> transitions
    s = obs[:-1], s' = obs[1:], done = termination (a truncation never stops bootstrapping), and
    each episode's return."""
    cols, returns = [[], [], [], [], []], []
    for ep in episodes:
        obs = flatten_observations(ep.observations, space)
        for col, x in zip(cols, (obs[:-1], ep.actions, ep.rewards, obs[1:], ep.terminations)):
            col.append(np.asarray(x, dtype=np.float32))
        returns.append(float(np.sum(ep.rewards)))
    return (*(np.concatenate(c) for c in cols), np.array(returns))


def read_hdf5(path: Path, keys) -> Dict[str, np.ndarray]:
    """The named arrays of an HDF5 file. Raises InputError when it cannot be read or lacks a key."""
    try:
        with h5py.File(path, "r") as f:
            missing = sorted(set(keys) - set(f.keys()))
            if missing:
                raise InputError(f"dataset_path {path} lacks D4RL keys {missing} (a -v2 file has them)")
            return {k: f[k][()] for k in keys}
    except OSError as e:
        raise InputError(f"dataset_path {path} is not a readable HDF5 file ({e}); download it again "
                         "(python tools/fetch_d4rl.py) or point dataset_path at another file") from None


def d4rl_transitions(path: Path) -> Tuple[np.ndarray, ...]:
    """A D4RL -v2 HDF5 file -> transitions as ``d4rl.qlearning_dataset`` makes them, the rule the
    official IQL, SPOT, POR and CORL code all train on: pairs (obs[i], obs[i+1]) for i < N-1, dropping
    every i with ``timeouts[i]`` (the episode's last step), done = ``terminals[i]``. qlearning_dataset
    has no AntMaze case: there ``terminals[i]`` marks obs[i+1] within 0.5 of the goal (the data's
    trajectories run on through it), so reaching the goal ends bootstrapping. Also the returns of the
    episodes (cut after terminals and timeouts, the trailing unfinished one dropped)."""
    d = read_hdf5(path, ("observations", "actions", "rewards", "terminals", "timeouts"))
    obs, act, rew, term, timeout = (d[k] for k in ("observations", "actions", "rewards", "terminals", "timeouts"))
    keep = ~timeout[:-1].astype(bool)
    ends = np.flatnonzero(term.astype(bool) | timeout.astype(bool))
    returns = np.array([seg.sum() for seg in np.split(rew, ends + 1)[:len(ends)]])
    return (*(x.astype(np.float32) for x in
              (obs[:-1][keep], act[:-1][keep], rew[:-1][keep], obs[1:][keep], term[:-1][keep])), returns)


def hub_reachable(timeout: float = 5.0) -> bool:
    """Whether Minari's remote (the Hugging Face hub, $HF_ENDPOINT) answers within ``timeout`` s."""
    import urllib.request
    try:
        urllib.request.urlopen(os.environ.get("HF_ENDPOINT", "https://huggingface.co"), timeout=timeout)
        return True
    except Exception as e:  # an HTTP error status still means the hub is there
        return hasattr(e, "code")


def load_minari(cfg: TrainConfig):
    """Open a Minari dataset from ``dataset_id`` (local, or downloaded when ``download``) or from a
    dataset folder in ``dataset_path``. Raises InputError saying how to get missing data."""
    import minari
    if cfg.dataset_path is not None:
        folder = Path(cfg.dataset_path).expanduser()
        folder = folder / "data" if (folder / "data").is_dir() else folder
        if not (folder / "metadata.json").exists():
            raise InputError(f"dataset_path {cfg.dataset_path} is neither a Minari dataset folder "
                             "(<id>/data/metadata.json) nor a D4RL .hdf5 file")
        return minari.MinariDataset(folder)
    root = os.environ.get("MINARI_DATASETS_PATH", "~/.minari/datasets")
    offline = (f"run `minari download {cfg.dataset_id}` on a machine with network (needs `pip install "
               f"'minari[hf]'`) and copy the folder to {root}/{cfg.dataset_id}")
    try:
        return minari.load_dataset(cfg.dataset_id, download=False)
    except FileNotFoundError:
        if not cfg.download:
            raise InputError(f"dataset_id {cfg.dataset_id!r} is not under {root}. Set download: true on a "
                             f"machine with network, or {offline}; or point dataset_path at a dataset "
                             "folder (tools/make_dataset.py makes them).") from None
    if not hub_reachable():
        raise InputError(f"download of dataset_id {cfg.dataset_id!r} failed: no network (the Hugging Face "
                         f"hub did not answer). Without network, {offline}.")
    try:
        return minari.load_dataset(cfg.dataset_id, download=True)
    except Exception as e:  # no huggingface_hub, an unknown id, the connection dropping
        raise InputError(f"download of dataset_id {cfg.dataset_id!r} failed ({type(e).__name__}: {e}). "
                         f"Check the id (`minari list remote`), or {offline}.") from None


def load_dataset(cfg: TrainConfig) -> Dataset:
    """Read transitions, the evaluation env and the reference returns named by ``cfg``."""
    path = Path(cfg.dataset_path).expanduser() if cfg.dataset_path is not None else None
    if path is not None and not path.exists():
        raise InputError(f"dataset_path {path} does not exist. Shipped Minari data lives in "
                         "datasets/local/<env>/<level>-v0; D4RL -v2 files are <name>.hdf5 from "
                         "python tools/fetch_d4rl.py (default folder ~/.d4rl/datasets).")
    if path is not None and path.suffix in (".hdf5", ".h5"):
        robot, maze = (path.name.split("-") + [""])[:2]
        if robot == "antmaze" and maze in D4RL_MAZES:
            spec = d4rl_maze_spec(maze)
            return Dataset(*d4rl_transitions(path), spec, 0.0, 1.0, path.stem, [path], True, maze, walls(spec))
        env_id, ref_min, ref_max = D4RL_ENVS.get(robot.lower(), (None, None, None))
        if cfg.env is None and env_id is None:
            raise InputError(f"cannot tell the robot from the file name {path.name} (expected {'|'.join(D4RL_ENVS)}"
                             f"-<level>-v2.hdf5 or antmaze-<{'|'.join(D4RL_MAZES)}>-<variant>-v2.hdf5); set env, "
                             "ref_min_score, ref_max_score")
        spec = gym.spec(env_id) if env_id else None
        return Dataset(*d4rl_transitions(path), spec, ref_min, ref_max, path.stem, [path])
    ds = load_minari(cfg)
    meta = ds.storage.metadata
    name = meta.get("dataset_id", str(path)).replace("/", "-")
    files = sorted(Path(ds.storage.data_path).glob("*"))
    space = ds.observation_space
    goal = isinstance(space, gym.spaces.Dict) and "desired_goal" in space.spaces
    spec, data_spec = (gym.envs.registration.EnvSpec.from_json(meta[k]) if meta.get(k) else None
                       for k in ("eval_env_spec", "env_spec"))  # the evaluation env when the data names one
    return Dataset(*minari_transitions(ds.iterate_episodes(), space), spec or data_spec, meta.get("ref_min_score"),
                   meta.get("ref_max_score"), name, files, goal, walls=walls(data_spec) if goal and data_spec else None)


class Normalizer(nn.Module):
    """s -> (s - mean) / std with the offline data's statistics (std + 1e-3), or the identity.
    Part of the agent (and its checkpoint): a deployed policy needs it, the replay buffer does not."""

    def __init__(self, obs_dim: int, states: Optional[np.ndarray] = None):
        super().__init__()
        mean, std = (states.mean(0), states.std(0) + 1e-3) if states is not None else (0.0, 1.0)
        self.register_buffer("mean", torch.zeros(obs_dim) + torch.as_tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.zeros(obs_dim) + torch.as_tensor(std, dtype=torch.float32))

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        return (s - self.mean) / self.std


class ReplayBuffer:
    """Transitions as tensors on the training device: the offline dataset, then the online steps
    (``add``). States are stored normalised and rewards as scale * r + shift (``preprocessing``),
    both once on the way in; ``sample`` draws a uniform batch over everything stored."""

    def __init__(self, data: Dataset, normalizer: Normalizer, reward_scale: float, reward_shift: float,
                 capacity: int, device: torch.device):
        self.normalizer, self.scale, self.shift, self.device = normalizer, reward_scale, reward_shift, device
        self.n_offline = self.size = len(data.rewards)
        empty = lambda *shape: torch.zeros((capacity, *shape), device=device)  # noqa: E731
        self.states, self.next_states = empty(data.states.shape[1]), empty(data.states.shape[1])
        self.actions, self.rewards, self.dones = empty(data.actions.shape[1]), empty(), empty()
        self._write(slice(0, self.size), data.states, data.actions, data.rewards, data.next_states, data.dones)

    @torch.no_grad()
    def _write(self, rows: slice, s, a, r, s_next, done) -> None:
        to = lambda x: torch.as_tensor(np.asarray(x, np.float32), device=self.device)  # noqa: E731
        self.states[rows], self.next_states[rows] = self.normalizer(to(s)), self.normalizer(to(s_next))
        self.actions[rows], self.rewards[rows], self.dones[rows] = to(a), to(r) * self.scale + self.shift, to(done)

    def add(self, s, a, r, s_next, done) -> None:
        """Append transitions (numpy, raw env values; leading dim n) after the stored ones."""
        n = len(r)
        self._write(slice(self.size, self.size + n), s, a, r, s_next, done)
        self.size += n

    def sample(self, batch_size: int) -> Tuple[torch.Tensor, ...]:
        """Returns (s (B, obs), a (B, act), r (B,), s' (B, obs), done (B,))."""
        idx = torch.randint(self.size, (batch_size,), device=self.device)
        return (self.states[idx], self.actions[idx], self.rewards[idx], self.next_states[idx],
                self.dones[idx])


# ----------------------------------------------------------------------------------- evaluation
def env_spec(env_id: str) -> gym.envs.registration.EnvSpec:
    """The registered spec of ``env_id``; Gymnasium-Robotics (the maze envs) registers on import."""
    if env_id not in gym.registry:
        import gymnasium_robotics  # noqa: F401
    return gym.spec(env_id)


def walls(spec: gym.envs.registration.EnvSpec) -> Optional[list]:
    """The walls of a maze env's map (rows of 0/1; start and goal cells are free), or None."""
    maze_map = spec.kwargs.get("maze_map") or env_spec(spec.id).kwargs.get("maze_map")
    return [[int(cell == 1) for cell in row] for row in maze_map] if maze_map else None


def d4rl_maze_spec(maze: str) -> gym.envs.registration.EnvSpec:
    """The Gymnasium-Robotics AntMaze-v4 env of a D4RL AntMaze file: D4RL's evaluation map with its
    rows reversed (Gymnasium-Robotics puts row 0 at the top, D4RL at the bottom, so the same walls
    need the reversed list), the one start cell and goal cell, and the episode ending at the goal
    (D4RL's eval=True): continuing_task false, reset_target false."""
    env_id, rows = D4RL_MAZES[maze]
    maze_map = [[int(c) if c.isdigit() else c for c in row] for row in reversed(rows)]
    spec = env_spec(env_id)
    return dataclasses.replace(spec, kwargs={**spec.kwargs, "maze_map": maze_map, "continuing_task": False,
                                             "reset_target": False})


class D4RLAntMaze(gym.ObservationWrapper):
    """A Gymnasium-Robotics AntMaze-v4 env as D4RL's antmaze-*-v2 saw the world.
    Observation (29,): D4RL's [x, y, qpos[2:15], qvel[:14]] (d4rl/locomotion/ant.py, expose_all_qpos),
    i.e. the env's achieved_goal moved to D4RL's frame (start cell at the origin: a translation, as
    ``d4rl_maze_spec`` mirrors the rows) followed by its 27-wide ``observation``. Dynamics as D4RL's
    ant.xml: torque 30 per unit action (Gymnasium's ant: gear 150), timestep 0.02 s (0.01), contact
    solimp (0.8, 0.8, 0.01) on every geom. Still unlike D4RL's mujoco-py env: MuJoCo 4 instead of
    2.x; success within 0.45 of the goal (D4RL 0.5); the goal noised by U(-1, 1) per axis around the
    goal cell's centre (D4RL: U(0, 1.5) from it); start noise U(-1, 1) on x, y and none on the joints
    (D4RL: U(-0.1, 0.1) on every qpos, 0.1 N(0, 1) on qvel). Scores on it are near, not equal, to
    the papers' antmaze numbers."""

    def __init__(self, env: gym.Env, maze: str):
        super().__init__(env)
        maze_env = env.unwrapped
        rows = D4RL_MAZES[maze][1]
        i, j = next((i, row.index("r")) for i, row in enumerate(rows) if "r" in row)
        s = maze_env.maze.maze_size_scaling  # D4RL: x = (col - j) s, y = (row - i) s from the start cell
        self.offset = np.array([(j + 0.5) * s - maze_env.maze.x_map_center, (i + 0.5) * s - maze_env.maze.y_map_center])
        model = maze_env.ant_env.model
        model.opt.timestep, model.actuator_gear[:, 0] = 0.02, 30.0
        model.geom_solimp[:] = (0.8, 0.8, 0.01, 0.5, 2.0)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, (29,), np.float64)

    def observation(self, obs: dict) -> np.ndarray:
        return np.concatenate([obs["achieved_goal"] - self.offset, obs["observation"]])


def make_env(task: dict, n: Optional[int] = None, **kwargs) -> gym.Env:
    """The evaluation env of ``task`` (a vector env of ``n`` sub-envs stepped together when ``n``),
    observing as the data does: Dict observations flattened as ``flatten_observations`` flattens
    them, D4RL AntMaze files' envs through ``D4RLAntMaze``."""
    spec = gym.envs.registration.EnvSpec.from_json(task["env_spec"])
    if task.get("d4rl_maze"):
        wrap = [lambda env: D4RLAntMaze(env, task["d4rl_maze"])]
    else:
        dict_obs = isinstance(gym.make(spec).observation_space, gym.spaces.Dict)
        wrap = [gym.wrappers.FlattenObservation] if dict_obs else []
    if n is None:
        env = gym.make(spec, **kwargs)
        return wrap[0](env) if wrap else env
    return gym.make_vec(spec, num_envs=n, vectorization_mode="sync", wrappers=wrap, **kwargs)


def check_maze(task: dict, data: Dataset, envs: gym.vector.VectorEnv) -> None:
    """Refuse a maze dataset whose states do not lie in the evaluation env's corridors (the data's
    x, y: the first two state entries, D4RL's or achieved_goal): the env's walls, or its coordinates,
    are not the data's. More than 1% of states inside walls or off the map raises InputError."""
    maze_env, offset = envs.envs[0].unwrapped, getattr(envs.envs[0], "offset", np.zeros(2))
    maze = maze_env.maze
    xy = data.states[:, :2] + offset
    row = np.floor((maze.y_map_center - xy[:, 1]) / maze.maze_size_scaling).astype(int)
    col = np.floor((xy[:, 0] + maze.x_map_center) / maze.maze_size_scaling).astype(int)
    walls = np.array([[cell == 1 for cell in r] for r in maze.maze_map])
    inside = (row >= 0) & (row < walls.shape[0]) & (col >= 0) & (col < walls.shape[1])
    bad = ~inside
    bad[inside] = walls[row[inside], col[inside]]
    if bad.mean() > 0.01:
        raise InputError(f"{bad.mean():.0%} of the states of {data.name} lie inside walls or outside the maze of "
                         f"the evaluation env {maze_env.spec.id if maze_env.spec else ''}: the data and the env "
                         "disagree on the maze or its coordinates (a D4RL file must be named antmaze-<umaze|medium|"
                         "large>-<variant>-v2.hdf5; a dataset whose stored evaluation env is another maze needs env: "
                         "set to an env with the data's walls)")


@torch.no_grad()
def evaluate(envs: gym.vector.VectorEnv, agent, seed: int, device: torch.device) -> Tuple[np.ndarray, np.ndarray]:
    """One episode of ``agent.act`` per sub-env of ``envs``, all stepped together (one batched
    forward per step); sub-env i resets with seed ``seed + i``, so every evaluation sees the same
    start states. Returns the undiscounted returns (n,) and whether each episode reached its goal
    (n,) (the env's ``info["success"]`` at any step; all False for envs without one)."""
    returns, success = np.zeros(envs.num_envs), np.zeros(envs.num_envs, dtype=bool)
    running = np.ones(envs.num_envs, dtype=bool)
    obs, _ = envs.reset(seed=seed)
    while running.any():
        action = agent.act(torch.as_tensor(obs, dtype=torch.float32, device=device)).cpu().numpy()
        obs, reward, terminated, truncated, info = envs.step(action)
        returns += reward * running
        success |= np.asarray(info.get("success", False), dtype=bool) & running
        running &= ~(terminated | truncated)  # a finished sub-env auto-resets; its later steps don't count
    return returns, success


def scores(returns: np.ndarray, success: np.ndarray, task: dict) -> Optional[np.ndarray]:
    """Per-episode score: success x 100 for goal-reaching tasks, else the D4RL normalised score
    100 * (R - ref_min) / (ref_max - ref_min) (0 = random, 100 = expert); None without references."""
    if task["goal_reaching"]:
        return 100.0 * success
    if task["ref_min"] is None or task["ref_max"] is None:
        return None
    return 100 * (np.asarray(returns) - task["ref_min"]) / (task["ref_max"] - task["ref_min"])


def evaluation(envs: gym.vector.VectorEnv, agent, seed: int, task: dict, device: torch.device) -> Tuple[dict, str]:
    """``evaluate`` as a metrics record (returns, success rate on mazes, normalised score, mean and
    std over the episodes) and as words for the log line."""
    returns, success = evaluate(envs, agent, seed, device)
    score = scores(returns, success, task)
    record = {"return_mean": float(returns.mean()), "return_std": float(returns.std()),
              "success_rate": float(success.mean()) if task["goal_reaching"] else None,
              "normalized_score": None if score is None else float(score.mean()),
              "normalized_score_std": None if score is None else float(score.std())}
    words = f"return {returns.mean():.1f} ± {returns.std():.1f}" + (
        "" if score is None else f", score {score.mean():.1f} ± {score.std():.1f}")
    return record, words


@torch.no_grad()
def record_video(task: dict, agent, seed: int, path: Path, device: torch.device) -> Path:
    """One episode of ``agent.act`` from the start ``evaluate``'s first sub-env sees, rendered
    (every k-th frame, about 30 frames/s) to an MP4 at ``path``. Headless Linux renders with EGL."""
    import imageio
    if sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")
    env = make_env(task, render_mode="rgb_array")
    fps = env.metadata.get("render_fps", 30)
    skip = max(1, round(fps / 30))
    obs, _ = env.reset(seed=seed)
    frames, done, t = [env.render()], False, 0
    while not done:
        action = agent.act(torch.as_tensor(obs[None], dtype=torch.float32, device=device))[0].cpu().numpy()
        obs, _, terminated, truncated, _ = env.step(action)
        done, t = terminated or truncated, t + 1
        if t % skip == 0 or done:
            frames.append(env.render())
    env.close()
    path.parent.mkdir(parents=True, exist_ok=True)
    imageio.mimwrite(path, frames, fps=fps / skip)
    return path


# ------------------------------------------------------------------------------ checkpoints, runs
def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def run_info(cfg: TrainConfig, data: Dataset, device: torch.device) -> dict:
    """How a run was made: command line, git commit and local changes of this file's repository,
    package versions, device, and the dataset files' sha256."""
    import importlib.metadata as md
    git = lambda *a: subprocess.run(["git", *a], cwd=Path(__file__).resolve().parent, capture_output=True,  # noqa: E731
                                    text=True, timeout=10)
    try:
        commit = git("rev-parse", "HEAD").stdout.strip() or None
        dirty = bool(git("status", "--porcelain", "--untracked-files=no").stdout.strip()) if commit else None
    except (OSError, subprocess.SubprocessError):
        commit = dirty = None
    versions = {}
    for package in ("torch", "numpy", "gymnasium", "mujoco", "minari", "gymnasium-robotics"):
        try:
            versions[package] = md.version(package)
        except md.PackageNotFoundError:
            pass
    return {"command": " ".join([Path(sys.executable).name, *sys.argv]), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
            "git_commit": commit, "git_dirty": dirty, "python": platform.python_version(), "versions": versions,
            "device": f"{device} ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else
                      f"{device} ({torch.get_num_threads()} threads, {platform.processor() or platform.machine()})",
            "host": platform.node(), "dataset_sha256": {str(p): sha256(p) for p in data.files}}


def save_checkpoint(path: Path, agent, progress: dict, task: dict, buffer: ReplayBuffer) -> None:
    """Everything a resumed run needs, written atomically (tmp file + rename): the agent (with its
    state normaliser), the progress counters, the task (env spec, references: what ``--evaluate``
    needs), the RNG states; the online transitions are appended to online_buffer.hdf5 first."""
    if buffer.size > buffer.n_offline:
        save_online_buffer(path.with_name("online_buffer.hdf5"), buffer)
    state = {"agent": agent.state_dict(), "progress": progress, "task": task,
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def save_online_buffer(path: Path, buffer: ReplayBuffer) -> None:
    """Append the online transitions not yet in ``path``, as the buffer stores them (normalised
    states, transformed rewards), so a resume copies them back unchanged."""
    cols = {"states": buffer.states, "actions": buffer.actions, "rewards": buffer.rewards,
            "next_states": buffer.next_states, "dones": buffer.dones}
    with h5py.File(path, "a") as f:
        have = f["rewards"].shape[0] if "rewards" in f else 0
        rows = slice(buffer.n_offline + have, buffer.size)
        for k, col in cols.items():
            x = col[rows].cpu().numpy()
            if k not in f:
                f.create_dataset(k, data=x, maxshape=(None, *x.shape[1:]), chunks=True)
            else:
                f[k].resize(have + len(x), axis=0)
                f[k][have:] = x


def load_checkpoint(path: Path, agent, buffer: Optional[ReplayBuffer]) -> dict:
    """Restore ``agent``, the RNGs and the online transitions into ``buffer``; returns the progress.
    The optimisers' learning rates follow the config, so a resume can lower them (scheduled ones
    keep their place in the schedule); unchanged, they are the checkpoint's to the bit."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    optimizers = {k: o for k, o in vars(agent).items() if isinstance(o, torch.optim.Optimizer)}
    wanted = {k: [g.get("initial_lr", g["lr"]) for g in o.param_groups] for k, o in optimizers.items()}
    agent.load_state_dict(state["agent"])
    for k, o in optimizers.items():
        for g, lr in zip(o.param_groups, wanted[k]):
            g["lr"], g["initial_lr"] = g["lr"] * (lr / g.get("initial_lr", g["lr"])), lr
    for sched in (v for v in vars(agent).values() if isinstance(v, torch.optim.lr_scheduler.LRScheduler)):
        sched.base_lrs = [g["initial_lr"] for g in sched.optimizer.param_groups]
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    online_path = path.with_name("online_buffer.hdf5")
    if buffer is not None and online_path.exists():  # stored as the buffer holds them: copied back unchanged
        n_online = state["progress"]["buffer_size"] - buffer.n_offline
        with h5py.File(online_path, "a") as f:
            for k in ("states", "actions", "rewards", "next_states", "dones"):
                f[k].resize(n_online, axis=0)  # rows appended after the checkpoint are not the run's
                getattr(buffer, k)[buffer.n_offline:buffer.n_offline + n_online] = torch.as_tensor(f[k][()])
        buffer.size = buffer.n_offline + n_online
    return state["progress"]


class OnlineEnv:
    """The training env of online fine-tuning: ``step`` takes one ``agent.explore`` action and
    appends the transition to the replay buffer. Episode k resets with seed ``seed + 10_000 + k``,
    so a resumed run replays its unfinished episode from that seed and the episode's stored
    actions and continues exactly where it stopped; when the replayed observations differ from
    the stored ones (an env that is not deterministic), the resume starts a fresh episode."""

    def __init__(self, task: dict, agent, buffer: ReplayBuffer, seed: int, device: torch.device):
        self.env, self.agent, self.buffer, self.seed, self.device = make_env(task), agent, buffer, seed, device
        self.episode, self.start, self.ret = 0, buffer.size, 0.0
        self.obs, _ = self.env.reset(seed=seed + 10_000)

    def step(self) -> Optional[float]:
        """One env step; returns the episode's return when it ended at this step."""
        action = self.agent.explore(torch.as_tensor(self.obs[None], dtype=torch.float32, device=self.device))
        action = action[0].cpu().numpy()
        obs, reward, terminated, truncated, _ = self.env.step(action)
        self.buffer.add(self.obs[None], action[None], [reward], obs[None], [float(terminated)])
        self.obs, self.ret = obs, self.ret + float(reward)
        if not (terminated or truncated):
            return None
        ret, self.episode, self.start, self.ret = self.ret, self.episode + 1, self.buffer.size, 0.0
        self.obs, _ = self.env.reset(seed=self.seed + 10_000 + self.episode)
        return ret

    def state_dict(self) -> dict:
        return {"episode": self.episode, "start": self.start, "return": self.ret}

    def load_state_dict(self, state: dict) -> bool:
        """Replay the unfinished episode; returns False when the env did not reproduce it."""
        self.episode, self.start, self.ret = state["episode"], state["start"], state["return"]
        self.obs, _ = self.env.reset(seed=self.seed + 10_000 + self.episode)
        b = self.buffer
        for i in range(self.start, b.size):
            obs = self.env.step(b.actions[i].cpu().numpy())[0]
            s_next = b.normalizer(torch.as_tensor(obs[None], dtype=torch.float32, device=self.device))[0]
            if not torch.equal(s_next, b.next_states[i]):
                self.episode, self.start, self.ret = self.episode + 1, b.size, 0.0
                self.obs, _ = self.env.reset(seed=self.seed + 10_000 + self.episode)
                return False
            self.obs = obs
        return True


class LossLog:
    """Running sums of the update's losses on the device (no host sync per step) and, per loss,
    the first step at which it was not finite; ``read`` syncs once per log interval. Losses that
    come together (one update's dict) are stacked, so each step costs a handful of small ops."""

    def __init__(self):
        self.groups = {}  # loss names -> [sum, count, first non-finite step] of their stacked values

    def add(self, losses: Dict[str, torch.Tensor], step: int) -> None:
        v = torch.stack(list(losses.values()))
        bad = torch.where(torch.isfinite(v), math.inf, float(step))
        g = self.groups.get(tuple(losses))
        if g is None:
            self.groups[tuple(losses)] = [v, 1, bad]
        else:
            g[0], g[1], g[2] = g[0] + v, g[1] + 1, torch.minimum(g[2], bad)

    def read(self) -> Tuple[Dict[str, float], Dict[str, int]]:
        """(mean of each loss, {loss: first non-finite step} for the non-finite ones, earliest
        first), then reset."""
        sums, counts, bad = {}, {}, {}
        for keys, (v, n, first) in self.groups.items():
            for k, x, f in zip(keys, v.tolist(), first.tolist()):
                sums[k], counts[k] = sums.get(k, 0.0) + x, counts.get(k, 0) + n
                if math.isfinite(f):
                    bad[k] = min(bad.get(k, int(f)), int(f))
        self.groups = {}
        return {k: sums[k] / counts[k] for k in sums}, dict(sorted(bad.items(), key=lambda kv: kv[1]))


def task_of(cfg: TrainConfig, data: Dataset) -> dict:
    """What evaluating a policy on the dataset's task needs: the env spec (JSON), the references,
    whether it is goal-reaching (scored by success rate), a D4RL AntMaze file's maze, the episodes
    per evaluation. Raises InputError when ``env`` gives a maze dataset another maze layout."""
    spec = env_spec(cfg.env) if cfg.env else data.env_spec
    if spec is None:
        raise InputError(f"the dataset {data.name} names no env; set env (e.g. Hopper-v5)")
    if cfg.env and data.walls and walls(spec) != data.walls:
        raise InputError(f"env {cfg.env} has other walls than the maze {data.name} was collected in; drop env "
                         "to evaluate on the dataset's own evaluation env, or name an env with the data's walls")
    ref_min = cfg.ref_min_score if cfg.ref_min_score is not None else data.ref_min
    ref_max = cfg.ref_max_score if cfg.ref_max_score is not None else data.ref_max
    return {"env_spec": spec.to_json(), "ref_min": ref_min, "ref_max": ref_max, "goal_reaching": data.goal_reaching,
            "d4rl_maze": None if cfg.env else data.d4rl_maze,
            "n_episodes": cfg.n_episodes or (100 if data.goal_reaching else 10)}


def pick_device(cfg: TrainConfig) -> torch.device:
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    if cfg.device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(cfg.device)


def open_run(cfg: TrainConfig, data: Dataset, device: torch.device) -> Path:
    """The run directory (new, or ``resume``'s), with config.yaml (the resolved config) and
    run_info.json (``run_info``; a resume appends its own to "resumes")."""
    if cfg.resume:
        run_dir = Path(cfg.resume)
        if not (run_dir / "checkpoint.pt").exists():
            raise InputError(f"resume: {run_dir} has no checkpoint.pt to continue from")
    else:
        run_dir = Path(cfg.output_dir) / (cfg.name or f"{ALGORITHM}-{data.name}-seed{cfg.seed}-"
                                                       f"{time.strftime('%Y%m%d-%H%M%S')}")
        if (run_dir / "checkpoint.pt").exists():
            raise InputError(f"{run_dir} already holds a run; pass resume: {run_dir} or another name")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**asdict(cfg), "resume": None}, sort_keys=False))
    info_path, info = run_dir / "run_info.json", run_info(cfg, data, device)
    if cfg.resume and info_path.exists():
        first = json.loads(info_path.read_text())
        info = {**first, "resumes": first.get("resumes", []) + [info]}
    info_path.write_text(json.dumps(info, indent=1))
    return run_dir


def train(cfg: TrainConfig) -> Path:
    """Train as ``cfg`` says: the agent's pre-training phase if it has one (steps < 0), then
    ``max_timesteps`` offline updates, then ``online_steps`` env steps with one update each;
    evaluate, log and checkpoint every ``eval_freq`` updates and at the end of each phase. Returns
    the run directory. Raises InputError on bad input (before training) and FloatingPointError
    when a loss is not finite or the agent's own stop rule fires (the last good checkpoint is kept)."""
    validate(cfg)
    data = load_dataset(cfg)
    task = task_of(cfg, data)
    spec = gym.envs.registration.EnvSpec.from_json(task["env_spec"])
    envs = make_env(task, task["n_episodes"])
    obs_dim, act_dim, n_data = data.states.shape[1], data.actions.shape[1], len(data.rewards)
    if envs.single_observation_space.shape != (obs_dim,) or envs.single_action_space.shape != (act_dim,):
        raise InputError(f"dataset {data.name} has observations ({obs_dim},) and actions ({act_dim},) "
                         f"but env {spec.id} has {envs.single_observation_space.shape} and "
                         f"{envs.single_action_space.shape}; set env to the dataset's env")
    if data.goal_reaching:
        check_maze(task, data, envs)
    if (cfg.buffer_size or n_data + cfg.online_steps) < n_data + cfg.online_steps:
        raise InputError(f"buffer_size {cfg.buffer_size} cannot hold the dataset's {n_data} transitions plus "
                         f"online_steps {cfg.online_steps}; set buffer_size >= {n_data + cfg.online_steps} or null")
    device = pick_device(cfg)
    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    normalize, reward_scale, reward_shift = preprocessing(cfg, data)
    agent = Agent(obs_dim, act_dim, cfg, Normalizer(obs_dim, data.states if normalize else None), device)
    capacity = cfg.buffer_size or n_data + cfg.online_steps
    buffer = ReplayBuffer(data, agent.normalizer, reward_scale, reward_shift, capacity, device)
    update = torch.compile(agent.update) if cfg.torch_compile else agent.update
    pretrain_steps = getattr(agent, "pretrain_steps", 0)
    run_dir = open_run(cfg, data, device)
    metrics_path, ckpt_path = run_dir / "metrics.jsonl", run_dir / "checkpoint.pt"
    progress = {"step": -pretrain_steps, "env_steps": 0, "elapsed_s": 0.0, "buffer_size": n_data, "online": None}
    if cfg.resume:
        progress = load_checkpoint(ckpt_path, agent, buffer)
        kept = [r for r in metrics_path.read_text().splitlines() if json.loads(r)["step"] <= progress["step"]]
        metrics_path.write_text("".join(r + "\n" for r in kept))  # drop records after the checkpoint
    step, total = progress["step"], cfg.max_timesteps + cfg.online_steps
    saved = step if cfg.resume else None  # the step of the last checkpoint written
    if pretrain_steps and step >= 0:
        agent.end_pretraining(run_dir)
    online = OnlineEnv(task, agent, buffer, cfg.seed, device) if cfg.online_steps else None
    if online and progress["online"] and not online.load_state_dict(progress["online"]):
        print("note: the env did not replay the unfinished online episode; a fresh one starts")
    print(f"{ALGORITHM} on {data.name}: {n_data} transitions, env {spec.id}, device {device}, run dir {run_dir}"
          + (f", resuming at step {step}" if cfg.resume else ""))
    if not task["goal_reaching"] and None in (task["ref_min"], task["ref_max"]):
        print(f"note: {data.name} carries no reference returns (ref_min_score/ref_max_score), so "
              "normalized_score is null and raw returns are logged; set both fields to normalise.")
    mode = cfg.wandb_mode or os.environ.get("WANDB_MODE", "offline")
    try:
        run = wandb.init(project=cfg.wandb_project, name=run_dir.name, id=run_dir.name, resume="allow", dir=run_dir,
                         mode=mode, config=asdict(cfg), settings=wandb.Settings(console="off", silent=True))
    except Exception as e:  # e.g. online mode without an API key
        raise InputError(f"wandb_mode={mode}: {e}. Run `wandb login`, or set wandb_mode: offline") from None

    log, episode_returns, n_since, t_last, record = LossLog(), [], 0, time.time(), None
    bar = tqdm(total=total + pretrain_steps, initial=step + pretrain_steps, disable=not cfg.progress_bar,
               unit="upd", dynamic_ncols=True)
    while step < total:
        if step < 0:
            losses = agent.pretrain_update(*buffer.sample(cfg.batch_size))
        else:
            if step >= cfg.max_timesteps:
                episode_return = online.step()
                progress["env_steps"] += 1
                episode_returns += [] if episode_return is None else [episode_return]
            losses = update(*buffer.sample(cfg.batch_size), step=step + 1)
        step, n_since = step + 1, n_since + 1
        log.add(losses, step)
        bar.update(1)
        if step == 0 and pretrain_steps:
            agent.end_pretraining(run_dir)
        if (step + pretrain_steps if step <= 0 else step) % cfg.eval_freq and step not in (0, cfg.max_timesteps, total):
            continue
        mean_losses, bad = log.read()
        reason = getattr(agent, "stop_reason", lambda: None)()
        if bad or reason:
            bar.close()
            run.finish(exit_code=1)
            at = {n: [k for k in bad if bad[k] == n] for n in bad.values()}  # first non-finite step -> losses
            what = "; ".join(f"{'non-finite ' if n == min(at) else 'then '}{', '.join(ks)} at step {n}"
                             for n, ks in at.items()) if bad else reason
            kept = (f"The last good checkpoint ({ckpt_path}, step {saved}) is kept." if saved is not None else
                    f"No checkpoint was written yet (the first comes at step {min(cfg.eval_freq, total)}).")
            raise FloatingPointError(f"{what}; training stopped. {kept} Lower the learning rates (a resume "
                                     "takes new ones) or check the data's rewards.")
        now = time.time()
        progress["elapsed_s"], rate, t_last = progress["elapsed_s"] + now - t_last, n_since / (now - t_last), now
        phase = "pretrain" if step <= 0 and pretrain_steps else "offline" if step <= cfg.max_timesteps else "online"
        record, line = {"step": step, "phase": phase, "env_steps": progress["env_steps"]}, f"step {step} [{phase}]"
        if phase != "pretrain":
            result, words = evaluation(envs, agent, cfg.seed + 100, task, device)
            record.update(result)
            line += ": " + words
            bar.set_postfix_str(words)
        if episode_returns:
            record.update(online_episodes=len(episode_returns), online_return_mean=float(np.mean(episode_returns)))
            line += f", {len(episode_returns)} online episodes returning {np.mean(episode_returns):.1f}"
        record.update(elapsed_s=round(progress["elapsed_s"], 2), updates_per_s=round(rate, 1), **mean_losses)
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        progress.update(step=step, buffer_size=buffer.size, online=online.state_dict() if online else None)
        save_checkpoint(ckpt_path, agent, progress, task, buffer)
        saved, logged = step, {k: v for k, v in record.items() if isinstance(v, (int, float))}
        if cfg.save_video and phase != "pretrain":
            video = record_video(task, agent, cfg.seed + 100, run_dir / "videos" / f"step{step}.mp4", device)
            logged["video"] = wandb.Video(str(video), format="mp4")
        run.log(logged, step=step + pretrain_steps)
        bar.write(line + "; " + ", ".join(f"{k} {v:.3g}" for k, v in mean_losses.items()) + f"; {rate:.0f} upd/s")
        episode_returns, n_since, t_last = [], 0, time.time()
    bar.close()
    run.finish()
    if record is not None and record.get("normalized_score") is not None:
        data_mean = scores(data.episode_returns, np.zeros(len(data.episode_returns), bool), task)
        print(f"final {'success rate x 100' if task['goal_reaching'] else 'normalised score'} "
              f"{record['normalized_score']:.1f}" + ("" if data_mean is None or task["goal_reaching"] else
                                                      f" (behaviour data mean {data_mean.mean():.1f})"))
    return run_dir


def evaluate_run(cfg: TrainConfig) -> dict:
    """Evaluate the checkpoint of the run in ``cfg.evaluate`` on ``n_episodes`` (default: the run's)
    without training, with a video when ``save_video``; appends the result to the run's
    evaluations.jsonl and returns it."""
    run_dir = Path(cfg.evaluate)
    if not (run_dir / "checkpoint.pt").exists():
        raise InputError(f"evaluate: {run_dir} has no checkpoint.pt")
    state = torch.load(run_dir / "checkpoint.pt", map_location="cpu", weights_only=False)
    task = {**state["task"], "n_episodes": cfg.n_episodes or state["task"]["n_episodes"]}
    device = pick_device(cfg)
    envs = make_env(task, task["n_episodes"])
    obs_dim, act_dim = envs.single_observation_space.shape[0], envs.single_action_space.shape[0]
    agent = Agent(obs_dim, act_dim, cfg, Normalizer(obs_dim), device)
    agent.load_state_dict(state["agent"])
    record, words = evaluation(envs, agent, cfg.seed + 100, task, device)
    result = {"step": state["progress"]["step"], "n_episodes": task["n_episodes"], "seed": cfg.seed + 100, **record}
    if cfg.save_video:
        name = f"evaluate-step{result['step']}-{time.strftime('%Y%m%d-%H%M%S')}.mp4"
        result["video"] = str(record_video(task, agent, cfg.seed + 100, run_dir / "videos" / name, device))
    with (run_dir / "evaluations.jsonl").open("a") as f:
        f.write(json.dumps(result) + "\n")
    print(f"{run_dir} at step {result['step']}, {task['n_episodes']} episodes: {words}"
          + (f"; video {result['video']}" if cfg.save_video else ""))
    return result


def parse_config(argv=None) -> TrainConfig:
    """CLI -> TrainConfig. ``--config`` (or pyrallis' ``--config_path``) loads a YAML; with
    ``--resume`` or ``--evaluate <run dir>`` the run's saved config.yaml is the base. Other flags
    override fields. Raises InputError naming a missing file, a mistyped value or an unknown key."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [("--config_path" + a[len("--config"):]) if a.split("=")[0] == "--config" else a for a in argv]
    given = {}  # values of --config_path / --resume / --evaluate in argv
    for i, a in enumerate(argv):
        key, _, val = a.partition("=")
        if key in ("--config_path", "--resume", "--evaluate"):
            given[key] = val or (argv[i + 1] if i + 1 < len(argv) else "")
    run = given.get("--resume") or given.get("--evaluate")
    run_base = str(Path(run) / "config.yaml") if run else None
    config_path = given.get("--config_path") or run_base
    if given.get("--config_path") and not Path(config_path).is_file():
        raise InputError(f"--config: no config file {config_path}; check the path (see configs/<algorithm>/)")
    if run and not given.get("--config_path") and not Path(run_base).is_file():
        raise InputError(f"{run} is not a run directory (no config.yaml); give one that a training run wrote")
    bools = {f.name for f in fields(TrainConfig) if f.type in ("bool", bool)}
    raw = yaml.safe_load(Path(config_path).read_text()) if config_path else {}
    pairs = [(k, v) for k, v in (raw or {}).items()] + [
        (a[2:], argv[i + 1]) for i, a in enumerate(argv[:-1]) if a.startswith("--") and "=" not in a]
    for key, val in pairs:  # pyrallis reads any unknown string as True; refuse it instead
        if key in bools and not isinstance(val, bool) and str(val).lower() not in ("true", "false", "1", "0"):
            raise InputError(f"{key} must be true or false, got {val!r}")
    try:
        return pyrallis.parse(config_class=TrainConfig, args=argv,
                              config_path=None if "--config_path" in given else run_base)
    except pyrallis.utils.ParsingError as e:
        raise InputError(f"config: {e}") from None
    except Exception as e:  # unknown YAML keys
        if "do not belong" in str(e):
            raise InputError(f"config: {e}; valid fields: {', '.join(f.name for f in fields(TrainConfig))}") from None
        raise


def main(argv=None) -> None:
    try:
        cfg = parse_config(argv)
        evaluate_run(cfg) if cfg.evaluate else train(cfg)
    except (InputError, FloatingPointError) as err:
        sys.exit(f"error: {err}")


if __name__ == "__main__":
    main()
