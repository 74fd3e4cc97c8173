"""Make D4RL maze2d-style offline datasets for a Gymnasium-Robotics PointMaze env, written as
Minari datasets through Minari's own API (the protocol of Minari's ``D4RL/pointmaze/*-v2``).

Protocol (D4RL's ``scripts/generation/generate_maze2d_datasets.py`` and Minari's
``minari-dataset-generation-scripts/scripts/pointmaze/create_pointmaze_dataset.py``, re-implemented):
  1. Data env: ``PointMaze_<Maze>-v3`` with ``continuing_task=True, reset_target=True`` (a new
     random goal is drawn whenever the ball comes within 0.45 of the current one; nothing ever
     terminates), the registered maze, sparse reward (``--dense``: the ``...Dense-v3`` env) and
     ``max_episode_steps=1_000_000``, as Minari stores it. It is reset once (``--seed``) and then
     runs as one continuing stream of ``--n-transitions`` steps.
  2. Behaviour policy: a planner over the maze grid gives waypoints and a PD controller follows
     them. Planner: Q-value iteration on the free cells (4 moves, reward 1 for entering the goal
     cell, discount 0.99; D4RL/Minari run 50 sweeps, we run it to convergence, the same on these
     mazes) gives the path of cells from the ball's cell to the goal's cell, recomputed whenever
     the goal changes. Waypoints: the path's cell centres, each shifted by -U(0, 0.2) per axis,
     and the goal itself last. Control: ``a = 10 (waypoint - xy) - 1 * velocity``; the next
     waypoint is taken when the ball is within 0.1 of the current one (Minari's controller).
     Data actions add N(0, ``--noise``^2) noise (0.5, as both references) and are clipped to [-1, 1].
  3. Episodes: terminations are all False. ``--episode-length`` > 0 cuts the stream into pieces of
     that many steps (truncations); the pieces are contiguous (the next piece starts from the last
     observation of the previous one, no reset). ``--episode-length 0`` cuts it where a goal is
     reached (``info['success']``), as Minari's D4RL/pointmaze data does (~13k episodes per 1M
     steps on umaze). The last piece ends at the transition budget, also as a truncation.
     Default 1000, because Minari's HDF5 costs ~21 KB per episode on top of the ~50 B per
     transition: 100k umaze transitions take ~7 MB in 1000-step pieces and ~29 MB cut at goals.
     Observations are stored exactly as the env returned them: the step that reaches a goal still
     shows the old ``desired_goal``, the following one the new goal.
  4. Eval env (stored as ``eval_env_spec``), as Minari's pointmaze script makes it: the same env id
     with the maze's map with one goal cell ``g`` (umaze (1,1), medium (6,6), large (7,9), open (2,3),
     Minari's ``EVAL_ENV_MAPS``; the ball starts in any other free cell), ``continuing_task=True,
     reset_target=False`` and the registered time limit (300 umaze/open, 600 medium, 800 large):
     the episode does not end at the goal, so a sparse return counts the steps spent within 0.45
     of it, like D4RL's maze2d scores. ``--eval-terminate`` stores ``continuing_task=False``
     instead (an episode ends at the goal; a sparse return is then 1 for success, 0 otherwise).
  5. References (Minari computes them the same way, ``get_average_reference_score``):
     ``ref_min_score`` = mean return of uniform random actions and ``ref_max_score`` = mean return
     of the planner + controller without action noise, each over ``--ref-episodes`` episodes of
     the eval env (seeded once at the first reset). The summary also records their success rates
     there (``info['success']`` at any step of an episode) and that of the data's own behaviour
     policy (the controller with its action noise), the number to compare a learned policy with.

Observations are float32 (the env's Dict spaces are float64): the dataset is created with an
``observation_space`` of float32 Boxes of the same keys and shapes; the recovered envs still
return float64. Rewards are float64, actions float32. No ``infos`` are stored (for sparse reward,
``success`` == ``reward == 1``; qpos/qvel/goal are the observation).

Reproducibility: the env, the action noise, the waypoint jitter and the evaluations are seeded from
``--seed``; the same flags and package versions give the same data.

Outputs: ``<out>/<dataset-id>/data/{main_data.hdf5,metadata.json}`` (load with
``minari.MinariDataset("<out>/<dataset-id>/data")`` or ``MINARI_DATASETS_PATH=<out>``) and
``<out>/<dataset-id>/summary.json`` (flags, references, success rates, sizes, wall time).

Example (the shipped data, see datasets/README.md):
    python tools/make_maze_dataset.py --maze umaze --out datasets
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
from tqdm import tqdm

ENV_IDS = {"umaze": "PointMaze_UMaze", "medium": "PointMaze_Medium", "large": "PointMaze_Large",
           "open": "PointMaze_Open"}
EVAL_GOAL_CELLS = {"umaze": (1, 1), "medium": (6, 6), "large": (7, 9), "open": (2, 3)}  # (row, col)
DEFAULT_TRANSITIONS = {"umaze": 100_000, "medium": 200_000, "large": 200_000, "open": 100_000}
DATA_MAX_EPISODE_STEPS = 1_000_000
MOVES = ((-1, 0), (1, 0), (0, -1), (0, 1))  # (d_row, d_col): up, down, left, right


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--maze", choices=sorted(ENV_IDS), default="umaze")
    p.add_argument("--dense", action="store_true", help="dense reward (the PointMaze_<Maze>Dense-v3 env)")
    p.add_argument("--n-transitions", type=int, default=None,
                   help="transitions (default: umaze/open 100k, medium/large 200k)")
    p.add_argument("--episode-length", type=int, default=1000,
                   help="steps per piece of the continuing stream; 0: cut where a goal is reached (Minari)")
    p.add_argument("--noise", type=float, default=0.5, help="std of the Gaussian action noise in the data")
    p.add_argument("--ref-episodes", type=int, default=100, help="eval-env episodes for the ref scores")
    p.add_argument("--eval-terminate", action="store_true",
                   help="eval env ends an episode at the goal (continuing_task=False) instead of Minari's "
                        "continuing_task=True")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="datasets", help="Minari datasets root ($MINARI_DATASETS_PATH)")
    p.add_argument("--dataset-id", default=None,
                   help="default local/pointmaze/<maze>-v0 (<maze>-dense-v0 with --dense)")
    p.add_argument("--overwrite", action="store_true", help="delete an existing dataset of the same id")
    args = p.parse_args(argv)
    if args.n_transitions is None:
        args.n_transitions = DEFAULT_TRANSITIONS[args.maze]
    if args.dataset_id is None:
        args.dataset_id = f"local/pointmaze/{args.maze}{'-dense' if args.dense else ''}-v0"
    if args.n_transitions < 1 or args.episode_length < 0 or args.ref_episodes < 1:
        p.error("--n-transitions and --ref-episodes must be >= 1, --episode-length >= 0")
    return args


class GridPlanner:
    """Shortest paths between free cells of a maze map (1 = wall) by Q-value iteration."""

    def __init__(self, maze_map, discount: float = 0.99):
        self.free = np.array([[cell != 1 for cell in row] for row in maze_map])
        self.discount = discount
        rows, cols = self.free.shape
        n = rows * cols
        # succ[s, a]: the cell reached from s by move a, or -1 if it is a wall or off the map
        self.succ = np.full((n, len(MOVES)), -1)
        for r in range(rows):
            for c in range(cols):
                for a, (dr, dc) in enumerate(MOVES):
                    rr, cc = r + dr, c + dc
                    if self.free[r, c] and 0 <= rr < rows and 0 <= cc < cols and self.free[rr, cc]:
                        self.succ[r * cols + c, a] = rr * cols + cc
        self._next = {}

    def next_cells(self, goal: tuple[int, int]) -> np.ndarray:
        """For every cell index, the index of the next cell on a shortest path to ``goal``."""
        if goal not in self._next:
            cols = self.free.shape[1]
            g = goal[0] * cols + goal[1]
            valid = self.succ >= 0
            reward = (self.succ == g).astype(float)
            v = np.zeros(len(self.succ))
            for _ in range(len(self.succ) + 1):  # converged after (longest path) sweeps
                q = np.where(valid, reward + self.discount * v[np.maximum(self.succ, 0)], 0.0)
                v_new = q.max(axis=1)
                if np.array_equal(v_new, v):
                    break
                v = v_new
            self._next[goal] = self.succ[np.arange(len(self.succ)), q.argmax(axis=1)]
        return self._next[goal]

    def path(self, start: tuple[int, int], goal: tuple[int, int]) -> list[tuple[int, int]]:
        """Cells after ``start`` up to and including ``goal`` (empty if start == goal)."""
        cols = self.free.shape[1]
        nxt, s, g, cells = self.next_cells(goal), start[0] * cols + start[1], goal[0] * cols + goal[1], []
        while s != g:
            s = int(nxt[s])
            if s < 0 or len(cells) > self.free.size:
                raise RuntimeError(f"no path from {start} to {goal}")
            cells.append(divmod(s, cols))
        return cells


class WaypointController:
    """Planner waypoints followed by a PD controller (D4RL's / Minari's ``WaypointController``)."""

    def __init__(self, maze, rng: np.random.Generator, p_gain=10.0, d_gain=-1.0, threshold=0.1, jitter=0.2):
        self.maze, self.rng = maze, rng
        self.planner = GridPlanner(maze.maze_map)
        self.p_gain, self.d_gain, self.threshold, self.jitter = p_gain, d_gain, threshold, jitter
        self.reset()

    def reset(self):
        self._goal, self._waypoints, self._i = None, [], 0

    def _cell(self, xy) -> tuple[int, int]:
        return tuple(int(v) for v in self.maze.cell_xy_to_rowcol(xy))

    def _plan(self, xy, goal):
        cells = self.planner.path(self._cell(xy), self._cell(goal))
        self._waypoints = [self.maze.cell_rowcol_to_xy(np.array(c)) - self.rng.uniform(size=2) * self.jitter
                           for c in cells[:-1]] + [np.array(goal, dtype=float)]
        self._goal, self._i = np.array(goal, dtype=float), 0

    def __call__(self, obs) -> np.ndarray:
        xy, vel, goal = obs["achieved_goal"], obs["observation"][2:], obs["desired_goal"]
        if self._goal is None or np.linalg.norm(goal - self._goal) > 1e-3:
            self._plan(xy, goal)
        if self._i < len(self._waypoints) - 1 and np.linalg.norm(self._waypoints[self._i] - xy) <= self.threshold:
            self._i += 1
        action = self.p_gain * (self._waypoints[self._i] - xy) + self.d_gain * vel
        return np.clip(action, -1.0, 1.0)


def env_id(maze: str, dense: bool) -> str:
    return f"{ENV_IDS[maze]}{'Dense' if dense else ''}-v3"


def eval_map(maze: str):
    """The registered maze map with its single eval goal cell marked ``g`` (Minari's EVAL_ENV_MAPS)."""
    maze_map = [list(row) for row in gym.spec(env_id(maze, False)).kwargs["maze_map"]]
    r, c = EVAL_GOAL_CELLS[maze]
    assert maze_map[r][c] == 0, (maze, r, c)
    maze_map[r][c] = "g"
    return maze_map


def float32_space(space: gym.spaces.Dict) -> gym.spaces.Dict:
    return gym.spaces.Dict({k: gym.spaces.Box(s.low.astype(np.float32), s.high.astype(np.float32),
                                              shape=s.shape, dtype=np.float32)
                            for k, s in space.spaces.items()})


def collect(env: gym.Env, controller: WaypointController, rng: np.random.Generator, args):
    """Run the noisy controller for ``n_transitions`` steps of one continuing stream, cut into pieces.

    Returns the list of ``minari.data_collector.EpisodeBuffer`` and the number of goals reached.
    """
    from minari.data_collector import EpisodeBuffer
    keys = list(env.observation_space.spaces)
    buffers, goals = [], 0
    obs, _ = env.reset(seed=args.seed)
    controller.reset()
    piece = {"obs": [obs], "act": [], "rew": []}
    for t in tqdm(range(args.n_transitions), desc="collect", unit="step", leave=False):
        action = controller(obs) + args.noise * rng.standard_normal(2)
        action = np.clip(action, -1.0, 1.0).astype(np.float32)
        obs, reward, terminated, truncated, info = env.step(action)
        assert not terminated and not truncated, "the continuing data env should never end"
        goals += bool(info["success"])
        piece["obs"].append(obs)
        piece["act"].append(action)
        piece["rew"].append(reward)
        steps = len(piece["act"])
        cut = (info["success"] if args.episode_length == 0 else steps == args.episode_length)
        if cut or t == args.n_transitions - 1:
            buffers.append(EpisodeBuffer(
                id=len(buffers),
                observations={k: np.array([o[k] for o in piece["obs"]], dtype=np.float32) for k in keys},
                actions=np.array(piece["act"], dtype=np.float32),
                rewards=np.array(piece["rew"], dtype=np.float64),
                terminations=np.zeros(steps, dtype=bool),
                truncations=np.r_[np.zeros(steps - 1, dtype=bool), True]))
            piece = {"obs": [obs], "act": [], "rew": []}
    return buffers, goals


def evaluate(env: gym.Env, act, n_episodes: int, seed: int, desc: str, reset=None):
    """Mean return and success rate (``info['success']`` at any step) of ``act`` over episodes of the
    eval env, seeded once at the first reset (as Minari's ``get_average_reference_score``)."""
    returns, successes = [], []
    for i in tqdm(range(n_episodes), desc=desc, leave=False):
        obs, _ = env.reset(seed=seed if i == 0 else None)
        if reset is not None:
            reset()
        ret, success, done = 0.0, False, False
        while not done:
            obs, r, term, trunc, info = env.step(act(obs))
            ret, success, done = ret + float(r), success or bool(info["success"]), term or trunc
        returns.append(ret)
        successes.append(success)
    return float(np.mean(returns)), float(np.mean(successes))


def in_free_cells(maze, buffers) -> float:
    """Fraction of stored ball positions whose cell is not a wall."""
    free = np.array([[cell != 1 for cell in row] for row in maze.maze_map])
    xy = np.concatenate([b.observations["achieved_goal"] for b in buffers]).astype(np.float64)
    rows = np.floor((maze.y_map_center - xy[:, 1]) / maze.maze_size_scaling).astype(int)
    cols = np.floor((xy[:, 0] + maze.x_map_center) / maze.maze_size_scaling).astype(int)
    inside = (rows >= 0) & (rows < free.shape[0]) & (cols >= 0) & (cols < free.shape[1])
    ok = np.zeros(len(xy), dtype=bool)
    ok[inside] = free[rows[inside], cols[inside]]
    return float(ok.mean())


def main(argv=None) -> None:
    args = parse_args(argv)
    command = "python " + shlex.join([sys.argv[0]] + (argv if argv is not None else sys.argv[1:]))
    out = Path(args.out).resolve()
    os.environ["MINARI_DATASETS_PATH"] = str(out)  # minari reads it at call time
    import gymnasium_robotics
    import minari
    gym.register_envs(gymnasium_robotics)

    ds_dir = out / args.dataset_id
    if ds_dir.exists():
        if not args.overwrite:
            sys.exit(f"error: {ds_dir} already exists; pass --overwrite to replace it")
        minari.delete_dataset(args.dataset_id)
    t0 = time.time()

    eid = env_id(args.maze, args.dense)
    reward_type = "dense" if args.dense else "sparse"
    env = gym.make(eid, continuing_task=True, reset_target=True, reward_type=reward_type,
                   max_episode_steps=DATA_MAX_EPISODE_STEPS)
    eval_env = gym.make(eid, maze_map=eval_map(args.maze), continuing_task=not args.eval_terminate,
                        reset_target=False, reward_type=reward_type)
    maze = env.unwrapped.maze

    rng = np.random.default_rng(args.seed)
    buffers, goals = collect(env, WaypointController(maze, rng), rng, args)
    t_collect = time.time() - t0

    expert = WaypointController(eval_env.unwrapped.maze, np.random.default_rng(args.seed + 1))
    ref_max, expert_success = evaluate(eval_env, expert, args.ref_episodes, args.seed + 2,
                                       "ref_max (controller)", reset=expert.reset)
    behaviour = WaypointController(eval_env.unwrapped.maze, np.random.default_rng(args.seed + 5))
    noise_rng = np.random.default_rng(args.seed + 6)
    _, behaviour_success = evaluate(  # the data's own policy: the controller with its action noise
        eval_env, lambda obs: np.clip(behaviour(obs) + args.noise * noise_rng.standard_normal(2), -1, 1)
        .astype(np.float32), args.ref_episodes, args.seed + 7, "behaviour (noisy controller)", reset=behaviour.reset)
    eval_env.action_space.seed(args.seed + 3)
    ref_min, random_success = evaluate(eval_env, lambda obs: eval_env.action_space.sample(),
                                       args.ref_episodes, args.seed + 4, "ref_min (uniform)")

    commit = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                            cwd=Path(__file__).parent).stdout.strip() or "uncommitted"
    split = (f"{args.episode_length}-step pieces" if args.episode_length else "pieces cut where a goal is reached")
    ds = minari.create_dataset_from_buffers(
        args.dataset_id, buffers, env=env.spec, eval_env=eval_env.spec,
        observation_space=float32_space(env.observation_space), action_space=env.action_space,
        algorithm_name="QIteration waypoints + PD controller (D4RL maze2d / Minari pointmaze protocol)",
        code_permalink=f"tools/make_maze_dataset.py@{commit}",
        author="offline-rl single-file reference library",
        ref_min_score=ref_min, ref_max_score=ref_max, num_episodes_average_score=args.ref_episodes,
        description=(f"D4RL maze2d-style data for {eid} ({reward_type} reward): one continuing stream "
                     f"(a new goal each time one is reached) of a Q-iteration waypoint planner + PD "
                     f"controller with N(0, {args.noise}^2) action noise, {split}. Eval env: single goal "
                     f"cell {EVAL_GOAL_CELLS[args.maze]}. Made by: {command}"),
        requirements=[f"gymnasium=={gym.__version__}", f"gymnasium-robotics=={gymnasium_robotics.__version__}",
                      f"mujoco=={__import__('mujoco').__version__}"])

    data_file = ds_dir / "data" / "main_data.hdf5"
    lengths = [len(b.rewards) for b in buffers]
    rets = [float(np.sum(b.rewards)) for b in buffers]
    summary = {
        "command": command, "dataset_id": args.dataset_id, "env": eid, "reward_type": reward_type,
        "eval_env_kwargs": {k: v for k, v in eval_env.spec.kwargs.items() if k != "maze_map"},
        "eval_goal_cell": EVAL_GOAL_CELLS[args.maze], "eval_max_episode_steps": eval_env.spec.max_episode_steps,
        "transitions": int(ds.total_steps), "episodes": int(ds.total_episodes),
        "episode_length": {"mean": float(np.mean(lengths)), "min": int(min(lengths)), "max": int(max(lengths))},
        "goals_reached": int(goals), "steps_per_goal": args.n_transitions / max(goals, 1),
        "mean_episode_return": float(np.mean(rets)), "fraction_in_free_cells": in_free_cells(maze, buffers),
        "ref_min_score": ref_min, "ref_max_score": ref_max, "ref_episodes": args.ref_episodes,
        "controller_success_rate": expert_success, "behaviour_success_rate": behaviour_success,
        "random_success_rate": random_success,
        "file_bytes": data_file.stat().st_size, "collect_time_s": t_collect,
        "wall_time_s": time.time() - t0,
    }
    (ds_dir / "summary.json").write_text(json.dumps(summary, indent=2))
    print(json.dumps(summary, indent=2))
    print(f"done in {summary['wall_time_s']:.0f} s; {data_file} ({summary['file_bytes'] / 2**20:.1f} MiB)")


if __name__ == "__main__":
    main()
