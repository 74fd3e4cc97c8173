"""tools/sweep.py on a local Ray instance: tiny real runs on the shipped data."""

import json
import subprocess
import sys

import pytest

from conftest import ROOT

pytest.importorskip("ray")

TINY_SETS = ["max_timesteps=200", "eval_freq=100", "n_episodes=2", "hidden_dim=32",
             "batch_size=64", "wandb_mode=disabled"]


def sweep(tmp_path, *extra):
    cmd = [sys.executable, str(ROOT / "tools" / "sweep.py"), "--configs", "local/hopper/medium-replay",
           "--out", str(tmp_path / "runs"), "--num-cpus", "2"]
    for s in TINY_SETS:
        cmd += ["--set", s]
    return subprocess.run(cmd + list(extra), capture_output=True, text=True, cwd=tmp_path, timeout=600)


def test_sweep_runs_two_runs_and_writes_a_table_then_skips_them(tmp_path):
    res = sweep(tmp_path, "--algorithms", "td3_bc", "--seeds", "0", "1", "--table", str(tmp_path / "t"))
    assert res.returncode == 0, res.stdout + res.stderr
    for seed in (0, 1):
        run = tmp_path / "runs" / f"td3_bc-local_hopper_medium-replay-seed{seed}"
        assert json.loads((run / "sweep.json").read_text())["status"] == "finished"
        steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert steps[-1] == 200
    table = (tmp_path / "t.md").read_text()
    assert "| local/hopper/medium-replay-v0 | td3_bc | 2 | 200 |" in table
    again = sweep(tmp_path, "--algorithms", "td3_bc", "--seeds", "0", "1")
    assert again.returncode == 0 and "2 already finished, 0 to run" in again.stdout


def test_a_crashed_run_is_reported_retried_once_and_does_not_stop_the_others(tmp_path):
    # iql.bogus is not a field of IQL's config: that run fails at start, twice; td3_bc still runs
    res = sweep(tmp_path, "--algorithms", "iql", "td3_bc", "--set", "iql.bogus=1")
    assert res.returncode == 1
    out = res.stdout + res.stderr
    assert out.count("FAILED iql-local_hopper_medium-replay-seed0") == 2
    assert "retrying iql-local_hopper_medium-replay-seed0" in out
    assert "unrecognized arguments: --bogus 1" in out  # the log tail is shown
    assert "1 runs failed twice" in out
    assert (tmp_path / "runs" / "td3_bc-local_hopper_medium-replay-seed0" / "sweep.json").exists()


def test_an_interrupted_run_is_resumed_from_its_checkpoint(tmp_path):
    res = sweep(tmp_path, "--algorithms", "td3_bc", "--set", "max_timesteps=100")
    assert res.returncode == 0, res.stdout + res.stderr
    run = tmp_path / "runs" / "td3_bc-local_hopper_medium-replay-seed0"
    (run / "sweep.json").unlink()  # as if the sweep was stopped after the checkpoint at step 100
    res = sweep(tmp_path, "--algorithms", "td3_bc")
    assert res.returncode == 0, res.stdout + res.stderr
    log = (tmp_path / "runs" / f"{run.name}.log").read_text()
    assert f"--resume {run}" in log and "resuming at step 100" in log
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == [100, 200]


def test_bad_grid_names_the_field(tmp_path):
    res = sweep(tmp_path, "--algorithms", "nope")
    assert res.returncode == 2
    assert "--algorithms nope: no algorithms/nope.py" in res.stderr
    res = sweep(tmp_path, "--algorithms", "td3_bc", "--set", "max_timesteps")
    assert res.returncode == 2 and "expected key=value" in res.stderr
