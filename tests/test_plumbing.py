"""The shared plumbing, run against every algorithm file: one copy in all six, every config valid,
the CLI with both --config spellings and wandb offline with no login, run provenance, Minari and
D4RL loading, each bad input of the README, the non-finite stop on a really diverging run,
resume equality after an interruption, evaluation of a finished run, video."""
import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
import torch
import yaml

from conftest import (
    ALGORITHMS,
    ROOT,
    SHIPPED,
    assert_same_networks,
    load_algorithm,
    load_tool,
    make_config,
    read_metrics,
    tiny,
    train_interrupted,
    without_timing,
)

plumbing = load_tool("plumbing")
MEDIUM_REPLAY = SHIPPED / "medium-replay-v0"


def cli(algo_name, *args, env=None, timeout=300):
    """The user's command line, as a subprocess from the repository root."""
    return subprocess.run([sys.executable, f"algorithms/{algo_name}.py", *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)


def flags(mod) -> list:
    return [x for k, v in tiny(mod).items() if k not in ("progress_bar", "wandb_mode") for x in (f"--{k}", v)]


# ------------------------------------------------------------------------------- one shape
def test_shared_plumbing_is_the_same_in_every_file():
    assert plumbing.drifted() == []
    texts = plumbing.files()
    assert sorted(texts) == sorted(ALGORITHMS)
    for name, text in texts.items():  # the algorithm comes first, the plumbing below its banner
        parts = plumbing.split(text, name)
        assert text.index("class Agent:") < text.index(plumbing.BANNER) and "def train(" in parts["block"]


def test_a_drifted_copy_is_detected(tmp_path, monkeypatch):
    for name in ("iac_cpe", "spot"):
        shutil.copy(ROOT / "algorithms" / f"{name}.py", tmp_path / f"{name}.py")
    path = tmp_path / "spot.py"
    path.write_text(path.read_text().replace("    return run_dir\n", "    return run_dir  # edited\n", 1))
    monkeypatch.setattr(plumbing, "ALGORITHMS", tmp_path)
    assert plumbing.drifted() == ["spot"]
    assert plumbing.write() == ["spot"] and plumbing.drifted() == []


def test_every_config_parses_against_its_dataclass_and_holds_every_field(algo):
    paths = sorted((ROOT / "configs" / algo.ALGORITHM).rglob("*.yaml"))
    assert len(paths) >= 29
    names = [f.name for f in dataclasses.fields(algo.TrainConfig)]
    for path in paths:
        assert list(yaml.safe_load(path.read_text())) == names, path
        cfg = algo.parse_config(["--config", str(path)])
        algo.validate(cfg)
        data = [cfg.dataset_id, cfg.dataset_path]
        assert sum(x is not None for x in data) == 1, path
        if cfg.dataset_path and "local" in path.parts:
            assert (ROOT / cfg.dataset_path).is_dir(), path


def test_configs_are_what_make_configs_writes(capsys):
    """Every YAML comes from tools/make_configs.py's tables (their sources are named there)."""
    load_tool("make_configs").main(["--check"])
    assert "configs up to date" in capsys.readouterr().out


# ------------------------------------------------------------------------------------- the CLI
def test_cli_trains_writes_provenance_and_logs_wandb_offline_without_login(algo, tmp_path):
    """The README's command with --config, wandb in its default mode (offline) with no login or
    network, then the run folder: metrics, checkpoint, config, run_info, the final line."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_MODE"} | {"HOME": str(tmp_path)}
    out = cli(algo.ALGORITHM, "--config", f"configs/{algo.ALGORITHM}/local/hopper/medium-replay.yaml",
              "--max_timesteps", 200, *flags(algo), "--output_dir", tmp_path / "runs", "--name", "q", env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    run = tmp_path / "runs" / "q"
    rows = read_metrics(run)
    assert [(r["step"], r["phase"], r["env_steps"]) for r in rows if r["phase"] != "pretrain"] == \
        [(100, "offline", 0), (200, "offline", 0)]
    assert all(np.isfinite(r["normalized_score"]) and np.isfinite(r["return_mean"]) for r in rows if "return_mean" in r)
    last = out.stdout.strip().splitlines()[-1]
    assert last == f"final normalised score {rows[-1]['normalized_score']:.1f} (behaviour data mean 14.3)"
    assert torch.load(run / "checkpoint.pt", weights_only=False)["progress"]["step"] == 200
    assert list((run / "wandb").glob("offline-run-*")), "wandb offline run folder missing"
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["max_timesteps"] == 200 and saved["hidden_dim"] == 32
    info = json.loads((run / "run_info.json").read_text())
    assert f"algorithms/{algo.ALGORITHM}.py --config" in info["command"]
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    assert info["git_commit"] == (head or None) and isinstance(info["git_dirty"], (bool, type(None)))
    assert {"torch", "gymnasium", "mujoco", "minari"} <= info["versions"].keys()
    assert info["device"].startswith("cpu")
    data_file = MEDIUM_REPLAY / "data" / "main_data.hdf5"
    sha = {k: v for k, v in info["dataset_sha256"].items() if k.endswith("main_data.hdf5")}
    assert list(sha.values()) == [hashlib.sha256(data_file.read_bytes()).hexdigest()]


@pytest.mark.parametrize("spelling", ["--config", "--config_path", "--config="])
def test_both_config_spellings_read_the_yaml(algo, tmp_path, spelling):
    path = ROOT / "configs" / algo.ALGORITHM / "local" / "hopper" / "medium.yaml"
    args = [spelling + str(path)] if spelling.endswith("=") else [spelling, str(path)]
    cfg = algo.parse_config(args + ["--seed", "3"])
    assert cfg.dataset_path == "datasets/local/hopper/medium-v0" and cfg.seed == 3
    assert cfg == dataclasses.replace(algo.TrainConfig(**yaml.safe_load(path.read_text())), seed=3)


# ----------------------------------------------------------------------------------- the data
def write_d4rl(path, obs=None, n=7, act_dim=3):
    """A D4RL-format file. Default: 7 rows, ep1 rows 0-2 (timeout at 2), ep2 rows 3-4 (terminal
    at 4), ep3 rows 5-6; with ``obs`` the rows are those observations, one long episode."""
    obs = np.arange(n * 11, dtype=np.float64).reshape(n, 11) if obs is None else obs
    n = len(obs)
    with h5py.File(path, "w") as f:
        f["observations"] = obs
        f["actions"] = np.full((n, act_dim), 0.5, np.float32)
        f["rewards"] = np.arange(n, dtype=np.float32)
        f["terminals"] = np.array([0, 0, 0, 0, 1, 0, 0] + [0] * (n - 7), bool)
        f["timeouts"] = np.array([0, 0, 1, 0, 0, 0, 0] + [0] * (n - 7), bool)
    return path


def test_d4rl_file_becomes_the_qlearning_dataset(algo, tmp_path):
    data = algo.load_dataset(algo.TrainConfig(dataset_path=str(write_d4rl(tmp_path / "hopper-medium-v2.hdf5"))))
    kept = [0, 1, 3, 4, 5]  # the timed-out step 2 and the last row 6 are dropped, as d4rl does
    obs = np.arange(7 * 11).reshape(7, 11)
    np.testing.assert_array_equal(data.states, obs[kept])
    np.testing.assert_array_equal(data.next_states, obs[[i + 1 for i in kept]])
    np.testing.assert_array_equal(data.rewards, kept)
    np.testing.assert_array_equal(data.dones, [0, 0, 0, 1, 0])
    np.testing.assert_array_equal(data.episode_returns, [0 + 1 + 2, 3 + 4])  # the unfinished ep3 is not one
    assert (data.env_spec.id, data.ref_min, data.ref_max) == ("Hopper-v4", -20.272305, 3234.3)


def test_trains_on_a_d4rl_file_and_scores_with_d4rl_references(algo, tmp_path):
    import minari
    episode = next(minari.MinariDataset(MEDIUM_REPLAY / "data").iterate_episodes())
    path = write_d4rl(tmp_path / "hopper-medium-replay-v2.hdf5", obs=episode.observations.astype(np.float64))
    run = algo.train(make_config(algo, tmp_path, dataset_path=str(path), max_timesteps=100))
    row = read_metrics(run)[-1]
    assert row["normalized_score"] == pytest.approx(100 * (row["return_mean"] + 20.272305) / (3234.3 + 20.272305))
    spec = json.loads(torch.load(run / "checkpoint.pt", weights_only=False)["task"]["env_spec"])
    assert spec["id"] == "Hopper-v4"


def test_shipped_minari_dataset_loads_with_its_references(algo, tmp_path):
    import minari
    data = algo.load_dataset(make_config(algo, tmp_path))
    ds = minari.MinariDataset(MEDIUM_REPLAY / "data")
    assert len(data.rewards) == ds.total_steps and len(data.episode_returns) == ds.total_episodes
    assert data.dones.sum() == sum(ep.terminations.sum() for ep in ds.iterate_episodes())
    assert data.env_spec.id == "Hopper-v5" and data.states.shape[1] == 11 and data.actions.shape[1] == 3
    assert data.ref_min < data.ref_max and not data.goal_reaching


def test_a_minari_id_without_references_logs_raw_returns(algo, tmp_path, capsys):
    import minari
    from minari.data_collector import EpisodeBuffer
    rng = np.random.default_rng(0)
    eps = [EpisodeBuffer(observations=rng.normal(size=(21, 11)).astype(np.float32),
                         actions=rng.uniform(-1, 1, (20, 3)).astype(np.float32), rewards=rng.normal(size=20),
                         terminations=np.zeros(20, bool), truncations=np.r_[np.zeros(19, bool), True])
           for _ in range(3)]
    minari.create_dataset_from_buffers("test/hopper/norefs-v0", eps, env="Hopper-v5")
    run = algo.train(make_config(algo, tmp_path, dataset_path=None, dataset_id="test/hopper/norefs-v0",
                                 max_timesteps=100))
    assert read_metrics(run)[-1]["normalized_score"] is None
    assert "carries no reference returns" in capsys.readouterr().out


def test_reference_override_normalises_returns(algo, tmp_path):
    run = algo.train(make_config(algo, tmp_path, max_timesteps=100, ref_min_score=0.0, ref_max_score=1000.0))
    row = read_metrics(run)[-1]
    assert row["normalized_score"] == pytest.approx(row["return_mean"] / 10)


# ---------------------------------------------------------------------------------- bad input
BAD_INPUT = {
    "no dataset": (dict(dataset_path=None), "exactly one of dataset_id"),
    "two datasets": (dict(dataset_id="mujoco/hopper/medium-v0"), "exactly one of dataset_id"),
    "missing dataset_path": (dict(dataset_path="nowhere/hopper-medium-v2.hdf5"), "dataset_path nowhere"),
    "missing Minari id": (dict(dataset_path=None, dataset_id="mujoco/hopper/medium-v0"),
                          "minari download mujoco/hopper/medium-v0"),
    "not a dataset folder": (dict(dataset_path=str(ROOT / "configs")), "neither a Minari dataset folder"),
    "env of another robot": (dict(env="HalfCheetah-v5"), "set env to the dataset's env"),
    "buffer too small": (dict(buffer_size=10), "buffer_size 10 cannot hold"),
    "non-positive batch": (dict(batch_size=0), "batch_size must be a positive integer"),
    "bad wandb mode": (dict(wandb_mode="sometimes"), "wandb_mode must be"),
}


@pytest.mark.parametrize("case", list(BAD_INPUT))
def test_bad_input_stops_before_training_and_names_the_fix(algo, tmp_path, case):
    kw, message = BAD_INPUT[case]
    with pytest.raises(algo.InputError, match=message):
        algo.train(make_config(algo, tmp_path, **kw))
    assert not (tmp_path / "runs").exists()


def test_unreadable_and_incomplete_hdf5_files_are_named(algo, tmp_path):
    garbage = tmp_path / "hopper-medium-v2.hdf5"
    garbage.write_bytes(os.urandom(4096))  # named like a D4RL file, but not HDF5 (a broken download)
    with pytest.raises(algo.InputError, match="is not a readable HDF5 file.*fetch_d4rl"):
        algo.train(make_config(algo, tmp_path, dataset_path=str(garbage)))
    incomplete = tmp_path / "walker2d-medium-v2.hdf5"
    with h5py.File(incomplete, "w") as f:
        f["observations"] = np.zeros((3, 17))
    with pytest.raises(algo.InputError, match=r"lacks D4RL keys \['actions', 'rewards', 'terminals', 'timeouts'\]"):
        algo.train(make_config(algo, tmp_path, dataset_path=str(incomplete)))
    odd = write_d4rl(tmp_path / "halfcheetah-medium-v2.hdf5")  # hopper-shaped data under a halfcheetah name
    with pytest.raises(algo.InputError, match="HalfCheetah-v4"):
        algo.train(make_config(algo, tmp_path, dataset_path=str(odd)))


def test_config_errors_are_named(algo, tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dataset_id: x\nseeed: 3\n")
    with pytest.raises(algo.InputError, match="seeed"):
        algo.parse_config(["--config", str(bad)])
    with pytest.raises(SystemExit):
        algo.parse_config(["--dataset_id", "x", "--seeed", "3"])
    assert "--seeed" in capsys.readouterr().err
    with pytest.raises(algo.InputError, match="batch_size"):
        algo.parse_config(["--dataset_id", "x", "--batch_size", "abc"])
    with pytest.raises(algo.InputError, match="progress_bar must be true or false"):
        algo.parse_config(["--dataset_id", "x", "--progress_bar", "maybe"])
    with pytest.raises(algo.InputError, match="no config file configs/nope.yaml"):
        algo.parse_config(["--config", "configs/nope.yaml"])
    with pytest.raises(algo.InputError, match="is not a run directory"):
        algo.parse_config(["--resume", str(tmp_path)])
    with pytest.raises(algo.InputError, match="no checkpoint.pt"):
        algo.train(algo.parse_config(["--dataset_path", str(MEDIUM_REPLAY), "--resume", str(tmp_path),
                                      "--config", str(ROOT / "configs" / algo.ALGORITHM / "local/hopper/medium.yaml")]))


def test_cli_reports_bad_input_without_a_traceback(algo, tmp_path):
    garbage = tmp_path / "hopper-medium-v2.hdf5"
    garbage.write_bytes(os.urandom(4096))
    for args in (["--config", "configs/nope.yaml"], ["--dataset_path", garbage]):
        out = cli(algo.ALGORITHM, *args)
        assert out.returncode == 1 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr, out.stderr


def no_network_prefix():
    """A command prefix that runs a process with no network at all (a fresh network namespace),
    or None when this machine cannot make one."""
    for prefix in (["unshare", "-n"], ["unshare", "-rn"]):
        try:
            if subprocess.run(prefix + ["true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.SubprocessError):
            pass
    return None


def test_download_without_network_fails_fast_and_says_how_to_get_the_data(algo, tmp_path):
    """A real absence of network: the process runs in a network namespace with no interface up."""
    prefix = no_network_prefix()
    if prefix is None:
        pytest.skip("cannot create a network namespace here (unshare)")
    env = {**os.environ, "MINARI_DATASETS_PATH": str(tmp_path)}
    env.pop("HF_HUB_OFFLINE", None)
    cmd = prefix + [sys.executable, f"algorithms/{algo.ALGORITHM}.py", "--dataset_id", "mujoco/hopper/medium-v0",
                    "--download", "true", "--output_dir", str(tmp_path / "runs")]
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 1, out.stderr
    assert "download of dataset_id 'mujoco/hopper/medium-v0' failed: no network" in out.stderr
    assert "minari download mujoco/hopper/medium-v0" in out.stderr and "Traceback" not in out.stderr


# ------------------------------------------------------------------------ divergence, resume
def test_a_diverging_run_stops_names_the_loss_and_keeps_the_last_good_checkpoint(algo, tmp_path):
    lrs = ("value_lr", "policy_lr") if algo.ALGORITHM == "por" else ("actor_lr", "critic_lr")
    pretrained = algo.ALGORITHM == "spot"  # its VAE phase (not diverging) ends with a checkpoint at step 0
    kept = r"The last good checkpoint \(.*, step 0\) is kept" if pretrained else "No checkpoint was written yet"
    with pytest.raises(FloatingPointError, match=r"non-finite \w+.* at step \d+; training stopped. " + kept):
        algo.train(make_config(algo, tmp_path, max_timesteps=200, name="fresh", **{k: 1e12 for k in lrs}))
    assert (tmp_path / "runs" / "fresh" / "checkpoint.pt").exists() == pretrained

    run = algo.train(make_config(algo, tmp_path, max_timesteps=100))  # trains fine to its checkpoint at 100
    args = ["--resume", str(run), "--max_timesteps", "200"]
    with pytest.raises(FloatingPointError) as err:  # the same run resumed with absurd learning rates
        algo.train(algo.parse_config(args + [x for k in lrs for x in (f"--{k}", "1e12")]))
    assert re.match(r"non-finite \w+.* at step 10\d; ", str(err.value)), str(err.value)
    assert f"last good checkpoint ({run / 'checkpoint.pt'}, step 100) is kept" in str(err.value)
    assert torch.load(run / "checkpoint.pt", weights_only=False)["progress"]["step"] == 100
    assert [r["step"] for r in read_metrics(run)][-1] == 100
    algo.train(algo.parse_config(args + [x for k in lrs for x in (f"--{k}", "3e-4")]))  # and it goes on
    assert read_metrics(run)[-1]["step"] == 200 and math.isfinite(read_metrics(run)[-1]["return_mean"])


TWO_PHASE = {"spot": dict(vae_steps=200), "por": dict(guide="por_q", guide_pretrain_steps=200)}


def test_an_interrupted_run_resumes_to_the_same_metrics_and_networks(algo, tmp_path, monkeypatch):
    """Interrupted (as by Ctrl-C) after a checkpoint, then --resume: the same records and networks
    as a run that was never interrupted; two-phase files also inside their pre-training phase."""
    extra = TWO_PHASE.get(algo.ALGORITHM, {})
    full = algo.train(make_config(algo, tmp_path, max_timesteps=300, name="full", **extra))
    for crash in ([-100] if extra else []) + [200]:
        part = train_interrupted(algo, monkeypatch, make_config(algo, tmp_path, max_timesteps=300,
                                                                name=f"part{crash}", **extra), crash)
        assert read_metrics(part)[-1]["step"] == crash
        with (part / "metrics.jsonl").open("a") as f:  # a record written after the last checkpoint
            f.write(json.dumps({"step": crash + 50}) + "\n")
        resumed = algo.parse_config(["--resume", str(part)])
        assert resumed.hidden_dim == 32 and resumed.name == f"part{crash}"  # the saved config is the base
        algo.train(resumed)
        assert without_timing(read_metrics(part)) == without_timing(read_metrics(full))
        assert_same_networks(full, part)
        assert len(json.loads((part / "run_info.json").read_text())["resumes"]) == 1


def test_evaluate_a_finished_run_without_its_dataset(algo, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(MEDIUM_REPLAY, data)
    run = algo.train(make_config(algo, tmp_path, dataset_path=str(data), max_timesteps=100))
    shutil.rmtree(data)  # evaluation needs the checkpoint only: policy, state normaliser, task
    result = algo.evaluate_run(algo.parse_config(["--evaluate", str(run), "--n_episodes", "3"]))
    assert result["n_episodes"] == 3 and result["step"] == 100 and math.isfinite(result["normalized_score"])
    again = algo.evaluate_run(algo.parse_config(["--evaluate", str(run), "--n_episodes", "2"]))
    assert again["return_mean"] == pytest.approx(read_metrics(run)[-1]["return_mean"])  # the same 2 starts
    assert [json.loads(r)["n_episodes"] for r in (run / "evaluations.jsonl").read_text().splitlines()] == [3, 2]


def test_save_video_records_an_evaluation_episode_per_evaluation_and_logs_it(tmp_path, monkeypatch):
    """MP4s in the run folder and in the offline wandb run, at training and from --evaluate."""
    import imageio.v3 as iio

    td3_bc = load_algorithm("td3_bc")
    monkeypatch.delenv("WANDB_MODE")
    monkeypatch.setenv("HOME", str(tmp_path))
    run = td3_bc.train(make_config(td3_bc, tmp_path, max_timesteps=200, save_video=True, n_episodes=1,
                                   wandb_mode=None))
    videos = sorted((run / "videos").glob("*.mp4"))
    assert [v.name for v in videos] == ["step100.mp4", "step200.mp4"]
    frames = iio.imread(videos[-1])
    assert frames.ndim == 4 and len(frames) > 1 and frames.shape[-1] == 3 and frames.std() > 0
    assert len(list((run / "wandb").rglob("media/videos/*.mp4"))) == 2
    result = td3_bc.evaluate_run(td3_bc.parse_config(["--evaluate", str(run), "--n_episodes", "1",
                                                      "--save_video", "true"]))
    assert result["video"].endswith(".mp4") and len(iio.imread(result["video"])) > 1
