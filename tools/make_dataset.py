"""Make D4RL-style offline datasets (random, medium, medium-replay, expert, medium-expert)
for a Gymnasium MuJoCo env, written as Minari datasets through Minari's own API.

Protocol (D4RL, Fu et al. 2020, sec. 5, adapted):
  1. Train a behaviour policy online with Stable-Baselines3 SAC, evaluating it (deterministic
     actions, ``--eval-episodes`` episodes) and saving a checkpoint every ``--eval-freq`` steps.
  2. ``expert``  = the checkpoint with the best evaluation return;
     ``medium``  = the checkpoint whose evaluation return is closest to 1/3 of the best one.
  3. ``random``: ``--n-random`` steps of the uniform policy; ``medium``, ``expert``:
     ``--n-transitions`` steps of the checkpoint's *stochastic* policy (as D4RL sampled them).
  4. ``medium-replay``: the SAC replay buffer up to the medium checkpoint's step, episodes cut
     where training cut them; when longer than ``--replay-cap``, a seeded random subset of whole
     episodes (kept in order) under the cap.
  5. ``medium-expert``: the medium and expert episodes together.
Terminations and truncations are kept apart; an episode cut by the transition budget ends in a
truncation. Observations are stored as float32 to keep the files small.

References (stored in every dataset's metadata): ``ref_min_score`` = mean return of a uniform
random policy over ``--ref-episodes`` episodes, ``ref_max_score`` = mean return of the expert
checkpoint (deterministic actions) over ``--ref-episodes`` episodes.

Reproducibility: with the same flags, package versions and torch thread count the run is
deterministic on CPU; SB3 does not make CUDA training deterministic, so GPU runs differ.

Example (the shipped data, see datasets/README.md):
    python tools/make_dataset.py --env Hopper-v5 --out datasets
"""
from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from tqdm import tqdm

LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--env", default="Hopper-v5", help="Gymnasium MuJoCo env id")
    p.add_argument("--total-steps", type=int, default=300_000, help="SAC environment steps")
    p.add_argument("--eval-freq", type=int, default=10_000, help="steps between checkpoints")
    p.add_argument("--eval-episodes", type=int, default=5, help="episodes per checkpoint eval")
    p.add_argument("--n-transitions", type=int, default=50_000, help="transitions in medium and expert")
    p.add_argument("--n-random", type=int, default=25_000,
                   help="transitions in random (its ~20-step episodes cost ~15 KB each in Minari's HDF5)")
    p.add_argument("--replay-cap", type=int, default=50_000, help="max medium-replay transitions")
    p.add_argument("--ref-episodes", type=int, default=100, help="episodes for ref scores")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads (part of determinism)")
    p.add_argument("--out", default="datasets", help="Minari datasets root ($MINARI_DATASETS_PATH)")
    p.add_argument("--namespace", default="local", help="dataset ids are <namespace>/<robot>/<level>-v0")
    p.add_argument("--overwrite", action="store_true", help="delete existing datasets of the same id")
    return p.parse_args(argv)


def rollout(env: gym.Env, act, n_transitions: int, seed: int, desc: str):
    """Run whole episodes of ``act(obs) -> action`` until ``n_transitions`` steps.

    Returns a list of ``minari.data_collector.EpisodeBuffer`` (observations float32, T+1 rows).
    The last episode is cut at the budget and then ends in a truncation.
    """
    episodes, obs, done_steps = [], None, 0
    bar = tqdm(total=n_transitions, desc=desc, unit="step", leave=False)
    while done_steps < n_transitions:
        obs, _ = env.reset(seed=seed if not episodes else None)
        o, a, r, term, trunc = [obs], [], [], [], []
        while True:
            action = np.clip(act(obs), env.action_space.low, env.action_space.high)
            obs, reward, terminated, truncated, _ = env.step(action)
            done_steps += 1
            bar.update(1)
            truncated = truncated or done_steps == n_transitions
            for column, x in ((o, obs), (a, action), (r, reward), (term, terminated)):
                column.append(x)
            trunc.append(truncated and not terminated)
            if terminated or truncated:
                break
        episodes.append(to_buffer(len(episodes), np.array(o), np.array(a), np.array(r),
                                  np.array(term), np.array(trunc)))
    bar.close()
    return episodes


def to_buffer(idx, obs, act, rew, term, trunc):
    from minari.data_collector import EpisodeBuffer
    return EpisodeBuffer(id=idx, observations=obs.astype(np.float32), actions=act.astype(np.float32),
                         rewards=rew.astype(np.float64), terminations=term.astype(bool),
                         truncations=trunc.astype(bool))


def replay_episodes(buffer, n_steps: int, cap: int, seed: int):
    """Split the first ``n_steps`` transitions of an SB3 ``ReplayBuffer`` (one env) into episodes.

    ``dones`` end an episode; ``timeouts`` mark it truncated rather than terminated; the piece
    still running at ``n_steps`` ends in a truncation. If the total exceeds ``cap``, a seeded
    random subset of whole episodes under ``cap`` is kept, in chronological order.
    """
    obs, nxt = buffer.observations[:n_steps, 0], buffer.next_observations[:n_steps, 0]
    act, rew = buffer.actions[:n_steps, 0], buffer.rewards[:n_steps, 0]
    done, timeout = buffer.dones[:n_steps, 0] > 0, buffer.timeouts[:n_steps, 0] > 0
    ends = list(np.flatnonzero(done)) + ([n_steps - 1] if not done[n_steps - 1] else [])
    spans, start = [], 0
    for end in ends:
        spans.append((start, end + 1))
        start = end + 1
    if n_steps > cap:
        keep, total = [], 0
        for i in np.random.default_rng(seed).permutation(len(spans)):
            if total + spans[i][1] - spans[i][0] <= cap:
                keep.append(i)
                total += spans[i][1] - spans[i][0]
        spans = [spans[i] for i in sorted(keep)]
    episodes = []
    for s, e in spans:
        term = done[s:e] & ~timeout[s:e]
        trunc = ~term & np.r_[np.zeros(e - s - 1, bool), True]
        episodes.append(to_buffer(len(episodes), np.concatenate([obs[s:e], nxt[e - 1:e]]),
                                  act[s:e], rew[s:e], term, trunc))
    return episodes


def mean_return(env: gym.Env, act, n_episodes: int, seed: int, desc: str) -> float:
    """Mean undiscounted return of ``act`` over ``n_episodes`` episodes (env seeded once)."""
    returns = []
    for i in tqdm(range(n_episodes), desc=desc, leave=False):
        obs, _ = env.reset(seed=seed if i == 0 else None)
        ret, done = 0.0, False
        while not done:
            obs, r, term, trunc, _ = env.step(np.clip(act(obs), -1.0, 1.0))
            ret, done = ret + r, term or trunc
        returns.append(ret)
    return float(np.mean(returns))


def train_sac(args, work: Path):
    """Train SB3 SAC, evaluating and checkpointing every ``eval_freq`` steps. Returns the model
    and the evaluation log as a list of ``(step, mean_return)``."""
    from stable_baselines3 import SAC
    from stable_baselines3.common.callbacks import CallbackList, CheckpointCallback, EvalCallback
    from stable_baselines3.common.monitor import Monitor

    env = gym.make(args.env)
    eval_env = Monitor(gym.make(args.env))
    eval_env.reset(seed=args.seed + 1000)
    model = SAC("MlpPolicy", env, buffer_size=args.total_steps, seed=args.seed, device="cpu",
                verbose=0)
    callbacks = CallbackList([
        CheckpointCallback(args.eval_freq, str(work / "checkpoints"), name_prefix="sac"),
        EvalCallback(eval_env, n_eval_episodes=args.eval_episodes, eval_freq=args.eval_freq,
                     log_path=str(work), deterministic=True, verbose=0),
    ])
    model.learn(args.total_steps, callback=callbacks, progress_bar=True)
    log = np.load(work / "evaluations.npz")
    evals = [(int(t), float(np.mean(r))) for t, r in zip(log["timesteps"], log["results"])]
    return model, evals


def main(argv=None) -> None:
    args = parse_args(argv)
    command = "python " + shlex.join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out).resolve()
    os.environ["MINARI_DATASETS_PATH"] = str(out)  # minari reads it at call time
    import minari
    from stable_baselines3 import SAC

    torch.set_num_threads(args.threads)
    robot = args.env.split("-")[0].lower()
    ids = {lvl: f"{args.namespace}/{robot}/{lvl}-v0" for lvl in LEVELS}
    existing = [i for i in ids.values() if (out / i).exists()]
    if existing and not args.overwrite:
        sys.exit(f"error: {existing} already exist under {out}; pass --overwrite to replace them")
    work = out / args.namespace / robot / "policies"
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.time()

    model, evals = train_sac(args, work)
    best_step, best_ret = max(evals, key=lambda e: e[1])
    med_step, med_ret = min(evals, key=lambda e: abs(e[1] - best_ret / 3))
    print(f"expert: step {best_step} eval return {best_ret:.1f}; "
          f"medium: step {med_step} eval return {med_ret:.1f}")
    policies = {name: SAC.load(work / "checkpoints" / f"sac_{step}_steps.zip", device="cpu")
                for name, step in (("medium", med_step), ("expert", best_step))}
    for name, pol in policies.items():
        pol.save(work / f"{name}.zip")

    env = gym.make(args.env)
    env.action_space.seed(args.seed)
    uniform = lambda obs: env.action_space.sample()  # noqa: E731
    stochastic = {n: (lambda obs, p=p: p.predict(obs, deterministic=False)[0])
                  for n, p in policies.items()}
    torch.manual_seed(args.seed)
    ref_min = mean_return(env, uniform, args.ref_episodes, args.seed + 2000, "ref_min (uniform)")
    ref_max = mean_return(env, lambda obs: policies["expert"].predict(obs, deterministic=True)[0],
                          args.ref_episodes, args.seed + 3000, "ref_max (expert)")
    buffers = {
        "random": rollout(env, uniform, args.n_random, args.seed + 10, "random"),
        "medium": rollout(env, stochastic["medium"], args.n_transitions, args.seed + 11, "medium"),
        "expert": rollout(env, stochastic["expert"], args.n_transitions, args.seed + 12, "expert"),
        "medium-replay": replay_episodes(model.replay_buffer, med_step, args.replay_cap, args.seed),
    }
    buffers["medium-expert"] = [
        to_buffer(i, *(np.asarray(getattr(ep, k)) for k in
                       ("observations", "actions", "rewards", "terminations", "truncations")))
        for i, ep in enumerate(buffers["medium"] + buffers["expert"])]

    obs_space = env.observation_space
    obs_space = gym.spaces.Box(obs_space.low.astype(np.float32), obs_space.high.astype(np.float32),
                               dtype=np.float32)
    source = {"random": "uniform random actions",
              "medium": f"SAC checkpoint at step {med_step} (eval return {med_ret:.1f}), stochastic",
              "expert": f"SAC checkpoint at step {best_step} (eval return {best_ret:.1f}), stochastic",
              "medium-replay": f"SAC replay buffer, steps 0..{med_step}",
              "medium-expert": "medium and expert episodes together"}
    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "uncommitted"
    summary = {"command": command, "env": args.env, "ref_min_score": ref_min,
               "ref_max_score": ref_max, "evaluations": evals, "medium_step": med_step,
               "expert_step": best_step, "levels": {}}
    for lvl in LEVELS:
        if args.overwrite and (out / ids[lvl]).exists():
            minari.delete_dataset(ids[lvl])
        minari.create_dataset_from_buffers(
            ids[lvl], buffers[lvl], env=args.env, eval_env=args.env, observation_space=obs_space,
            algorithm_name=f"stable-baselines3 SAC; {lvl}: {source[lvl]}",
            code_permalink=f"tools/make_dataset.py@{commit}",
            author="offline-rl single-file reference library",
            ref_min_score=ref_min, ref_max_score=ref_max,
            description=f"D4RL-style '{lvl}' data for {args.env}: {source[lvl]}. Made by: {command}",
            requirements=[f"gymnasium=={gym.__version__}", f"mujoco=={__import__('mujoco').__version__}"])
        rets = [float(np.sum(ep.rewards)) for ep in buffers[lvl]]
        norm = 100 * (np.mean(rets) - ref_min) / (ref_max - ref_min)
        summary["levels"][lvl] = {"id": ids[lvl], "transitions": int(sum(len(ep.rewards) for ep in buffers[lvl])),
                                  "episodes": len(rets), "mean_return": float(np.mean(rets)),
                                  "mean_normalized_return": float(norm)}
        print(f"{ids[lvl]}: {summary['levels'][lvl]}")
    summary["wall_time_s"] = time.time() - t0
    (work / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"done in {summary['wall_time_s'] / 60:.1f} min; summary in {work / 'summary.json'}")


if __name__ == "__main__":
    main()
