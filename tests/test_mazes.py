"""Goal-reaching maze tasks in every file: the Dict flattening order at training and evaluation, the
D4RL AntMaze transition rule, each algorithm's maze reward rule, success-rate scoring, the D4RL
AntMaze env and its coordinates checked on data, refusal of data from another maze, and a short
run of each file on the shipped PointMaze data and on a D4RL-format AntMaze file."""
import math

import gymnasium as gym
import h5py
import numpy as np
import pytest
import torch

from conftest import DATASETS, ROOT, load_algorithm, load_tool, make_config, read_metrics

POINTMAZE = DATASETS / "pointmaze"
UMAZE_CELLS = {"free": [(1, 1), (1, 2), (1, 3), (2, 3), (3, 1), (3, 2), (3, 3)],  # D4RL's U_MAZE_TEST (row, col)
               "wall": [(2, 1), (2, 2), (0, 2), (4, 2)]}


@pytest.fixture(scope="module")
def iac_cpe():
    return load_algorithm("iac_cpe")


def d4rl_xy(cell):
    """D4RL's position of a U-maze cell's centre: the start cell (1, 1) is the origin, x along the
    columns and y along the rows, 4 per cell (d4rl/locomotion/maze_env.py _rowcol_to_xy)."""
    return np.array([4.0 * (cell[1] - 1), 4.0 * (cell[0] - 1)])


def write_d4rl_antmaze(path, xy, terminals=None, timeouts=None, seed=0):
    """A D4RL-format AntMaze file: observations (n, 29) with the given D4RL x, y and a real ant's
    other 27 entries, actions (n, 8), rewards = terminals, timeouts."""
    n = len(xy)
    rng = np.random.default_rng(seed)
    body = np.tile(np.r_[0.55, 1.0, np.zeros(25)], (n, 1)) + 0.01 * rng.normal(size=(n, 27))
    terminals = np.zeros(n, bool) if terminals is None else np.asarray(terminals, bool)
    with h5py.File(path, "w") as f:
        f["observations"] = np.concatenate([np.asarray(xy, float), body], 1)
        f["actions"] = rng.uniform(-1, 1, (n, 8)).astype(np.float32)
        f["rewards"] = terminals.astype(np.float32)
        f["terminals"] = terminals
        f["timeouts"] = np.zeros(n, bool) if timeouts is None else np.asarray(timeouts, bool)
    return path


def corridor_walk(n, seed=0):
    """n D4RL x, y points wandering along the U-maze's corridor (never into a wall)."""
    rng = np.random.default_rng(seed)
    path = np.array([d4rl_xy(c) for c in [(1, 1), (1, 2), (1, 3), (2, 3), (3, 3), (3, 2), (3, 1)]])
    t = np.linspace(0, len(path) - 1, n)
    xy = np.array([path[int(a)] + (a % 1) * (path[min(int(a) + 1, len(path) - 1)] - path[int(a)]) for a in t])
    return xy + rng.uniform(-0.5, 0.5, xy.shape)


# --------------------------------------------------------------------------------- Dict data
def test_dict_observations_flatten_in_the_key_order_the_eval_env_sees(iac_cpe, tmp_path):
    import minari
    ds = minari.MinariDataset(POINTMAZE / "umaze-v0" / "data")
    episode = next(ds.iterate_episodes())
    flat = iac_cpe.flatten_observations(episode.observations, ds.observation_space)
    assert flat.shape == (len(episode.actions) + 1, 8)  # achieved_goal (2), desired_goal (2), observation (4)
    np.testing.assert_array_equal(flat[:, :2], episode.observations["achieved_goal"])
    np.testing.assert_array_equal(flat[:, 2:4], episode.observations["desired_goal"])
    np.testing.assert_array_equal(flat[:, 4:], episode.observations["observation"])
    data = iac_cpe.load_dataset(make_config(iac_cpe, tmp_path, dataset_path=str(POINTMAZE / "umaze-v0")))
    task = iac_cpe.task_of(make_config(iac_cpe, tmp_path, n_episodes=None), data)
    raw, wrapped = gym.make(data.env_spec), iac_cpe.make_env(task)
    raw_obs, _ = raw.reset(seed=3)
    wrapped_obs, _ = wrapped.reset(seed=3)
    np.testing.assert_array_equal(wrapped_obs.astype(np.float32), iac_cpe.flatten_observations(
        {k: v[None] for k, v in raw_obs.items()}, raw.observation_space)[0])
    assert data.goal_reaching and task["goal_reaching"] and task["n_episodes"] == 100


def test_unsupported_observation_spaces_are_named(iac_cpe):
    with pytest.raises(iac_cpe.InputError, match="Discrete.*not supported"):
        iac_cpe.flatten_observations(np.zeros((3, 1)), gym.spaces.Discrete(4))


# ------------------------------------------------------------------------ D4RL AntMaze files
def test_d4rl_antmaze_file_keeps_the_qlearning_rule_with_goal_terminals(iac_cpe, tmp_path):
    """Rows 0-5 one trajectory that passes the goal at row 2 (terminal) and goes on, a timeout at
    row 3; rows 4-5 another."""
    xy = [d4rl_xy(c) for c in [(3, 2), (3, 1), (3, 1), (1, 1), (1, 2), (1, 3)]]
    path = write_d4rl_antmaze(tmp_path / "antmaze-umaze-v2.hdf5", xy, terminals=[0, 1, 0, 0, 0, 0],
                              timeouts=[0, 0, 0, 1, 0, 0])
    data = iac_cpe.load_dataset(iac_cpe.TrainConfig(dataset_path=str(path)))
    kept = [0, 1, 2, 4]  # the timed-out row 3 and the last row 5 are dropped, as d4rl.qlearning_dataset does
    with h5py.File(path) as f:
        obs = f["observations"][()]
    np.testing.assert_allclose(data.states, obs[kept].astype(np.float32))
    np.testing.assert_allclose(data.next_states, obs[[1, 2, 3, 5]].astype(np.float32))  # on past the goal
    np.testing.assert_array_equal(data.dones, [0, 1, 0, 0])  # reaching the goal stops bootstrapping
    np.testing.assert_array_equal(data.rewards, [0, 1, 0, 0])
    assert data.goal_reaching and data.d4rl_maze == "umaze" and (data.ref_min, data.ref_max) == (0.0, 1.0)
    assert data.env_spec.id == "AntMaze_UMaze-v4" and data.env_spec.kwargs["continuing_task"] is False


# the official maze rules: (normalise states, reward r -> r') per file, for r in {0, 1}
MAZE_REWARDS = {"iql": (False, (-1.0, 0.0)), "por": (False, (-1.0, 0.0)), "spot": (False, (-1.0, 0.0)),
                "td3_bc": (True, (-1.0, 0.0)), "awac": (True, (-1.0, 0.0)), "iac_cpe": (True, (-1.0, 0.0))}


@pytest.mark.parametrize("name", list(MAZE_REWARDS))
def test_each_file_applies_its_official_maze_reward_and_normalisation(name, tmp_path):
    mod = load_algorithm(name)
    cfg = mod.parse_config(["--config", str(ROOT / f"configs/{name}/d4rl/antmaze/umaze.yaml")])
    xy = corridor_walk(50)
    data = mod.load_dataset(mod.TrainConfig(dataset_path=str(write_d4rl_antmaze(
        tmp_path / "antmaze-umaze-v2.hdf5", xy, terminals=np.arange(50) % 10 == 9))))
    normalize, scale, shift = mod.preprocessing(cfg, data)
    assert (normalize, (shift, scale + shift)) == MAZE_REWARDS[name]
    locomotion = mod.load_dataset(make_config(mod, tmp_path))
    assert mod.preprocessing(mod.TrainConfig(dataset_id="x"), locomotion)[2] == 0.0  # no shift off mazes
    if name == "spot":  # its antmaze_center_reward gives the goal its value
        assert mod.preprocessing(mod.TrainConfig(dataset_id="x", antmaze_center_reward=2.0), data)[1:] == (3.0, -1.0)


def test_the_d4rl_antmaze_env_puts_d4rl_cells_where_d4rl_has_them(iac_cpe):
    """The coordinate mapping, checked against D4RL's own cell formula: every free cell's centre of
    D4RL's U-maze (x, y in D4RL's frame) is a free cell of the env, every wall cell a wall."""
    for maze in ("umaze", "medium", "large"):
        task = {"env_spec": iac_cpe.d4rl_maze_spec(maze).to_json(), "d4rl_maze": maze}
        env = iac_cpe.make_env(task)
        obs, _ = env.reset(seed=0)
        assert obs.shape == (29,) and np.abs(obs[:2]).max() < 1.5  # starts near D4RL's origin
        rows = iac_cpe.D4RL_MAZES[maze][1]
        goal = next((i, row.index("g")) for i, row in enumerate(rows) if "g" in row)
        assert np.abs(env.unwrapped.goal - env.offset - d4rl_xy(goal)).max() <= 1.0  # noised goal cell
        m = env.unwrapped.maze
        for i, row in enumerate(rows):
            for j, cell in enumerate(row):
                gx, gy = d4rl_xy((i, j)) + env.offset
                r, c = int(np.floor((m.y_map_center - gy) / 4)), int(np.floor((gx + m.x_map_center) / 4))
                assert (m.maze_map[r][c] == 1) == (cell == "1"), (maze, i, j)
        model = env.unwrapped.ant_env.model  # D4RL's ant.xml dynamics
        assert model.opt.timestep == 0.02 and (model.actuator_gear[:, 0] == 30).all()


def test_a_d4rl_file_whose_states_are_not_in_the_corridors_is_refused(iac_cpe, tmp_path):
    mirrored = corridor_walk(200) * [1, -1]  # y flipped: the frame Gymnasium-Robotics uses for the same list
    path = write_d4rl_antmaze(tmp_path / "antmaze-umaze-v2.hdf5", mirrored)
    with pytest.raises(iac_cpe.InputError, match=r"\d+% of the states of antmaze-umaze-v2 lie inside walls"):
        iac_cpe.train(make_config(iac_cpe, tmp_path, dataset_path=str(path)))
    assert not (tmp_path / "runs").exists()


def test_each_file_trains_on_a_d4rl_antmaze_file_end_to_end(algo, tmp_path):
    terminals = np.zeros(400, bool)
    terminals[[150, 151]] = True
    path = write_d4rl_antmaze(tmp_path / "antmaze-umaze-v2.hdf5", corridor_walk(400), terminals,
                              timeouts=np.arange(400) % 200 == 199)
    run = algo.train(make_config(algo, tmp_path, dataset_path=str(path), max_timesteps=100, n_episodes=2))
    row = read_metrics(run)[-1]
    assert row["success_rate"] in (0.0, 0.5, 1.0) and row["normalized_score"] == 100 * row["success_rate"]
    task = torch.load(run / "checkpoint.pt", weights_only=False)["task"]
    assert task["d4rl_maze"] == "umaze" and task["goal_reaching"]


# ------------------------------------------------------------------------------ PointMaze data
def test_each_file_trains_on_shipped_pointmaze_data_and_reports_a_success_rate(algo, tmp_path, capsys):
    run = algo.train(make_config(algo, tmp_path, dataset_path=str(POINTMAZE / "umaze-v0"), max_timesteps=300,
                                 n_episodes=None))
    rows = read_metrics(run)
    assert [r["step"] for r in rows if r["phase"] == "offline"] == [100, 200, 300]
    for r in rows[-3:]:
        assert 0 <= r["success_rate"] <= 1 and math.isclose(r["normalized_score"], 100 * r["success_rate"])
        assert math.isfinite(r["return_mean"])
    assert torch.load(run / "checkpoint.pt", weights_only=False)["task"]["n_episodes"] == 100  # maze default
    assert capsys.readouterr().out.strip().endswith(f"final success rate x 100 {rows[-1]['normalized_score']:.1f}")


def test_success_rate_counts_episodes_that_reach_their_goal(iac_cpe, tmp_path):
    """A planner-driven policy reaches every goal; standing still (starts are never at the goal) none."""
    maker = load_tool("make_maze_dataset")
    data = iac_cpe.load_dataset(make_config(iac_cpe, tmp_path, dataset_path=str(POINTMAZE / "umaze-v0")))
    task = iac_cpe.task_of(make_config(iac_cpe, tmp_path), data)
    envs = iac_cpe.make_env(task, 20)
    controllers = [maker.WaypointController(e.unwrapped.maze, np.random.default_rng(i))
                   for i, e in enumerate(envs.envs)]

    class Planner:  # obs (n, 8): achieved_goal, desired_goal, observation (x, y, vx, vy)
        def act(self, obs):
            o = obs.numpy().astype(np.float64)
            return torch.as_tensor(np.stack([c({"achieved_goal": x[:2], "desired_goal": x[2:4], "observation": x[4:]})
                                             for c, x in zip(controllers, o)]), dtype=torch.float32)

    class Still:
        def act(self, obs):
            return torch.zeros(len(obs), 2)

    returns, success = iac_cpe.evaluate(envs, Planner(), 0, torch.device("cpu"))
    assert success.all() and (iac_cpe.scores(returns, success, task) == 100).all()
    returns, success = iac_cpe.evaluate(envs, Still(), 0, torch.device("cpu"))
    assert not success.any() and (returns == 0).all()
    np.testing.assert_array_equal(iac_cpe.scores(returns, success, task), 100.0 * success)


def test_data_from_another_maze_layout_is_refused(iac_cpe, tmp_path):
    """Same observation width, other maze: an env override with other walls, and a Dict dataset
    whose stored evaluation env is another maze than its data (until env names one with its walls)."""
    with pytest.raises(iac_cpe.InputError, match="env PointMaze_Medium-v3 has other walls than the maze"):
        iac_cpe.train(make_config(iac_cpe, tmp_path, dataset_path=str(POINTMAZE / "umaze-v0"),
                                  env="PointMaze_Medium-v3"))
    import minari
    episodes = list(minari.MinariDataset(POINTMAZE / "medium-v0" / "data").iterate_episodes())[:3]
    from minari.data_collector import EpisodeBuffer
    buffers = [EpisodeBuffer(observations=e.observations, actions=e.actions, rewards=e.rewards,
                             terminations=e.terminations, truncations=e.truncations) for e in episodes]
    minari.create_dataset_from_buffers("test/pointmaze/mixed-v0", buffers, env=iac_cpe.env_spec("PointMaze_Medium-v3"),
                                       eval_env=iac_cpe.env_spec("PointMaze_UMaze-v3"), algorithm_name="test")
    with pytest.raises(iac_cpe.InputError, match="lie inside walls or outside the maze.*env: set to an env"):
        iac_cpe.train(make_config(iac_cpe, tmp_path, dataset_path=None, dataset_id="test/pointmaze/mixed-v0"))
    assert not (tmp_path / "runs").exists()
    run = iac_cpe.train(make_config(iac_cpe, tmp_path, dataset_path=None, dataset_id="test/pointmaze/mixed-v0",
                                    env="PointMaze_Medium-v3", max_timesteps=100))  # the data's walls: it runs
    assert 0 <= read_metrics(run)[-1]["success_rate"] <= 1


def test_a_minari_antmaze_dataset_trains_through_its_dict_observations(iac_cpe, tmp_path):
    """Minari's D4RL/antmaze layout: AntMaze-v4 Dict observations (27 + 2 + 2 wide), a stored
    evaluation env; here made from a short random-action stream of the real env."""
    import minari
    from minari.data_collector import EpisodeBuffer
    spec = iac_cpe.env_spec("AntMaze_UMaze-v4")
    env = gym.make(spec, continuing_task=True)
    env.action_space.seed(0)
    obs, _ = env.reset(seed=0)
    steps = [obs]
    actions = [env.action_space.sample() for _ in range(300)]
    for a in actions:
        steps.append(env.step(a)[0])
    buffer = EpisodeBuffer(observations={k: np.array([o[k] for o in steps]) for k in obs},
                           actions=np.array(actions), rewards=np.zeros(300), terminations=np.zeros(300, bool),
                           truncations=np.r_[np.zeros(299, bool), True])
    minari.create_dataset_from_buffers("test/antmaze/random-v0", [buffer], env=env.spec, algorithm_name="random",
                                       eval_env=iac_cpe.dataclasses.replace(spec, kwargs={**spec.kwargs,
                                                                                            "continuing_task": False}))
    run = iac_cpe.train(make_config(iac_cpe, tmp_path, dataset_path=None, dataset_id="test/antmaze/random-v0",
                                    max_timesteps=100))
    assert torch.load(run / "checkpoint.pt", weights_only=False)["agent"]["normalizer"]["mean"].shape == (31,)
    assert read_metrics(run)[-1]["success_rate"] in (0.0, 0.5, 1.0)
