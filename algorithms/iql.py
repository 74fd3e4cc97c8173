"""IQL: implicit Q-learning, in one file.

Paper: Kostrikov, Nair, Levine. "Offline Reinforcement Learning with Implicit Q-Learning", ICLR 2022.
Defaults follow the official JAX code (ikostrikov/implicit_q_learning); see
shared/reference/algorithms.md sec. 2. With qhat = min_i Qbar_i(s, a) from the target critics:
  V:     L_V = mean_B[|expectile - 1(qhat - V(s) < 0)| * (qhat - V(s))^2]        (paper eq. 5)
  actor: L_pi = -mean_B[min(exp(beta * (qhat - V(s))), weight_max) * log pi(a|s)] (paper eq. 7)
  Q:     y = r + discount * (1 - done) * V(s'); L_Q = sum_i mean_B (Q_i(s, a) - y)^2 (paper eq. 6)
  order V -> actor -> Q (each using the V just updated), then Polyak(tau) on the target critics.
Networks: 2x256 ReLU MLPs, orthogonal init (gain sqrt 2, zero bias); twin Q as one batched
ensemble; actor: Gaussian on tanh(mean) (not a squashed distribution) with a state-independent
log-std (init 0) clipped to [-5, 2]. Adam 3e-4; the actor's learning rate decays to 0 on a cosine
over max_timesteps. expectile 0.7, beta 3.0, weight cap 100, tau 0.005, batch 256, discount 0.99.
Data: dataset actions clipped to +-(1 - 1e-5); rewards scaled by 1000 / (R_max - R_min) over the
dataset's trajectories (a new one starts after a terminal or where s'[i] != s[i+1], partial ones
counted), no state normalisation. Evaluation: tanh(mean), clipped.
CORL's offline/iql.py differs in six ways, each a config field here (defaults = official):
  1. normalize: true (official false)   2. normalize_reward: false in most configs (official true)
  3. log_std_min -20 (official -5)      4. update_order "corl": V -> Q -> actor, with V(s') and the
     actor's advantage taken from V before its update (official "official": V -> actor -> Q)
  5. per-dataset overrides: hopper-medium(-replay) use actor_type "deterministic" (advantage-
     weighted MSE), normalize_reward true, tau 0.001; hopper-medium-expert beta 6, expectile 0.5
  6. orthogonal_init false (PyTorch default init). (CORL sums the Normal log-prob over action
     dims, which equals the official diagonal Gaussian: no difference.)

Data: a Minari dataset (``dataset_id``, or a dataset folder in ``dataset_path``) or a D4RL -v2
HDF5 file (``dataset_path``), read with h5py the way ``d4rl.qlearning_dataset`` reads it.
Usage: python algorithms/iql.py --config configs/iql/local/hopper/medium.yaml [--field value ...]
       python algorithms/iql.py --resume runs/<run name> [--max_timesteps N]
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
    normalize: bool = False  # normalise states with dataset mean/std (+1e-3); official IQL: off
    normalize_reward: bool = True  # scale rewards by 1000 / (R_max - R_min) (official IQL)
    # IQL (official defaults)
    expectile: float = 0.7  # tau of the expectile regression for V
    beta: float = 3.0  # inverse temperature of the advantage weights
    weight_max: float = 100.0  # cap of the advantage weights
    actor_type: str = "gaussian"  # gaussian (official) | deterministic (CORL hopper-medium*)
    log_std_min: float = -5.0
    log_std_max: float = 2.0
    update_order: str = "official"  # official: V -> actor -> Q | corl: V -> Q -> actor, pre-update V
    orthogonal_init: bool = True  # official: orthogonal (gain sqrt 2) kernels, zero bias
    # networks and optimisation
    hidden_dim: int = 256
    n_hidden: int = 2  # hidden layers in every network
    actor_lr: float = 3e-4  # decays to 0 on a cosine over max_timesteps
    critic_lr: float = 3e-4  # Q and V
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 0.005  # Polyak rate of the target critics
    max_timesteps: int = 1_000_000  # gradient steps
    # evaluation and run
    eval_freq: int = 5000
    n_episodes: int = 10
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    torch_compile: bool = False  # torch.compile the update (slower on a 2-core CPU, see README)
    torch_threads: Optional[int] = None  # torch CPU threads; None = torch's default
    output_dir: str = "runs"
    name: Optional[str] = None  # run name; default iql-<dataset>-seed<seed>-<time>
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
    for name in ("batch_size", "max_timesteps", "eval_freq", "n_episodes", "hidden_dim", "n_hidden"):
        if getattr(cfg, name) <= 0:
            raise InputError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    if not 0 < cfg.tau <= 1 or not 0 <= cfg.discount <= 1:
        raise InputError(f"tau must be in (0, 1] and discount in [0, 1]; got {cfg.tau}, {cfg.discount}")
    if not 0 < cfg.expectile < 1:
        raise InputError(f"expectile must be in (0, 1), got {cfg.expectile}")
    if cfg.actor_type not in ("gaussian", "deterministic"):
        raise InputError(f"actor_type must be gaussian or deterministic, got {cfg.actor_type!r}")
    if cfg.update_order not in ("official", "corl"):
        raise InputError(f"update_order must be official or corl, got {cfg.update_order!r}")
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


def return_range(data: Dataset) -> Tuple[float, float]:
    """(min, max) undiscounted trajectory return, the official IQL split: a trajectory ends after a
    terminal or where next_states[i] != states[i + 1]; partial trajectories are counted."""
    ends = data.dones.astype(bool)
    ends[:-1] |= np.any(data.next_states[:-1] != data.states[1:], axis=1)
    ends[-1] = True
    returns = np.add.reduceat(data.rewards, np.r_[0, np.flatnonzero(ends[:-1]) + 1])
    return float(returns.min()), float(returns.max())


class ReplayBuffer:
    """The dataset as tensors on the training device; ``sample`` draws a uniform batch there.
    Actions are clipped to +-(1 - 1e-5) (official IQL); rewards optionally scaled by
    1000 / (R_max - R_min) (``return_range``)."""

    def __init__(self, data: Dataset, normalize: bool, device: torch.device, normalize_reward: bool = False):
        self.mean = data.states.mean(0) if normalize else np.zeros(data.states.shape[1], np.float32)
        self.std = data.states.std(0) + 1e-3 if normalize else np.ones(data.states.shape[1], np.float32)
        to = lambda x: torch.as_tensor(x, device=device)  # noqa: E731
        self.states = to((data.states - self.mean) / self.std)
        self.next_states = to((data.next_states - self.mean) / self.std)
        self.reward_scale = 1.0
        if normalize_reward:
            r_min, r_max = return_range(data)
            self.reward_scale = 1000.0 / max(r_max - r_min, 1e-6)
        self.actions = to(np.clip(data.actions, -1 + 1e-5, 1 - 1e-5))
        self.rewards, self.dones = to(data.rewards * self.reward_scale), to(data.dones)

    def sample(self, batch_size: int) -> Tuple[torch.Tensor, ...]:
        """Returns (s (B, obs), a (B, act), r (B,), s' (B, obs), done (B,))."""
        idx = torch.randint(len(self.rewards), (batch_size,), device=self.rewards.device)
        return (self.states[idx], self.actions[idx], self.rewards[idx], self.next_states[idx],
                self.dones[idx])


# ------------------------------------------------------------------------------------- networks
def mlp(in_dim: int, out_dim: int, hidden: int, n_hidden: int, orthogonal: bool = False) -> nn.Sequential:
    layers, d = [], in_dim
    for _ in range(n_hidden):
        layers += [nn.Linear(d, hidden), nn.ReLU()]
        d = hidden
    net = nn.Sequential(*layers, nn.Linear(d, out_dim))
    for layer in net if orthogonal else []:  # official IQL: orthogonal(sqrt 2) kernels, zero bias
        if isinstance(layer, nn.Linear):
            nn.init.orthogonal_(layer.weight, math.sqrt(2))
            nn.init.zeros_(layer.bias)
    return net


class Actor(nn.Module):
    """pi(a|s): with actor_type "gaussian" a diagonal Gaussian N(tanh(mu(s)), sigma^2) whose
    log sigma is a state-independent parameter (init 0) clamped to [log_std_min, log_std_max]
    (official IQL); with "deterministic" the point tanh(mu(s)) (CORL's hopper-medium setting)."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: TrainConfig):
        super().__init__()
        self.mu = mlp(obs_dim, act_dim, cfg.hidden_dim, cfg.n_hidden, cfg.orthogonal_init)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        self.log_std_bounds = (cfg.log_std_min, cfg.log_std_max)
        self.deterministic = cfg.actor_type == "deterministic"

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        """s (..., obs) -> the evaluation action tanh(mu(s)) (..., act)."""
        return torch.tanh(self.mu(s))

    def bc_term(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Per-sample imitation loss (B,): -log pi(a|s) (gaussian) or sum_dims (pi(s) - a)^2."""
        mean = self(s)
        if self.deterministic:
            return ((mean - a) ** 2).sum(-1)
        std = self.log_std.clamp(*self.log_std_bounds).exp()
        return -torch.distributions.Normal(mean, std).log_prob(a).sum(-1)


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
    """Twin critics Q_1, Q_2 (each (s, a) -> hidden x n_hidden -> 1, ReLU) as one ensemble."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: TrainConfig, n: int = 2):
        super().__init__()
        dims = [obs_dim + act_dim] + [cfg.hidden_dim] * cfg.n_hidden
        layers = []
        for d_in, d_out in zip(dims[:-1], dims[1:]):
            layers += [VectorizedLinear(d_in, d_out, n), nn.ReLU()]
        self.net = nn.Sequential(*layers, VectorizedLinear(dims[-1], 1, n))
        self.n = n

    def forward(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """s (B, obs), a (..., B, act) -> Q values (n, ..., B)."""
        x = torch.cat([s.expand(*a.shape[:-1], s.shape[-1]), a], -1)
        return self.net(x.reshape(1, -1, x.shape[-1]).expand(self.n, -1, -1)).view(self.n, *a.shape[:-1])


# ------------------------------------------------------------------------------------ the update
def critic_loss(q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """IQL eq. (6) for both critics: sum_i mean_B (Q_i(s,a) - y)^2. q (n, B), y (B,) -> scalar."""
    return ((q - y) ** 2).mean(-1).sum()


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """IQL eq. (5): mean |expectile - 1(diff < 0)| * diff^2, diff = qhat - V(s) (B,) -> scalar."""
    weight = torch.where(diff > 0, expectile, 1 - expectile)
    return (weight * diff ** 2).mean()


def awr_actor_loss(bc_term: torch.Tensor, adv: torch.Tensor, beta: float, weight_max: float) -> torch.Tensor:
    """IQL eq. (7): mean_B[min(exp(beta * A), weight_max) * bc_term], the weights detached;
    bc_term = -log pi(a|s) (or the squared error of a deterministic actor). (B,), (B,) -> scalar."""
    weights = torch.exp(beta * adv).clamp(max=weight_max).detach()
    return (weights * bc_term).mean()


class IQL:
    """Networks, target critics, optimisers (actor with its cosine schedule) and one IQL step."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: TrainConfig, device: torch.device):
        self.cfg = cfg
        self.actor = Actor(obs_dim, act_dim, cfg).to(device)
        self.critic = TwinQ(obs_dim, act_dim, cfg).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.value = mlp(obs_dim, 1, cfg.hidden_dim, cfg.n_hidden, cfg.orthogonal_init).to(device)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, fused=True)
        self.actor_sched = torch.optim.lr_scheduler.CosineAnnealingLR(self.actor_opt, cfg.max_timesteps)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, fused=True)
        self.value_opt = torch.optim.Adam(self.value.parameters(), lr=cfg.critic_lr, fused=True)

    def update(self, s, a, r, s_next, done) -> Dict[str, torch.Tensor]:
        """One IQL step on a batch (shapes as ``ReplayBuffer.sample``); order per ``update_order``.
        Returns detached losses (no host sync)."""
        cfg = self.cfg
        with torch.no_grad():
            q_hat = self.critic_target(s, a).min(0).values
            v_next_before = self.value(s_next)[..., 0] if cfg.update_order == "corl" else None
        v = self.value(s)[..., 0]
        loss_v = expectile_loss(q_hat - v, cfg.expectile)
        adv_before = (q_hat - v).detach()
        self.value_opt.zero_grad(set_to_none=True)
        loss_v.backward()
        self.value_opt.step()

        if cfg.update_order == "official":  # V -> actor -> Q, each with the V just updated
            with torch.no_grad():
                adv, v_next = q_hat - self.value(s)[..., 0], self.value(s_next)[..., 0]
            loss_pi = self._actor_step(s, a, adv)
            loss_q, q = self._critic_step(s, a, r, done, v_next)
        else:  # CORL: V -> Q -> actor, V(s') and the advantage from V before its update
            loss_q, q = self._critic_step(s, a, r, done, v_next_before)
            loss_pi = self._actor_step(s, a, adv_before)
        with torch.no_grad():
            torch._foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()), cfg.tau)
        return {"value_loss": loss_v.detach(), "critic_loss": loss_q, "actor_loss": loss_pi,
                "q_mean": q.mean(), "v_mean": v.detach().mean()}

    def _critic_step(self, s, a, r, done, v_next):
        """IQL eq. (6): y = r + discount * (1 - done) * V(s')."""
        y = r + self.cfg.discount * (1 - done) * v_next
        q = self.critic(s, a)
        loss_q = critic_loss(q, y)
        self.critic_opt.zero_grad(set_to_none=True)
        loss_q.backward()
        self.critic_opt.step()
        return loss_q.detach(), q.detach()

    def _actor_step(self, s, a, adv):
        loss_pi = awr_actor_loss(self.actor.bc_term(s, a), adv, self.cfg.beta, self.cfg.weight_max)
        self.actor_opt.zero_grad(set_to_none=True)
        loss_pi.backward()
        self.actor_opt.step()
        self.actor_sched.step()
        return loss_pi.detach()

    def state_dict(self) -> dict:
        return {k: getattr(self, k).state_dict() for k in ("actor", "critic", "critic_target", "value",
                                                           "actor_opt", "actor_sched", "critic_opt", "value_opt")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            getattr(self, k).load_state_dict(v)


# ----------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(env: gym.vector.VectorEnv, actor: Actor, buffer: ReplayBuffer, seed: int,
             device: torch.device) -> np.ndarray:
    """Undiscounted returns (n_envs,) of tanh(mean) clipped to the action box, one episode per
    sub-env of ``env``, all stepped together (one batched forward per step). Sub-env i resets
    with seed ``seed + i``, so every evaluation sees the same start states; a finished sub-env
    is auto-reset by the vector env and its later rewards are not counted."""
    actor.eval()
    mean, std = (torch.as_tensor(x, device=device) for x in (buffer.mean, buffer.std))
    returns, running = np.zeros(env.num_envs), np.ones(env.num_envs, dtype=bool)
    obs, _ = env.reset(seed=seed)  # sub-env i gets seed + i
    while running.any():
        s = (torch.as_tensor(obs, dtype=torch.float32, device=device) - mean) / std
        action = actor(s).clamp(-1, 1).cpu().numpy()
        obs, reward, terminated, truncated, _ = env.step(action)
        returns += reward * running
        running &= ~(terminated | truncated)
    actor.train()
    return returns


def normalized_score(returns: np.ndarray, ref_min: float, ref_max: float) -> np.ndarray:
    """D4RL normalised score, 0 = random policy, 100 = expert: 100 * (R - ref_min) / (ref_max - ref_min)."""
    return 100 * (np.asarray(returns) - ref_min) / (ref_max - ref_min)


# ---------------------------------------------------------------------------------------- train
def save_checkpoint(path: Path, agent: IQL, step: int, elapsed: float, buffer: ReplayBuffer) -> None:
    """Everything a resumed run needs, written atomically (tmp file + rename)."""
    state = {"agent": agent.state_dict(), "step": step, "elapsed_s": elapsed,
             "obs_mean": buffer.mean, "obs_std": buffer.std,
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                     "python": random.getstate(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, agent: IQL) -> Tuple[int, float]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    agent.load_state_dict(state["agent"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"], state["elapsed_s"]


def train(cfg: TrainConfig) -> Path:
    """Train IQL as ``cfg`` says; returns the run directory. Raises InputError on bad input
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
        name = cfg.name or f"iql-{data.name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(cfg.output_dir) / name
        if (run_dir / "checkpoint.pt").exists():
            raise InputError(f"{run_dir} already holds a run; pass resume: {run_dir} or another name")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**asdict(cfg), "resume": None}, sort_keys=False))

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    buffer = ReplayBuffer(data, cfg.normalize, device, cfg.normalize_reward)
    agent = IQL(obs_dim, act_dim, cfg, device)
    update = torch.compile(agent.update) if cfg.torch_compile else agent.update
    step, elapsed = 0, 0.0
    metrics_path, ckpt_path = run_dir / "metrics.jsonl", run_dir / "checkpoint.pt"
    if cfg.resume:
        if not ckpt_path.exists():
            raise InputError(f"resume: {run_dir} has no checkpoint.pt to continue from")
        step, elapsed = load_checkpoint(ckpt_path, agent)
        kept = [l for l in metrics_path.read_text().splitlines() if json.loads(l)["step"] <= step]
        metrics_path.write_text("".join(l + "\n" for l in kept))  # drop evals after the checkpoint
    print(f"IQL on {data.name}: {len(data.rewards)} transitions, env {env_id}, device {device}, "
          f"run dir {run_dir}" + (f", resuming at step {step}" if step else ""))
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
        returns = evaluate(env, agent.actor, buffer, cfg.seed + 100, device)
        scores = normalized_score(returns, ref_min, ref_max) if has_refs else None
        record = {"step": step, "return_mean": float(returns.mean()), "return_std": float(returns.std()),
                  "normalized_score": float(scores.mean()) if has_refs else None,
                  "normalized_score_std": float(scores.std()) if has_refs else None,
                  "elapsed_s": round(elapsed, 2), "updates_per_s": round(rate, 1), **mean_losses}
        with metrics_path.open("a") as f:
            f.write(json.dumps(record) + "\n")
        save_checkpoint(ckpt_path, agent, step, elapsed, buffer)
        run.log({k: v for k, v in record.items() if v is not None}, step=step)
        score = f"score {record['normalized_score']:.1f}" if has_refs else f"return {returns.mean():.1f}"
        bar.set_postfix_str(score)
        bar.write(f"step {step}: return {returns.mean():.1f} ± {returns.std():.1f}"
                  + (f", normalized {scores.mean():.1f} ± {scores.std():.1f}" if has_refs else "")
                  + f", value {mean_losses['value_loss']:.3g}, critic {mean_losses['critic_loss']:.3g}, "
                  f"actor {mean_losses['actor_loss']:.3g}, {rate:.0f} upd/s")
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
