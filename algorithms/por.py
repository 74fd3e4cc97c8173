"""POR: policy-guided offline RL (guide-policy + execute-policy), in one file.

Paper: Xu, Jiang, Li, Zhan. "A Policy-Guided Imitation Approach for Offline Reinforcement
Learning", NeurIPS 2022. Official code: github.com/ryanxhr/POR (por.py, policy.py,
value_functions.py, util.py, main_por.py, run_mujoco_por.sh, run_antmaze_por.sh). Three learned
parts, equation numbers as in the paper's Algorithm 1:
  V (eq. 3):  y = r + discount * (1 - done) * min_i Vbar_i(s');
              L_V = 1/2 sum_i mean_B[|expectile - 1(u_i < 0)| * u_i^2], u_i = y - V_i(s)
              (twin V heads, V(s) = min_i V_i(s); Polyak(tau) on Vbar after every V step)
  guide g(s'|s), a Gaussian over the next state, one of (``guide``):
    por_r (eq. 5, the official default): A = y - V(s) with V after this step's update;
              L_g = -mean_B[min(exp(alpha * A), weight_max) * log g(s'|s)], weights detached
    por_q (eq. 4, the official choice for Hopper): ghat ~ g(.|s) reparameterised, b(s'|s) a
              behaviour guide pre-trained by likelihood on (s, s') for guide_pretrain_steps;
              L_g = mean_B[-(alpha / mean_B|V(ghat)|) * V(ghat) - log b(ghat|s)] (normaliser detached)
  execute pi(a|s, s') (eq. 6): L_pi = -mean_B log pi(a | s, s') on dataset triples (s, a, s')
  action (eq. 7): a = mean of pi(. | s, mean of g(.|s)), clipped to [-1, 1].
Per step (official por.py): V -> Polyak(Vbar) -> g -> pi. pi's loss holds neither V nor g (it
imitates dataset actions between dataset states), so the two trainings are decoupled as the
slides' Algorithm 1 says; the code only runs them in one loop on the same batches.
Networks (official): twin V 2x256 ReLU with LayerNorm after each hidden Linear when layer_norm;
g and b 2x256 ReLU, pi 2x1024 ReLU (execute_hidden_dim), all Gaussians with unsquashed mean and a
state-independent log-std (init 0) clamped to [-5, 2]; PyTorch default init. Adam: V 1e-4
constant; g and pi policy_lr 1e-3 (run_mujoco_por.sh; code default 1e-4), each decaying to 0 on
a cosine over max_timesteps; b 1e-4 constant. batch 256, discount 0.99, tau 0.005 (the code's
"beta"), weight cap 100 (EXP_ADV_MAX), 10 eval episodes every 5000 steps.
Data (official): rewards scaled by 1000 / (R_max - R_min), trajectories split POR's way (after a
terminal or every max_episode_steps = 1000 rows, trailing partial piece dropped); no state
normalisation; dataset actions not clipped (pi has no tanh).

Per-dataset defaults, from run_mujoco_por.sh (HEAD) where it has them:
  halfcheetah/walker2d medium, medium-replay, medium-expert: por_r, expectile 0.5, alpha 3, LN on
  hopper-medium, hopper-medium-replay: por_q, expectile 0.7, alpha 50, LN off
  hopper-medium-expert: por_q, expectile 0.7, alpha 5, LN on
Our choices where the script has none (random and expert levels, Minari and shipped data): the
TrainConfig defaults are the halfcheetah/walker2d setting (por_r, 0.5, 3, LN), used for every
halfcheetah/walker2d dataset; Hopper datasets use por_q with expectile 0.7 and the hopper setting
nearest in data quality: random/simple/medium/medium-replay like hopper-medium (alpha 50, LN off),
expert/medium-expert like hopper-medium-expert (alpha 5, LN on).

Maze tasks (official run_antmaze_por.sh, main_por.py): por_r, expectile 0.9, alpha 10, no layer
norm, policy_lr 1e-3 on umaze(-diverse) and 1e-4 elsewhere, rewards r - 1 (goal_reward_shift) and
no reward scaling, 50 evaluation episodes every 10k updates.

Official code vs slides (defaults = official code; the slides' variants are config fields):
  1. eq. (5): the code puts alpha inside the exponent and caps the weight at 100; the slides use
     exp(A) uncapped -> alpha: 1.0, weight_max: null.
  2. eq. (4): the code's por_q (above) uses a pre-trained behaviour guide and an alpha/|V|
     normaliser; the slides maximise V(g(s)) + alpha * log g(s'|s) on dataset s' ->
     por_q_objective: slides (no pre-training; L_g = mean_B[-V(ghat) - alpha * log g(s'|s)]).
  3. Algorithm 1 trains pi after V and g (lines 9-12); the code trains all three in one loop. No
     switch: pi's loss involves neither V nor g, so the order changes only which uniform batches
     pi sees, and one loop lets every evaluation use a trained pi.
  4. Hyperparameters moved between commits and the README reports 78.6 on hopper-medium-v2 with
     this code, not the paper's 98.2 (fact sheet sec. 5); we use HEAD's script.
Library conventions that differ from the official script: seed 0 (script: 42); actions clipped
to [-1, 1] before env.step (Gymnasium envs do not clip; D4RL's wrapper did); the cosine schedules
run over max_timesteps read when the run (re)starts, so extending a run follows its new total.
por_q's pre-training of b (official: a separate --pretrain run; its repository ships b networks
for hopper medium, medium-replay and medium-expert) runs inside the run as its first phase:
records with phase "pretrain" and step <= 0 (step = b steps done - guide_pretrain_steps).
Offline only (online_steps > 0 is refused): the official code has no fine-tuning, and both POR
policies imitate dataset (s, s', a) triples, so online data would change what they imitate, not
improve on it; the paper proposes none.

Usage: python algorithms/por.py --config configs/por/local/hopper/medium.yaml [--field value ...]
       python algorithms/por.py --resume runs/<run name> [--max_timesteps N]
       python algorithms/por.py --evaluate runs/<run name> [--n_episodes N] [--save_video true]
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
import torch.nn.functional as F
import wandb
import yaml
from tqdm import tqdm

ALGORITHM = "por"


@dataclass
class TrainConfig:
    # POR; defaults = run_mujoco_por.sh for halfcheetah/walker2d (see the module docstring)
    guide: str = "por_r"  # por_r: eq. (5), weighted likelihood | por_q: eq. (4), maximise V(ghat)
    expectile: float = 0.5  # expectile of V (the code's "tau"); script: 0.5 por_r, 0.7 hopper por_q
    alpha: float = 3.0  # por_r: inverse temperature in exp(alpha * A) | por_q: weight of V(ghat)
    weight_max: Optional[float] = 100.0  # cap of the por_r weights (EXP_ADV_MAX); null = none (slides)
    por_q_objective: str = "official"  # official: alpha/|V| and log b(ghat|s) | slides: alpha log g(s'|s)
    guide_pretrain_steps: Optional[int] = None  # por_q: steps of b before POR; null = max_timesteps (official 1e6)
    pretrain_lr: float = 1e-4  # Adam lr of the behaviour guide b (official, constant)
    layer_norm: bool = True  # LayerNorm in V's hidden layers (script: on; off for hopper-medium(-replay))
    log_std_min: float = -5.0  # log-std clamp of g, b and pi (official policy.py)
    log_std_max: float = 2.0
    hidden_dim: int = 256  # V, g and b width
    n_hidden: int = 2  # hidden layers in every network
    execute_hidden_dim: int = 1024  # pi(a|s,s') width (official main_por.py)
    value_lr: float = 1e-4  # Adam lr of V, constant (official)
    policy_lr: float = 1e-3  # Adam lr of g and pi, cosine decay to 0 over max_timesteps (script 1e-3)
    discount: float = 0.99
    tau: float = 0.005  # Polyak rate of the target V (the code's "beta")
    normalize: bool = False  # normalise states with the offline data's mean/std (+1e-3); official MuJoCo: off
    normalize_reward: bool = True  # locomotion: scale rewards by 1000 / (R_max - R_min) (official)
    goal_reward_shift: float = -1.0  # goal-reaching (maze) tasks: r + this, not scaled (official: r - 1)
    max_episode_steps: int = 1000  # reward-scale split: a trajectory ends every this many rows (official)
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
    """Raise InputError (defined with the plumbing below) for POR fields that cannot work."""
    for name in ("hidden_dim", "n_hidden", "execute_hidden_dim", "max_episode_steps"):
        if getattr(cfg, name) <= 0:
            raise InputError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    if cfg.guide_pretrain_steps is not None and cfg.guide_pretrain_steps < 0:
        raise InputError(f"guide_pretrain_steps must be >= 0 or null, got {cfg.guide_pretrain_steps}")
    if not 0 < cfg.tau <= 1 or not 0 <= cfg.discount <= 1:
        raise InputError(f"tau must be in (0, 1] and discount in [0, 1]; got {cfg.tau}, {cfg.discount}")
    if not 0 < cfg.expectile < 1:
        raise InputError(f"expectile must be in (0, 1), got {cfg.expectile}")
    if cfg.guide not in ("por_r", "por_q"):
        raise InputError(f"guide must be por_r or por_q, got {cfg.guide!r}")
    if cfg.por_q_objective not in ("official", "slides"):
        raise InputError(f"por_q_objective must be official or slides, got {cfg.por_q_objective!r}")
    if cfg.weight_max is not None and cfg.weight_max <= 0:
        raise InputError(f"weight_max must be positive or null, got {cfg.weight_max}")
    if cfg.log_std_min >= cfg.log_std_max:
        raise InputError(f"log_std_min ({cfg.log_std_min}) must be below log_std_max ({cfg.log_std_max})")
    if cfg.online_steps:
        raise InputError(f"online_steps={cfg.online_steps}: POR is offline-only (see the docstring of "
                         "algorithms/por.py); set online_steps: 0, or fine-tune with spot.py, iql.py, "
                         "awac.py or iac_cpe.py")


def return_range(data: "Dataset", max_episode_steps: int) -> Tuple[float, float]:
    """(min, max) undiscounted trajectory return, POR's split (util.return_range): a trajectory
    ends after a terminal or when it reaches ``max_episode_steps`` rows; the trailing partial
    piece is dropped (kept only when no trajectory is complete, where the official code fails)."""
    returns, ret, length = [], 0.0, 0
    for r, d in zip(data.rewards.tolist(), data.dones.tolist()):
        ret, length = ret + r, length + 1
        if d or length == max_episode_steps:
            returns.append(ret)
            ret, length = 0.0, 0
    returns = returns or [ret]
    return float(min(returns)), float(max(returns))


def preprocessing(cfg: TrainConfig, data: "Dataset") -> Tuple[bool, float, float]:
    """(normalise states?, reward scale, reward shift): every reward becomes scale * r + shift, offline
    and online. As the official main_por.py: goal-reaching (AntMaze) data r + goal_reward_shift (r - 1),
    locomotion data 1000 / (R_max - R_min) with ``normalize_reward``, else raw."""
    if data.goal_reaching:
        return cfg.normalize, 1.0, cfg.goal_reward_shift
    if not cfg.normalize_reward:
        return cfg.normalize, 1.0, 0.0
    r_min, r_max = return_range(data, cfg.max_episode_steps)
    return cfg.normalize, 1000.0 / max(r_max - r_min, 1e-6), 0.0


# ------------------------------------------------------------------------------------- networks
def mlp(in_dim: int, out_dim: int, hidden: int, n_hidden: int) -> nn.Sequential:
    layers, d = [], in_dim
    for _ in range(n_hidden):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    return nn.Sequential(*layers, nn.Linear(d, out_dim))


class GaussianPolicy(nn.Module):
    """N(mu(x), diag(sigma^2)), mu an MLP with no output activation, log sigma a state-independent
    parameter (init 0) clamped to [log_std_min, log_std_max] (official policy.py). Used for the
    guide g(s'|s), the behaviour guide b(s'|s) and the execute policy pi(a|s,s')."""

    def __init__(self, in_dim: int, out_dim: int, hidden: int, cfg: TrainConfig):
        super().__init__()
        self.mu = mlp(in_dim, out_dim, hidden, cfg.n_hidden)
        self.log_std = nn.Parameter(torch.zeros(out_dim))
        self.log_std_bounds = (cfg.log_std_min, cfg.log_std_max)

    def forward(self, x: torch.Tensor) -> torch.distributions.Normal:
        """x (..., in) -> Normal with batch shape (..., out); sum log_prob over the last dim.
        Unvalidated: a diverged network's non-finite mean or std reaches the losses, where the run
        loop names it, instead of raising inside torch.distributions."""
        std = self.log_std.clamp(*self.log_std_bounds).exp()
        return torch.distributions.Normal(self.mu(x), std, validate_args=False)


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


class VectorizedLayerNorm(nn.Module):
    """``n`` independent LayerNorms (each with its own gain and bias, like ``nn.LayerNorm``) on
    (n, B, dim)."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(n, 1, dim))
        self.bias = nn.Parameter(torch.zeros(n, 1, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.layer_norm(x, x.shape[-1:]) * self.weight + self.bias


class TwinV(nn.Module):
    """Twin state values V_1, V_2 (each s -> hidden x n_hidden -> 1, [LayerNorm] then ReLU per
    hidden layer, official value_functions.TwinV) as one ensemble."""

    def __init__(self, obs_dim: int, cfg: TrainConfig, n: int = 2):
        super().__init__()
        dims = [obs_dim] + [cfg.hidden_dim] * cfg.n_hidden
        layers = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            norm = [VectorizedLayerNorm(d_out, n)] if cfg.layer_norm else []
            layers += [VectorizedLinear(d_in, d_out, n), *norm, nn.ReLU()]
        self.net = nn.Sequential(*layers, VectorizedLinear(dims[-1], 1, n))
        self.n = n

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """s (B, obs) -> values (n, B); V(s) = min over the first dim."""
        return self.net(s.unsqueeze(0).expand(self.n, -1, -1))[..., 0]


# ------------------------------------------------------------------------------------ the update
def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """POR eq. (3), L_2^tau: mean |expectile - 1(diff < 0)| * diff^2 over all entries,
    diff = y - V_i(s). diff (n, B) or (B,) -> scalar; with (n, B) this is 1/n sum_i mean_B, the
    official average over the twin heads."""
    weight = torch.where(diff < 0, 1 - expectile, expectile)
    return (weight * diff ** 2).mean()


def guide_residual_loss(logp_next: torch.Tensor, adv: torch.Tensor, alpha: float,
                        weight_max: Optional[float]) -> torch.Tensor:
    """POR eq. (5) as in the official code (por_r): -mean_B[min(exp(alpha * A), weight_max) *
    log g(s'|s)], the weights detached. logp_next = log g(s'|s) (B,), adv = y - V(s) (B,) -> scalar.
    The slides' eq. (5) is alpha = 1, weight_max = None."""
    weights = torch.exp(alpha * adv)
    weights = (weights if weight_max is None else weights.clamp(max=weight_max)).detach()
    return -(weights * logp_next).mean()


def guide_value_loss(v_hat: torch.Tensor, logp_b_hat: torch.Tensor, alpha: float) -> torch.Tensor:
    """POR eq. (4) as in the official code (por_q): mean_B[-(alpha / mean_B|V(ghat)|) * V(ghat)
    - log b(ghat|s)], the normaliser detached. v_hat = V(ghat) (B,), logp_b_hat = log b(ghat|s)
    (B,), ghat ~ g(.|s) reparameterised -> scalar."""
    lmbda = alpha / v_hat.abs().mean().detach()
    return (-lmbda * v_hat - logp_b_hat).mean()


def guide_value_loss_slides(v_hat: torch.Tensor, logp_next: torch.Tensor, alpha: float) -> torch.Tensor:
    """POR eq. (4) as on the slides: -mean_B[V(ghat) + alpha * log g(s'|s)], s' from the data.
    v_hat (B,), logp_next (B,) -> scalar."""
    return -(v_hat + alpha * logp_next).mean()


def execute_loss(logp_action: torch.Tensor) -> torch.Tensor:
    """POR eq. (6): -mean_B log pi(a | s, s') on dataset triples. logp_action (B,) -> scalar."""
    return -logp_action.mean()


def behavior_guide_loss(logp_next: torch.Tensor) -> torch.Tensor:
    """Pre-training of b for por_q (official ``pretrain``): -mean_B log b(s'|s). (B,) -> scalar."""
    return -logp_next.mean()


class Agent:
    """POR: twin V and its target, the guide g, the execute policy pi, the behaviour guide b (por_q,
    pre-trained first: ``pretrain_update``), the optimisers (g and pi with cosine schedules) and
    one POR step (``update``)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: TrainConfig, normalizer: "Normalizer",
                 device: torch.device):
        self.cfg, self.normalizer = cfg, normalizer.to(device)
        self.value = TwinV(obs_dim, cfg).to(device)
        self.value_target = copy.deepcopy(self.value).requires_grad_(False)
        self.guide = GaussianPolicy(obs_dim, obs_dim, cfg.hidden_dim, cfg).to(device)
        self.execute = GaussianPolicy(2 * obs_dim, act_dim, cfg.execute_hidden_dim, cfg).to(device)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr, fused=True)
        self.guide_opt = torch.optim.Adam(self.guide.parameters(), lr=cfg.policy_lr, fused=True)
        self.execute_opt = torch.optim.Adam(self.execute.parameters(), lr=cfg.policy_lr, fused=True)
        # lr factor at update k: (1 + cos(pi * k / T)) / 2 over T = max_timesteps, read when called,
        # so a resumed run with a larger budget follows the cosine of its new total
        cosine = lambda k: 0.5 * (1 + math.cos(math.pi * min(k / cfg.max_timesteps, 1)))  # noqa: E731
        self.guide_sched = torch.optim.lr_scheduler.LambdaLR(self.guide_opt, cosine)
        self.execute_sched = torch.optim.lr_scheduler.LambdaLR(self.execute_opt, cosine)
        self.behavior_guide, self.pretrain_steps = None, 0  # b(s'|s), only for the official por_q
        if cfg.guide == "por_q" and cfg.por_q_objective == "official":
            self.behavior_guide = GaussianPolicy(obs_dim, obs_dim, cfg.hidden_dim, cfg).to(device)
            self.behavior_opt = torch.optim.Adam(self.behavior_guide.parameters(), cfg.pretrain_lr, fused=True)
            self.pretrain_steps = cfg.max_timesteps if cfg.guide_pretrain_steps is None else cfg.guide_pretrain_steps

    def pretrain_update(self, s, a, r, s_next, done) -> Dict[str, torch.Tensor]:
        """One likelihood step of the behaviour guide b(s'|s) (por_q). Returns the detached loss."""
        loss = behavior_guide_loss(self.behavior_guide(s).log_prob(s_next).sum(-1))
        self.behavior_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.behavior_opt.step()
        return {"behavior_guide_loss": loss.detach()}

    def end_pretraining(self, run_dir: Path) -> None:
        """b is trained: from here on it only scores the guide's proposals."""
        self.behavior_guide.requires_grad_(False)

    def update(self, s, a, r, s_next, done, step: int) -> Dict[str, torch.Tensor]:
        """One POR step on a batch (shapes as ``ReplayBuffer.sample``; ``step`` unused):
        V -> Polyak -> g -> pi. Returns detached losses (no host sync)."""
        cfg = self.cfg
        with torch.no_grad():
            y = r + cfg.discount * (1 - done) * self.value_target(s_next).min(0).values
        v = self.value(s)  # (2, B)
        loss_v = expectile_loss(y - v, cfg.expectile)  # eq. (3)
        self.value_opt.zero_grad(set_to_none=True)
        loss_v.backward()
        self.value_opt.step()
        with torch.no_grad():
            torch._foreach_lerp_(list(self.value_target.parameters()), list(self.value.parameters()), cfg.tau)

        g = self.guide(s)
        if cfg.guide == "por_r":  # eq. (5), advantage from the V just updated
            with torch.no_grad():
                adv = y - self.value(s).min(0).values
            loss_g = guide_residual_loss(g.log_prob(s_next).sum(-1), adv, cfg.alpha, cfg.weight_max)
        else:  # eq. (4): ghat ~ g(.|s) reparameterised, scored by the V just updated
            g_hat = g.rsample()
            v_hat = self.value(g_hat).min(0).values
            if cfg.por_q_objective == "official":
                loss_g = guide_value_loss(v_hat, self.behavior_guide(s).log_prob(g_hat).sum(-1), cfg.alpha)
            else:
                loss_g = guide_value_loss_slides(v_hat, g.log_prob(s_next).sum(-1), cfg.alpha)
        self.guide_opt.zero_grad(set_to_none=True)
        loss_g.backward(inputs=list(self.guide.parameters()))  # V and b stay untouched
        self.guide_opt.step()
        self.guide_sched.step()

        loss_pi = execute_loss(self.execute(torch.cat([s, s_next], -1)).log_prob(a).sum(-1))  # eq. (6)
        self.execute_opt.zero_grad(set_to_none=True)
        loss_pi.backward()
        self.execute_opt.step()
        self.execute_sched.step()
        return {"value_loss": loss_v.detach(), "guide_loss": loss_g.detach(),
                "execute_loss": loss_pi.detach(), "v_mean": v.detach().min(0).values.mean()}

    @torch.no_grad()
    def act(self, obs: torch.Tensor) -> torch.Tensor:
        """POR eq. (7): raw observations (n, obs) -> mean of pi(. | s, mean of g(.|s)) clipped to
        [-1, 1] (n, act)."""
        s = self.normalizer(obs)
        return self.execute(torch.cat([s, self.guide(s).mean], -1)).mean.clamp(-1, 1)

    def state_dict(self) -> dict:
        keys = ["normalizer", "value", "value_target", "guide", "execute", "value_opt", "guide_opt",
                "guide_sched", "execute_opt", "execute_sched"]
        keys += ["behavior_guide", "behavior_opt"] if self.behavior_guide is not None else []
        return {k: getattr(self, k).state_dict() for k in keys}

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
