"""POR: policy-guided offline RL (guide-policy + execute-policy), in one file.

Paper: Xu, Jiang, Li, Zhan. "A Policy-Guided Imitation Approach for Offline Reinforcement
Learning", NeurIPS 2022. Official code: github.com/ryanxhr/POR (por.py, policy.py,
value_functions.py, util.py, main_por.py, run_mujoco_por.sh); see shared/reference/algorithms.md
sec. 5. Three learned parts, equation numbers as in the paper's Algorithm 1:
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
expert/medium-expert like hopper-medium-expert (alpha 5, LN on). The official repo ships
pre-trained b networks for hopper-random and hopper-expert, which suggests por_q ran there too.

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
to [-1, 1] before env.step (Gymnasium envs do not clip; D4RL's wrapper did).

Data: a Minari dataset (``dataset_id``, or a dataset folder in ``dataset_path``) or a D4RL -v2
HDF5 file (``dataset_path``), read with h5py the way ``d4rl.qlearning_dataset`` reads it.
Usage: python algorithms/por.py --config configs/por/local/hopper/medium.yaml [--field value ...]
       python algorithms/por.py --resume runs/<run name> [--max_timesteps N]
"""

import copy
import json
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Dict, Optional, Tuple

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


@dataclass
class TrainConfig:
    # data: exactly one of dataset_id / dataset_path
    dataset_id: Optional[str] = None  # Minari id, e.g. mujoco/hopper/medium-v0
    dataset_path: Optional[str] = None  # Minari dataset folder or D4RL -v2 .hdf5 file
    download: bool = False  # let Minari download dataset_id when it is not local
    env: Optional[str] = None  # evaluation env id; default: the dataset's (D4RL files: the -v4 env)
    ref_min_score: Optional[float] = None  # override the dataset's random-policy return
    ref_max_score: Optional[float] = None  # override the dataset's expert return
    normalize: bool = False  # normalise states with dataset mean/std (+1e-3); official MuJoCo runs: off
    normalize_reward: bool = True  # scale rewards by 1000 / (R_max - R_min) (official, always on)
    max_episode_steps: int = 1000  # reward-scale split: a trajectory ends every this many rows (official)
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
    # networks and optimisation
    hidden_dim: int = 256  # V, g and b width
    n_hidden: int = 2  # hidden layers in every network
    execute_hidden_dim: int = 1024  # pi(a|s,s') width (official main_por.py)
    value_lr: float = 1e-4  # Adam lr of V, constant (official)
    policy_lr: float = 1e-3  # Adam lr of g and pi, cosine decay to 0 over max_timesteps (script 1e-3)
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 0.005  # Polyak rate of the target V (the code's "beta")
    max_timesteps: int = 1_000_000  # gradient steps (after b's pre-training for por_q)
    # evaluation and run
    eval_freq: int = 5000
    n_episodes: int = 10
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    torch_compile: bool = False  # torch.compile the update (slower on a 2-core CPU, see README)
    torch_threads: Optional[int] = None  # torch CPU threads; None = torch's default
    output_dir: str = "runs"
    name: Optional[str] = None  # run name; default por-<dataset>-seed<seed>-<time>
    resume: Optional[str] = None  # run directory to continue (its config.yaml is the base config)
    progress_bar: bool = True
    wandb_mode: Optional[str] = None  # online | offline | disabled; None = $WANDB_MODE or offline
    wandb_project: str = "offline-rl"


class InputError(ValueError):
    """Bad config or data, reported before any training starts."""


def validate(cfg: TrainConfig) -> None:
    """Raise InputError naming the field and the fix for values that cannot work."""
    if (cfg.dataset_id is None) == (cfg.dataset_path is None):
        raise InputError("give exactly one of dataset_id (a Minari id) and dataset_path (a Minari "
                         f"folder or D4RL .hdf5); got dataset_id={cfg.dataset_id!r}, "
                         f"dataset_path={cfg.dataset_path!r}")
    for name in ("batch_size", "max_timesteps", "eval_freq", "n_episodes", "hidden_dim", "n_hidden",
                 "execute_hidden_dim", "max_episode_steps"):
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
    if cfg.wandb_mode not in (None, "online", "offline", "disabled"):
        raise InputError(f"wandb_mode must be online, offline or disabled, got {cfg.wandb_mode!r}")
    if cfg.device != "auto" and not cfg.device.startswith(("cpu", "cuda")):
        raise InputError(f"device must be auto, cpu or cuda[:i], got {cfg.device!r}")


# ----------------------------------------------------------------------------------------- data
# D4RL reference returns (d4rl/infos.py) and the Gymnasium env that replays each robot.
D4RL_ENVS = {"halfcheetah": ("HalfCheetah-v4", -280.178953, 12135.0),
             "hopper": ("Hopper-v4", -20.272305, 3234.3),
             "walker2d": ("Walker2d-v4", 1.629008, 4592.3)}


@dataclass
class Dataset:
    """Flat transitions (numpy, float32; N rows) plus what evaluation needs."""
    states: np.ndarray  # (N, obs_dim)
    actions: np.ndarray  # (N, act_dim)
    rewards: np.ndarray  # (N,)
    next_states: np.ndarray  # (N, obs_dim)
    dones: np.ndarray  # (N,) 1.0 only for true terminations
    env_id: Optional[str]
    ref_min: Optional[float]
    ref_max: Optional[float]
    name: str


def minari_transitions(episodes) -> Tuple[np.ndarray, ...]:
    """Episodes with observations (T+1, obs) and actions/rewards/terminations (T, .) -> transitions
    s = obs[:-1], s' = obs[1:], done = termination (a truncation never stops bootstrapping)."""
    cols = [[], [], [], [], []]
    for ep in episodes:
        obs = np.asarray(ep.observations, dtype=np.float32)
        for col, x in zip(cols, (obs[:-1], ep.actions, ep.rewards, obs[1:], ep.terminations)):
            col.append(np.asarray(x, dtype=np.float32))
    return tuple(np.concatenate(c) for c in cols)


def d4rl_transitions(path: Path) -> Tuple[np.ndarray, ...]:
    """A D4RL -v2 HDF5 file -> transitions as ``d4rl.qlearning_dataset`` makes them: pairs
    (obs[i], obs[i+1]) for i < N-1, dropping every i with ``timeouts[i]`` (the episode's last
    step), done = ``terminals[i]``. Raises InputError when a D4RL key is missing."""
    with h5py.File(path, "r") as f:
        missing = {"observations", "actions", "rewards", "terminals", "timeouts"} - set(f.keys())
        if missing:
            raise InputError(f"dataset_path {path} lacks D4RL keys {sorted(missing)} (a -v2 file has them)")
        obs, act, rew, term, timeout = (f[k][()] for k in
                                        ("observations", "actions", "rewards", "terminals", "timeouts"))
    keep = ~timeout[:-1].astype(bool)
    return tuple(x.astype(np.float32) for x in
                 (obs[:-1][keep], act[:-1][keep], rew[:-1][keep], obs[1:][keep], term[:-1][keep]))


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
    try:
        return minari.load_dataset(cfg.dataset_id, download=cfg.download)
    except FileNotFoundError:
        raise InputError(
            f"dataset_id {cfg.dataset_id!r} is not under {root}. Set download: true on a machine "
            f"with network, or run `minari download {cfg.dataset_id}` elsewhere and copy the "
            f"folder to {root}/{cfg.dataset_id}; or point dataset_path at a dataset folder "
            "(tools/make_dataset.py makes them).") from None
    except (ImportError, OSError) as e:  # no huggingface_hub, or no network (ConnectionError)
        raise InputError(
            f"download of dataset_id {cfg.dataset_id!r} failed ({type(e).__name__}: {e}). Without "
            f"network: run `minari download {cfg.dataset_id}` on a machine that has it (needs "
            f"`pip install 'minari[hf]'`) and copy the folder to {root}/{cfg.dataset_id}.") from None


def load_dataset(cfg: TrainConfig) -> Dataset:
    """Read transitions, the evaluation env id and the reference returns named by ``cfg``."""
    path = Path(cfg.dataset_path).expanduser() if cfg.dataset_path is not None else None
    if path is not None and not path.exists():
        raise InputError(f"dataset_path {path} does not exist. Shipped Minari data lives in "
                         "datasets/local/hopper/<level>-v0; D4RL -v2 files are <name>.hdf5 from "
                         "the D4RL download links (default folder ~/.d4rl/datasets).")
    if path is not None and path.suffix in (".hdf5", ".h5"):
        robot = path.name.split("-")[0].lower()
        env_id, ref_min, ref_max = D4RL_ENVS.get(robot, (None, None, None))
        if cfg.env is None and env_id is None:
            raise InputError(f"cannot tell the robot from the file name {path.name} (expected "
                             f"{'|'.join(D4RL_ENVS)}-<level>-v2.hdf5); set env, ref_min_score, ref_max_score")
        return Dataset(*d4rl_transitions(path), env_id, ref_min, ref_max, path.stem)
    ds = load_minari(cfg)
    meta = ds.storage.metadata
    env_spec = meta.get("eval_env_spec") or meta.get("env_spec")
    env_id = json.loads(env_spec)["id"] if isinstance(env_spec, str) else None
    name = meta.get("dataset_id", str(path)).replace("/", "-")
    return Dataset(*minari_transitions(ds.iterate_episodes()), env_id,
                   meta.get("ref_min_score"), meta.get("ref_max_score"), name)


def return_range(data: Dataset, max_episode_steps: int) -> Tuple[float, float]:
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


class ReplayBuffer:
    """The dataset as tensors on the training device; ``sample`` draws a uniform batch there.
    Rewards optionally scaled by 1000 / (R_max - R_min) (``return_range``); actions are not
    clipped (official POR)."""

    def __init__(self, data: Dataset, normalize: bool, device: torch.device, normalize_reward: bool = False,
                 max_episode_steps: int = 1000):
        self.mean = data.states.mean(0) if normalize else np.zeros(data.states.shape[1], np.float32)
        self.std = data.states.std(0) + 1e-3 if normalize else np.ones(data.states.shape[1], np.float32)
        to = lambda x: torch.as_tensor(x, device=device)  # noqa: E731
        self.states = to((data.states - self.mean) / self.std)
        self.next_states = to((data.next_states - self.mean) / self.std)
        self.reward_scale = 1.0
        if normalize_reward:
            r_min, r_max = return_range(data, max_episode_steps)
            self.reward_scale = 1000.0 / max(r_max - r_min, 1e-6)
        self.actions = to(data.actions)
        self.rewards, self.dones = to(data.rewards * self.reward_scale), to(data.dones)

    def sample(self, batch_size: int) -> Tuple[torch.Tensor, ...]:
        """Returns (s (B, obs), a (B, act), r (B,), s' (B, obs), done (B,))."""
        idx = torch.randint(len(self.rewards), (batch_size,), device=self.rewards.device)
        return (self.states[idx], self.actions[idx], self.rewards[idx], self.next_states[idx],
                self.dones[idx])


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
        """x (..., in) -> Normal with batch shape (..., out); sum log_prob over the last dim."""
        return torch.distributions.Normal(self.mu(x), self.log_std.clamp(*self.log_std_bounds).exp())


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


class POR:
    """Networks, target V, optimisers (g and pi with cosine schedules) and one POR step."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: TrainConfig, device: torch.device):
        self.cfg = cfg
        self.value = TwinV(obs_dim, cfg).to(device)
        self.value_target = copy.deepcopy(self.value).requires_grad_(False)
        self.guide = GaussianPolicy(obs_dim, obs_dim, cfg.hidden_dim, cfg).to(device)
        self.execute = GaussianPolicy(2 * obs_dim, act_dim, cfg.execute_hidden_dim, cfg).to(device)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.value_lr, fused=True)
        self.guide_opt = torch.optim.Adam(self.guide.parameters(), lr=cfg.policy_lr, fused=True)
        self.guide_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.guide_opt, cfg.max_timesteps)
        self.execute_opt = torch.optim.Adam(self.execute.parameters(), lr=cfg.policy_lr, fused=True)
        self.execute_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.execute_opt, cfg.max_timesteps)
        self.behavior_guide = None  # b(s'|s), only for the official por_q
        if cfg.guide == "por_q" and cfg.por_q_objective == "official":
            self.behavior_guide = GaussianPolicy(obs_dim, obs_dim, cfg.hidden_dim, cfg).to(device)
            self.behavior_opt = torch.optim.Adam(self.behavior_guide.parameters(), cfg.pretrain_lr, fused=True)

    def pretrain_update(self, s, a, r, s_next, done) -> Dict[str, torch.Tensor]:
        """One likelihood step of the behaviour guide b(s'|s) (por_q). Returns the detached loss."""
        loss = behavior_guide_loss(self.behavior_guide(s).log_prob(s_next).sum(-1))
        self.behavior_opt.zero_grad(set_to_none=True)
        loss.backward()
        self.behavior_opt.step()
        return {"behavior_guide_loss": loss.detach()}

    def update(self, s, a, r, s_next, done) -> Dict[str, torch.Tensor]:
        """One POR step on a batch (shapes as ``ReplayBuffer.sample``): V -> Polyak -> g -> pi.
        Returns detached losses (no host sync)."""
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
    def act(self, s: torch.Tensor) -> torch.Tensor:
        """POR eq. (7): s (..., obs) -> mean of pi(. | s, mean of g(.|s)) clipped to [-1, 1] (..., act)."""
        return self.execute(torch.cat([s, self.guide(s).mean], -1)).mean.clamp(-1, 1)

    def state_dict(self) -> dict:
        keys = ["value", "value_target", "guide", "execute", "value_opt", "guide_opt", "guide_sched",
                "execute_opt", "execute_sched"]
        keys += ["behavior_guide", "behavior_opt"] if self.behavior_guide is not None else []
        return {k: getattr(self, k).state_dict() for k in keys}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            getattr(self, k).load_state_dict(v)


# ----------------------------------------------------------------------------------- evaluation
def evaluate(env: gym.vector.VectorEnv, agent: POR, buffer: ReplayBuffer, seed: int,
             device: torch.device) -> np.ndarray:
    """Undiscounted returns (n_envs,) of ``agent.act`` (eq. 7), one episode per sub-env of ``env``,
    all stepped together (one batched forward per step). Sub-env i resets with seed ``seed + i``,
    so every evaluation sees the same start states; a finished sub-env is auto-reset by the vector
    env and its later rewards are not counted."""
    mean, std = (torch.as_tensor(x, device=device) for x in (buffer.mean, buffer.std))
    returns, running = np.zeros(env.num_envs), np.ones(env.num_envs, dtype=bool)
    obs, _ = env.reset(seed=seed)  # sub-env i gets seed + i
    while running.any():
        s = (torch.as_tensor(obs, dtype=torch.float32, device=device) - mean) / std
        obs, reward, terminated, truncated, _ = env.step(agent.act(s).cpu().numpy())
        returns += reward * running
        running &= ~(terminated | truncated)
    return returns


def normalized_score(returns: np.ndarray, ref_min: float, ref_max: float) -> np.ndarray:
    """D4RL normalised score, 0 = random policy, 100 = expert: 100 * (R - ref_min) / (ref_max - ref_min)."""
    return 100 * (np.asarray(returns) - ref_min) / (ref_max - ref_min)


# ---------------------------------------------------------------------------------------- train
def save_checkpoint(path: Path, agent: POR, step: int, elapsed: float, buffer: ReplayBuffer,
                    pretrain_step: int = 0) -> None:
    """Everything a resumed run needs, written atomically (tmp file + rename). ``step`` counts
    POR steps, ``pretrain_step`` the behaviour guide's pre-training steps (por_q)."""
    state = {"agent": agent.state_dict(), "step": step, "pretrain_step": pretrain_step, "elapsed_s": elapsed,
             "obs_mean": buffer.mean, "obs_std": buffer.std,
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                     "python": random.getstate(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, agent: POR) -> Tuple[int, float, int]:
    """Restores ``agent`` and the RNGs; returns (step, elapsed_s, pretrain_step)."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    agent.load_state_dict(state["agent"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"], state["elapsed_s"], state["pretrain_step"]


def pretrain(cfg: TrainConfig, agent: POR, buffer: ReplayBuffer, pre_step: int, elapsed: float,
             ckpt_path: Path) -> Tuple[int, float]:
    """por_q: fit b(s'|s) by likelihood until ``guide_pretrain_steps`` (null = max_timesteps),
    checkpointing every ``eval_freq`` steps (no evaluation: g and pi are untrained). Returns
    (pretrain_step, elapsed_s). Raises FloatingPointError on a non-finite loss."""
    total = cfg.max_timesteps if cfg.guide_pretrain_steps is None else cfg.guide_pretrain_steps
    bar = tqdm(total=total, initial=pre_step, disable=not cfg.progress_bar, unit="upd",
               dynamic_ncols=True, desc="pretrain b")
    loss_sum, n_sum, t_last = 0.0, 0, time.time()
    while pre_step < total:
        loss_sum = loss_sum + agent.pretrain_update(*buffer.sample(cfg.batch_size))["behavior_guide_loss"]
        n_sum, pre_step = n_sum + 1, pre_step + 1
        bar.update(1)
        if pre_step % cfg.eval_freq and pre_step != total:
            continue
        loss = loss_sum.item() / n_sum
        if not math.isfinite(loss):
            bar.close()
            raise FloatingPointError(f"non-finite behavior_guide_loss between pre-training steps "
                                     f"{pre_step - n_sum} and {pre_step}; the last good checkpoint "
                                     f"({ckpt_path}) is kept.")
        now = time.time()
        elapsed, t_last = elapsed + now - t_last, now
        save_checkpoint(ckpt_path, agent, 0, elapsed, buffer, pre_step)
        bar.write(f"pre-training step {pre_step}: behavior_guide_loss {loss:.3g}")
        loss_sum, n_sum = 0.0, 0
    bar.close()
    return pre_step, elapsed


def train(cfg: TrainConfig) -> Path:
    """Train POR as ``cfg`` says; returns the run directory. Raises InputError on bad input
    (before training) and FloatingPointError on a non-finite loss (last good checkpoint kept)."""
    validate(cfg)
    data = load_dataset(cfg)
    env_id = cfg.env or data.env_id
    if env_id is None:
        raise InputError(f"the dataset {data.name} names no env; set env (e.g. Hopper-v5)")
    env = gym.make_vec(env_id, num_envs=cfg.n_episodes, vectorization_mode="sync")
    obs_dim, act_dim = data.states.shape[1], data.actions.shape[1]
    if env.single_observation_space.shape != (obs_dim,) or env.single_action_space.shape != (act_dim,):
        raise InputError(f"dataset {data.name} has observations ({obs_dim},) and actions ({act_dim},) "
                         f"but env {env_id} has {env.single_observation_space.shape} and "
                         f"{env.single_action_space.shape}; set env to the dataset's env")
    ref_min = cfg.ref_min_score if cfg.ref_min_score is not None else data.ref_min
    ref_max = cfg.ref_max_score if cfg.ref_max_score is not None else data.ref_max
    has_refs = ref_min is not None and ref_max is not None

    device = torch.device("cuda" if cfg.device == "auto" and torch.cuda.is_available()
                          else "cpu" if cfg.device == "auto" else cfg.device)
    if cfg.torch_threads:
        torch.set_num_threads(cfg.torch_threads)
    if cfg.resume:
        run_dir = Path(cfg.resume)
    else:
        name = cfg.name or f"por-{data.name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(cfg.output_dir) / name
        if (run_dir / "checkpoint.pt").exists():
            raise InputError(f"{run_dir} already holds a run; pass resume: {run_dir} or another name")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**asdict(cfg), "resume": None}, sort_keys=False))

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    buffer = ReplayBuffer(data, cfg.normalize, device, cfg.normalize_reward, cfg.max_episode_steps)
    agent = POR(obs_dim, act_dim, cfg, device)
    update = torch.compile(agent.update) if cfg.torch_compile else agent.update
    step, elapsed, pre_step = 0, 0.0, 0
    metrics_path, ckpt_path = run_dir / "metrics.jsonl", run_dir / "checkpoint.pt"
    if cfg.resume:
        if not ckpt_path.exists():
            raise InputError(f"resume: {run_dir} has no checkpoint.pt to continue from")
        step, elapsed, pre_step = load_checkpoint(ckpt_path, agent)
        kept = [l for l in metrics_path.read_text().splitlines() if json.loads(l)["step"] <= step] \
            if metrics_path.exists() else []
        metrics_path.write_text("".join(l + "\n" for l in kept))  # drop evals after the checkpoint
    print(f"POR ({cfg.guide}) on {data.name}: {len(data.rewards)} transitions, env {env_id}, device "
          f"{device}, run dir {run_dir}" + (f", resuming at step {step} (b pre-trained {pre_step} steps)"
                                           if step or pre_step else ""))
    if not has_refs:
        print(f"note: {data.name} carries no reference returns (ref_min_score/ref_max_score), so "
              "normalized_score is null and raw returns are logged; set both fields to normalise.")
    mode = cfg.wandb_mode or os.environ.get("WANDB_MODE", "offline")
    try:
        run = wandb.init(project=cfg.wandb_project, name=run_dir.name, id=run_dir.name,
                         resume="allow", dir=run_dir, mode=mode, config=asdict(cfg),
                         settings=wandb.Settings(console="off", silent=True))
    except Exception as e:  # e.g. online mode without an API key
        raise InputError(f"wandb_mode={mode}: {e}. Run `wandb login`, or set wandb_mode: offline") from None

    if agent.behavior_guide is not None and step == 0:  # por_q: b first, as the official --pretrain
        try:
            pre_step, elapsed = pretrain(cfg, agent, buffer, pre_step, elapsed, ckpt_path)
        except FloatingPointError:
            run.finish(exit_code=1)
            raise
    sums, n_sum, t_last = None, 0, time.time()
    bar = tqdm(total=cfg.max_timesteps, initial=step, disable=not cfg.progress_bar, unit="upd",
               dynamic_ncols=True)
    while step < cfg.max_timesteps:
        losses = update(*buffer.sample(cfg.batch_size))
        sums = losses if sums is None else {k: sums[k] + v for k, v in losses.items()}
        n_sum += 1
        step += 1
        bar.update(1)
        if step % cfg.eval_freq and step != cfg.max_timesteps:
            continue
        mean_losses = {k: v.item() / n_sum for k, v in sums.items()}
        bad = [k for k, v in mean_losses.items() if not math.isfinite(v)]
        if bad:
            bar.close()
            run.finish(exit_code=1)
            raise FloatingPointError(
                f"non-finite {', '.join(bad)} between steps {step - n_sum} and {step}; training "
                f"stopped. The last good checkpoint ({ckpt_path}, step {step - n_sum}) is kept.")
        now = time.time()
        elapsed, rate, t_last = elapsed + now - t_last, n_sum / (now - t_last), now
        returns = evaluate(env, agent, buffer, cfg.seed + 100, device)
        scores = normalized_score(returns, ref_min, ref_max) if has_refs else None
        record = {"step": step, "return_mean": float(returns.mean()), "return_std": float(returns.std()),
                  "normalized_score": float(scores.mean()) if has_refs else None,
                  "normalized_score_std": float(scores.std()) if has_refs else None,
                  "elapsed_s": round(elapsed, 2), "updates_per_s": round(rate, 1), **mean_losses}
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        save_checkpoint(ckpt_path, agent, step, elapsed, buffer, pre_step)
        run.log({k: v for k, v in record.items() if v is not None}, step=step)
        score = f"score {record['normalized_score']:.1f}" if has_refs else f"return {returns.mean():.1f}"
        bar.set_postfix_str(score)
        bar.write(f"step {step}: return {returns.mean():.1f} ± {returns.std():.1f}"
                  + (f", normalized {scores.mean():.1f} ± {scores.std():.1f}" if has_refs else "")
                  + f", value {mean_losses['value_loss']:.3g}, guide {mean_losses['guide_loss']:.3g}, "
                  f"execute {mean_losses['execute_loss']:.3g}, {rate:.0f} upd/s")
        sums, n_sum, t_last = None, 0, time.time()
    bar.close()
    run.finish()
    return run_dir


def parse_config(argv=None) -> TrainConfig:
    """CLI -> TrainConfig. ``--config`` (or pyrallis' ``--config_path``) loads a YAML; with
    ``--resume <run dir>`` the run's saved config.yaml is the base. Other flags override fields."""
    argv = list(sys.argv[1:] if argv is None else argv)
    argv = [("--config_path" + a[len("--config"):]) if a.split("=")[0] == "--config" else a for a in argv]
    given = {}  # values of --config_path / --resume in argv
    for i, a in enumerate(argv):
        key, _, val = a.partition("=")
        if key in ("--config_path", "--resume"):
            given[key] = val or (argv[i + 1] if i + 1 < len(argv) else "")
    resume_base = str(Path(given["--resume"]) / "config.yaml") if given.get("--resume") else None
    config_path = given.get("--config_path") or resume_base
    bools = {f.name for f in fields(TrainConfig) if f.type in ("bool", bool)}
    raw = yaml.safe_load(Path(config_path).read_text()) if config_path and Path(config_path).exists() else {}
    pairs = [(k, v) for k, v in (raw or {}).items()] + [
        (a[2:], argv[i + 1]) for i, a in enumerate(argv[:-1]) if a.startswith("--") and "=" not in a]
    for key, val in pairs:  # pyrallis reads any unknown string as True; refuse it instead
        if key in bools and not isinstance(val, bool) and str(val).lower() not in ("true", "false", "1", "0"):
            raise InputError(f"{key} must be true or false, got {val!r}")
    try:
        return pyrallis.parse(config_class=TrainConfig, args=argv,
                              config_path=None if "--config_path" in given else resume_base)
    except pyrallis.utils.ParsingError as e:
        raise InputError(f"config: {e}") from None
    except Exception as e:  # unknown YAML keys
        if "do not belong" in str(e):
            raise InputError(f"config: {e}; valid fields: {', '.join(f.name for f in fields(TrainConfig))}") from None
        raise


if __name__ == "__main__":
    try:
        train(parse_config())
    except (InputError, FloatingPointError) as err:
        sys.exit(f"error: {err}")
