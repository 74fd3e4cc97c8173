"""Updates per second of CORL's own implementations (tinkoff-ai/CORL), timed like benchmarks/throughput.py.

For the comparison "our algorithm's updates/s vs CORL's on the same machine": run this and
``benchmarks/throughput.py`` with the same arguments and compare the tables row by row (the algorithm
names are the same: td3_bc, iql, awac, spot, spot_vae). This file holds none of CORL's code: it imports
the files of a CORL checkout given by ``--corl-dir`` as modules, so the CORL commit measured is whatever
the user has checked out there (recorded in the output when the folder is a git checkout):

    algorithms/offline/td3_bc.py   TD3_BC.train(batch)
    algorithms/offline/iql.py      ImplicitQLearning.train(batch)
    algorithms/offline/awac.py     AdvantageWeightedActorCritic.update(batch)
    algorithms/finetune/spot.py    SPOT.train(batch) (spot) and SPOT.vae_train(batch) (spot_vae)

Networks, optimisers and agent are built the way each file's own ``train()`` builds them from its
default ``TrainConfig`` (only ``device`` is set), with max_action 1.0 (D4RL locomotion); batches come
from the file's own ``ReplayBuffer`` (capacity ``TrainConfig.buffer_size`` unless ``--buffer-size``),
filled through its ``load_d4rl_dataset`` with the same synthetic D4RL-shaped data as throughput.py
(hopper: obs 11, act 3; halfcheetah: obs 17, act 6; 1M transitions). One timed step is what one
iteration of the file's training loop does, minus logging and evaluation: ``replay_buffer.sample``,
``[b.to(device) for b in batch]``, then the update call. TD3+BC and SPOT update the actor and the
target networks on every 2nd step (``policy_freq`` 2), so keep ``--warmup`` and ``--steps`` even; IQL's
step includes its actor cosine LR schedule step. SPOT's actor-critic step runs with an untrained VAE
(after ``vae.eval()``, as ``train()`` does after the VAE phase): the weights do not change the work.
Each repetition times ``--steps`` updates after ``--warmup`` untimed ones; the report gives
min / median / max over ``--reps`` repetitions per torch thread count; ``--profile`` adds the
share of the step spent in matrix multiplies and the ceiling it sets, as in throughput.py.

CORL's files import ``d4rl`` and ``gym`` at top level; neither is used by the measured code, so
before importing them this script puts stub modules into ``sys.modules``: an empty ``d4rl`` and a
``gym`` holding only an empty ``Env`` class (used in annotations). ``pyrallis``, ``wandb`` and
``tqdm`` are imported for real (they are in requirements.txt); wandb is never initialised.

    python benchmarks/corl_throughput.py --corl-dir PATH/TO/CORL --threads 1 2

Writes ``results/corl_throughput.md`` and ``results/corl_throughput.json`` (``--out`` to change).
Speed on a 2-core CPU collapses when anything else runs, so the load average is checked and recorded.
SPOT's default buffer holds 20M transitions (about 2.2 GB for hopper, 3.4 GB for halfcheetah); only
the first ``--transitions`` rows are ever sampled, so ``--buffer-size`` only changes memory use.
"""
import argparse
import contextlib
import functools
import importlib.util
import io
import os
import statistics
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).parent))
import throughput  # noqa: E402  (the shared synthetic data and report writer)

SHAPES = throughput.SHAPES
MAX_ACTION = 1.0  # env.action_space.high[0] of the D4RL locomotion tasks
# benchmark name -> (CORL file, what one step calls); spot_vae is SPOT's VAE phase alone
ENTRIES = {"td3_bc": ("algorithms/offline/td3_bc.py", "TD3_BC.train"),
           "iql": ("algorithms/offline/iql.py", "ImplicitQLearning.train"),
           "awac": ("algorithms/offline/awac.py", "AdvantageWeightedActorCritic.update"),
           "spot": ("algorithms/finetune/spot.py", "SPOT.train"),
           "spot_vae": ("algorithms/finetune/spot.py", "SPOT.vae_train")}


def install_import_stubs() -> None:
    """Stand-ins for the modules CORL's files import but the update step never uses."""
    gym = types.ModuleType("gym")
    gym.__doc__ = "stub from benchmarks/corl_throughput.py: only what importing CORL's files needs"
    gym.Env = type("Env", (), {"__module__": "gym"})
    d4rl = types.ModuleType("d4rl")
    d4rl.__doc__ = gym.__doc__
    sys.modules.setdefault("gym", gym)
    sys.modules.setdefault("d4rl", d4rl)


_MODULES = {}


def load(corl_dir: Path, algo: str):
    rel = ENTRIES[algo][0]
    if rel not in _MODULES:
        path = corl_dir / rel
        if not path.is_file():
            sys.exit(f"{path} not found: --corl-dir must be a checkout of https://github.com/tinkoff-ai/CORL")
        name = "corl_" + rel.replace("/", "_").removesuffix(".py")
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module  # dataclasses look their module up while the file executes
        spec.loader.exec_module(module)
        _MODULES[rel] = module
    return _MODULES[rel]


def adam(module: torch.nn.Module, lr: float) -> torch.optim.Adam:
    return torch.optim.Adam(module.parameters(), lr=lr)


def make_step(algo: str, mod, s: int, a: int, cfg):
    """The CORL agent built as the file's train() builds it; returns its update call ``step(batch)``."""
    dev = cfg.device
    if algo == "td3_bc":
        actor = mod.Actor(s, a, MAX_ACTION).to(dev)
        critic_1, critic_2 = mod.Critic(s, a).to(dev), mod.Critic(s, a).to(dev)
        trainer = mod.TD3_BC(max_action=MAX_ACTION, actor=actor, actor_optimizer=adam(actor, 3e-4),
                             critic_1=critic_1, critic_1_optimizer=adam(critic_1, 3e-4),
                             critic_2=critic_2, critic_2_optimizer=adam(critic_2, 3e-4),
                             discount=cfg.discount, tau=cfg.tau, device=dev,
                             policy_noise=cfg.policy_noise * MAX_ACTION, noise_clip=cfg.noise_clip * MAX_ACTION,
                             policy_freq=cfg.policy_freq, alpha=cfg.alpha)
        return trainer.train
    if algo == "iql":
        q_network = mod.TwinQ(s, a).to(dev)
        v_network = mod.ValueFunction(s).to(dev)
        policy = mod.DeterministicPolicy if cfg.iql_deterministic else mod.GaussianPolicy
        actor = policy(s, a, MAX_ACTION, dropout=cfg.actor_dropout).to(dev)
        trainer = mod.ImplicitQLearning(max_action=MAX_ACTION, actor=actor, actor_optimizer=adam(actor, cfg.actor_lr),
                                        q_network=q_network, q_optimizer=adam(q_network, cfg.qf_lr),
                                        v_network=v_network, v_optimizer=adam(v_network, cfg.vf_lr),
                                        discount=cfg.discount, tau=cfg.tau, device=dev, beta=cfg.beta,
                                        iql_tau=cfg.iql_tau, max_steps=cfg.max_timesteps)
        return trainer.train
    if algo == "awac":
        kw = {"state_dim": s, "action_dim": a, "hidden_dim": cfg.hidden_dim}
        actor = mod.Actor(**kw).to(dev)
        critic_1, critic_2 = mod.Critic(**kw).to(dev), mod.Critic(**kw).to(dev)
        trainer = mod.AdvantageWeightedActorCritic(
            actor=actor, actor_optimizer=adam(actor, cfg.learning_rate),
            critic_1=critic_1, critic_1_optimizer=adam(critic_1, cfg.learning_rate),
            critic_2=critic_2, critic_2_optimizer=adam(critic_2, cfg.learning_rate),
            gamma=cfg.gamma, tau=cfg.tau, awac_lambda=cfg.awac_lambda)
        return trainer.update
    # spot / spot_vae
    vae = mod.VAE(s, a, cfg.vae_latent_dim, MAX_ACTION, cfg.vae_hidden_dim).to(dev)
    actor = mod.Actor(s, a, MAX_ACTION, cfg.actor_init_w).to(dev)
    critic_1 = mod.Critic(s, a, cfg.critic_init_w).to(dev)
    critic_2 = mod.Critic(s, a, cfg.critic_init_w).to(dev)
    trainer = mod.SPOT(max_action=MAX_ACTION, vae=vae, vae_optimizer=adam(vae, cfg.vae_lr),
                       actor=actor, actor_optimizer=adam(actor, cfg.actor_lr),
                       critic_1=critic_1, critic_1_optimizer=adam(critic_1, cfg.critic_lr),
                       critic_2=critic_2, critic_2_optimizer=adam(critic_2, cfg.critic_lr),
                       discount=cfg.discount, tau=cfg.tau, device=dev,
                       policy_noise=cfg.policy_noise * MAX_ACTION, noise_clip=cfg.noise_clip * MAX_ACTION,
                       policy_freq=cfg.policy_freq, beta=cfg.beta, lambd=cfg.lambd, num_samples=cfg.num_samples,
                       iwae=cfg.iwae, lambd_cool=cfg.lambd_cool, lambd_end=cfg.lambd_end,
                       max_online_steps=cfg.online_iterations)
    if algo == "spot_vae":
        return trainer.vae_train
    vae.eval()  # train() does this between the VAE phase and the actor-critic phase
    return trainer.train


_DATA = {}


def synthetic_data(obs_dim: int, act_dim: int, n: int) -> dict:
    """throughput.py's synthetic transitions (D4RL's qlearning_dataset layout), made once per shape."""
    if (obs_dim, act_dim, n) not in _DATA:
        _DATA[(obs_dim, act_dim, n)] = throughput.synthetic_arrays(obs_dim, act_dim, n)
    return _DATA[(obs_dim, act_dim, n)]


def corl_buffer(mod, obs_dim: int, act_dim: int, n: int, capacity: int, device: str):
    buffer = mod.ReplayBuffer(obs_dim, act_dim, capacity, device)
    with contextlib.redirect_stdout(io.StringIO()):  # it prints "Dataset size: ..."
        buffer.load_d4rl_dataset(synthetic_data(obs_dim, act_dim, n))
    return buffer


def time_updates(step, buffer, batch_size: int, steps: int, device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for _ in range(steps):
        batch = buffer.sample(batch_size)
        batch = [b.to(device) for b in batch]  # as in CORL's training loops
        step(batch)  # CORL's steps return .item()'d losses, so each step has already synchronised
    if device.type == "cuda":
        torch.cuda.synchronize()
    return steps / (time.perf_counter() - t0)


def corl_commit(corl_dir: Path) -> str:
    try:
        out = subprocess.run(["git", "-C", str(corl_dir), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(corl_dir), "status", "--porcelain", "--", "algorithms"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    if out.returncode != 0:
        return "unknown (not a git checkout)"
    return out.stdout.strip() + (" (algorithms/ modified)" if dirty else "")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--corl-dir", required=True, type=Path, help="checkout of https://github.com/tinkoff-ai/CORL")
    p.add_argument("--algos", nargs="+", default=list(ENTRIES), choices=list(ENTRIES))
    p.add_argument("--envs", nargs="+", default=["hopper"], choices=list(SHAPES))
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    p.add_argument("--devices", nargs="+", default=["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
    p.add_argument("--transitions", type=int, default=1_000_000)
    p.add_argument("--buffer-size", type=int, default=None,
                   help="ReplayBuffer capacity (default: the CORL file's TrainConfig.buffer_size)")
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--steps", type=int, default=500)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--profile", action="store_true",
                   help="add the matmul share of the step, the rate of its matmuls and the ceiling they set (CPU)")
    p.add_argument("--out", default=str(ROOT / "results" / "corl_throughput"))
    args = p.parse_args()
    corl_dir = args.corl_dir.resolve()
    install_import_stubs()
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        print(f"warning: load average {load_before:.2f}; numbers on a busy machine are not comparable")
    rows, buffer, buffer_key = [], None, None
    for algo in args.algos:
        mod = load(corl_dir, algo)
        for env in args.envs:
            for dev_name in args.devices:
                device = torch.device(dev_name)
                capacity = args.buffer_size or mod.TrainConfig(device=dev_name).buffer_size
                key = (ENTRIES[algo][0], env, dev_name, capacity)
                if key != buffer_key:  # spot and spot_vae share one file, so one buffer
                    buffer = None  # free the previous one first (SPOT's default holds 20M transitions)
                    buffer, buffer_key = corl_buffer(mod, *SHAPES[env], args.transitions, capacity, dev_name), key
                for threads in (args.threads if device.type == "cpu" else [torch.get_num_threads()]):
                    torch.set_num_threads(threads)
                    torch.manual_seed(0)
                    np.random.seed(0)  # CORL's ReplayBuffer.sample draws from numpy's global generator
                    cfg = mod.TrainConfig(device=dev_name)
                    step = make_step(algo, mod, *SHAPES[env], cfg)
                    time_updates(step, buffer, cfg.batch_size, args.warmup, device)
                    rates = [time_updates(step, buffer, cfg.batch_size, args.steps, device)
                             for _ in range(args.reps)]
                    row = {"algo": algo, "env": env, "device": dev_name, "threads": threads,
                           "min": min(rates), "median": statistics.median(rates), "max": max(rates),
                           "corl_file": ENTRIES[algo][0], "corl_step": ENTRIES[algo][1],
                           "batch_size": cfg.batch_size, "buffer_size": capacity,
                           **throughput.profiled_matmuls(args, device, functools.partial(
                               time_updates, step, buffer, cfg.batch_size, device=device))}
                    rows.append(row)
                    print(f"corl {algo:8s} {env:11s} {dev_name:4s} threads={threads}: median "
                          f"{row['median']:.0f} updates/s (min {row['min']:.0f}, max {row['max']:.0f})"
                          + (f", matmul share {row['matmul_share']:.0%}" if row["matmul_share"] else ""))
    meta = throughput.run_meta(args, load_before, corl_dir=str(corl_dir), corl_commit=corl_commit(corl_dir),
                               stubbed_modules=["d4rl", "gym"])
    note = f"CORL (tinkoff-ai/CORL) commit {meta['corl_commit']}."
    note += " " + throughput.PROFILE_NOTE if args.profile else ""
    throughput.write_report(args, meta, rows, "CORL's step", note, throughput.PROFILE_COLUMNS if args.profile else (),
                            footer=["", "CORL step per algorithm (ReplayBuffer.sample + .to(device) + this call): "
                                    + "; ".join(f"{a}: `{ENTRIES[a][0]}` {ENTRIES[a][1]}" for a in args.algos) + "."])


if __name__ == "__main__":
    main()
