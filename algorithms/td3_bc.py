"""TD3+BC: TD3 with a behaviour-cloning term in the actor loss, in one file.

Paper: Fujimoto & Gu. "A Minimalist Approach to Offline Reinforcement Learning", NeurIPS 2021.
Defaults follow the official code (sfujim/TD3_BC, mirrored by CORL's td3_bc.py); see
shared/reference/algorithms.md sec. 1:
  critic (every step): a' = clip(pibar(s') + clip(eps, -noise_clip, noise_clip), -1, 1),
         eps ~ N(0, policy_noise^2); y = r + discount * (1 - done) * min_i Qbar_i(s', a');
         L_Q = sum_i mean_B (Q_i(s, a) - y)^2
  actor (every policy_freq steps), paper eq. (3) with lambda = alpha / mean_B |Q_1(s, pi(s))|
         (detached): L_pi = -lambda * mean_B Q_1(s, pi(s)) + mean_{B,dims} (pi(s) - a)^2;
         then Polyak(tau) on the actor and critic targets (targets move only on actor steps).
Networks: actor 2x256 ReLU, tanh output; twin critics 2x256 ReLU (one batched ensemble).
Adam 3e-4, batch 256, discount 0.99, tau 0.005, alpha 2.5 for every dataset, states normalised,
raw rewards. Evaluation: the deterministic actor output. Deviation: none known.

Data: a Minari dataset (``dataset_id``, or a dataset folder in ``dataset_path``) or a D4RL -v2
HDF5 file (``dataset_path``), read with h5py the way ``d4rl.qlearning_dataset`` reads it.
Usage: python algorithms/td3_bc.py --config configs/td3_bc/local/hopper/medium.yaml [--field value ...]
       python algorithms/td3_bc.py --resume runs/<run name> [--max_timesteps N]
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
    normalize: bool = True  # normalise states with dataset mean/std (+1e-3)
    # TD3+BC (official defaults)
    alpha: float = 2.5  # lambda = alpha / mean|Q| in eq. (3)
    policy_noise: float = 0.2  # std of the target policy smoothing noise
    noise_clip: float = 0.5  # clip of that noise
    policy_freq: int = 2  # critic steps per actor step
    # networks and optimisation
    hidden_dim: int = 256
    n_hidden: int = 2  # hidden layers in actor and critics
    actor_lr: float = 3e-4
    critic_lr: float = 3e-4
    batch_size: int = 256
    discount: float = 0.99
    tau: float = 0.005  # Polyak rate of the actor and critic targets
    max_timesteps: int = 1_000_000  # gradient steps
    # evaluation and run
    eval_freq: int = 5000
    n_episodes: int = 10
    seed: int = 0
    device: str = "auto"  # auto = cuda when available, else cpu
    torch_compile: bool = False  # torch.compile the update (slower on a 2-core CPU, see README)
    torch_threads: Optional[int] = None  # torch CPU threads; None = torch's default
    output_dir: str = "runs"
    name: Optional[str] = None  # run name; default td3_bc-<dataset>-seed<seed>-<time>
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
    for name in ("batch_size", "max_timesteps", "eval_freq", "n_episodes", "policy_freq", "hidden_dim",
                 "n_hidden"):
        if getattr(cfg, name) <= 0:
            raise InputError(f"{name} must be a positive integer, got {getattr(cfg, name)}")
    if not 0 < cfg.tau <= 1 or not 0 <= cfg.discount <= 1:
        raise InputError(f"tau must be in (0, 1] and discount in [0, 1]; got {cfg.tau}, {cfg.discount}")
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


class ReplayBuffer:
    """The dataset as tensors on the training device; ``sample`` draws a uniform batch there."""

    def __init__(self, data: Dataset, normalize: bool, device: torch.device):
        self.mean = data.states.mean(0) if normalize else np.zeros(data.states.shape[1], np.float32)
        self.std = data.states.std(0) + 1e-3 if normalize else np.ones(data.states.shape[1], np.float32)
        to = lambda x: torch.as_tensor(x, device=device)  # noqa: E731
        self.states = to((data.states - self.mean) / self.std)
        self.next_states = to((data.next_states - self.mean) / self.std)
        self.actions, self.rewards, self.dones = to(data.actions), to(data.rewards), to(data.dones)

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


class Actor(nn.Module):
    """Deterministic policy pi(s) = tanh(MLP(s)): (..., obs) -> (..., act) in [-1, 1]."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: TrainConfig):
        super().__init__()
        self.net = mlp(obs_dim, act_dim, cfg.hidden_dim, cfg.n_hidden)

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

    def q1(self, s: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
        """Q_1 alone: s (B, obs), a (B, act) -> (B,), member 0's weights through the same layers,
        half the matmuls of ``forward`` (TD3's actor loss uses Q_1 only)."""
        x = torch.cat([s, a], -1)
        for layer in self.net:
            x = torch.addmm(layer.bias[0], x, layer.weight[0]) if isinstance(layer, VectorizedLinear) else layer(x)
        return x.squeeze(-1)


# ------------------------------------------------------------------------------------ the update
def critic_loss(q: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """TD3 critic loss for both critics: sum_i mean_B (Q_i(s,a) - y)^2. q (n, B), y (B,) -> scalar."""
    return ((q - y) ** 2).mean(-1).sum()


def td3_bc_actor_loss(q: torch.Tensor, pi: torch.Tensor, a: torch.Tensor, alpha: float) -> torch.Tensor:
    """TD3+BC eq. (3): -lambda * mean_B Q(s, pi(s)) + mean_{B,dims} (pi(s) - a)^2 with
    lambda = alpha / mean_B |Q(s, pi(s))|, the normaliser detached. q (B,), pi and a (B, act)."""
    lmbda = alpha / q.abs().mean().detach()
    return -lmbda * q.mean() + ((pi - a) ** 2).mean()


class TD3BC:
    """Networks, targets, optimisers and one TD3+BC iteration."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: TrainConfig, device: torch.device):
        self.cfg = cfg
        self.actor = Actor(obs_dim, act_dim, cfg).to(device)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.critic = TwinQ(obs_dim, act_dim, cfg).to(device)
        self.critic_target = copy.deepcopy(self.critic).requires_grad_(False)
        self.actor_opt = torch.optim.Adam(self.actor.parameters(), lr=cfg.actor_lr, fused=True)
        self.critic_opt = torch.optim.Adam(self.critic.parameters(), lr=cfg.critic_lr, fused=True)

    def update(self, s, a, r, s_next, done, step: int) -> Dict[str, torch.Tensor]:
        """Iteration ``step`` (1-based) on a batch (shapes as ``ReplayBuffer.sample``): a critic
        step, and on every ``policy_freq``-th iteration an actor step and the target updates.
        Returns detached losses (no host sync); ``actor_loss`` only on actor steps."""
        cfg = self.cfg
        with torch.no_grad():  # target policy smoothing
            noise = (torch.randn_like(a) * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            a_next = (self.actor_target(s_next) + noise).clamp(-1, 1)
            y = r + cfg.discount * (1 - done) * self.critic_target(s_next, a_next).min(0).values
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
        loss_pi = td3_bc_actor_loss(self.critic.q1(s, pi), pi, a, cfg.alpha)
        self.actor_opt.zero_grad(set_to_none=True)
        loss_pi.backward()
        self.critic.requires_grad_(True)
        self.actor_opt.step()
        with torch.no_grad():
            for net, target in ((self.actor, self.actor_target), (self.critic, self.critic_target)):
                torch._foreach_lerp_(list(target.parameters()), list(net.parameters()), cfg.tau)
        return {**out, "actor_loss": loss_pi.detach()}

    def state_dict(self) -> dict:
        return {k: getattr(self, k).state_dict() for k in
                ("actor", "actor_target", "critic", "critic_target", "actor_opt", "critic_opt")}

    def load_state_dict(self, state: dict) -> None:
        for k, v in state.items():
            getattr(self, k).load_state_dict(v)


# ----------------------------------------------------------------------------------- evaluation
@torch.no_grad()
def evaluate(env: gym.vector.VectorEnv, actor: Actor, buffer: ReplayBuffer, seed: int,
             device: torch.device) -> np.ndarray:
    """Undiscounted returns (n_envs,) of the actor's action clipped to the action box, one episode per
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
def save_checkpoint(path: Path, agent: TD3BC, step: int, elapsed: float, buffer: ReplayBuffer) -> None:
    """Everything a resumed run needs, written atomically (tmp file + rename)."""
    state = {"agent": agent.state_dict(), "step": step, "elapsed_s": elapsed,
             "obs_mean": buffer.mean, "obs_std": buffer.std,
             "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(),
                     "python": random.getstate(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    tmp = path.with_suffix(".tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: Path, agent: TD3BC) -> Tuple[int, float]:
    state = torch.load(path, map_location="cpu", weights_only=False)
    agent.load_state_dict(state["agent"])
    torch.set_rng_state(state["rng"]["torch"])
    np.random.set_state(state["rng"]["numpy"])
    random.setstate(state["rng"]["python"])
    if state["rng"]["cuda"] is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["rng"]["cuda"])
    return state["step"], state["elapsed_s"]


def train(cfg: TrainConfig) -> Path:
    """Train TD3+BC as ``cfg`` says; returns the run directory. Raises InputError on bad input
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
        name = cfg.name or f"td3_bc-{data.name}-seed{cfg.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
        run_dir = Path(cfg.output_dir) / name
        if (run_dir / "checkpoint.pt").exists():
            raise InputError(f"{run_dir} already holds a run; pass resume: {run_dir} or another name")
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(yaml.safe_dump({**asdict(cfg), "resume": None}, sort_keys=False))

    random.seed(cfg.seed)
    np.random.seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    buffer = ReplayBuffer(data, cfg.normalize, device)
    agent = TD3BC(obs_dim, act_dim, cfg, device)
    update = torch.compile(agent.update) if cfg.torch_compile else agent.update
    step, elapsed = 0, 0.0
    metrics_path, ckpt_path = run_dir / "metrics.jsonl", run_dir / "checkpoint.pt"
    if cfg.resume:
        if not ckpt_path.exists():
            raise InputError(f"resume: {run_dir} has no checkpoint.pt to continue from")
        step, elapsed = load_checkpoint(ckpt_path, agent)
        kept = [l for l in metrics_path.read_text().splitlines() if json.loads(l)["step"] <= step]
        metrics_path.write_text("".join(l + "\n" for l in kept))  # drop evals after the checkpoint
    print(f"TD3+BC on {data.name}: {len(data.rewards)} transitions, env {env_id}, device {device}, "
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

    sums, counts, n_sum, t_last = {}, {}, 0, time.time()
    bar = tqdm(total=cfg.max_timesteps, initial=step, disable=not cfg.progress_bar, unit="upd",
               dynamic_ncols=True)
    while step < cfg.max_timesteps:
        losses = update(*buffer.sample(cfg.batch_size), step=step + 1)
        for k, v in losses.items():
            sums[k], counts[k] = sums.get(k, 0) + v, counts.get(k, 0) + 1
        n_sum += 1
        step += 1
        bar.update(1)
        if step % cfg.eval_freq and step != cfg.max_timesteps:
            continue
        mean_losses = {k: float(v) / counts[k] for k, v in sums.items()}
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
                  + f", critic {mean_losses['critic_loss']:.3g}, "
                  f"actor {mean_losses.get('actor_loss', math.nan):.3g}, {rate:.0f} upd/s")
        sums, counts, n_sum, t_last = {}, {}, 0, time.time()
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
