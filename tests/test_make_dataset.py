"""tools/make_dataset.py on a tiny budget: five well-formed Minari levels, deterministic on CPU."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import ROOT

FLAGS = ["--total-steps", "600", "--eval-freq", "200", "--eval-episodes", "1", "--n-transitions", "300",
         "--n-random", "200", "--replay-cap", "250", "--ref-episodes", "2", "--threads", "1"]
LEVELS = ("random", "medium", "medium-replay", "expert", "medium-expert")


def make(out):
    res = subprocess.run([sys.executable, "tools/make_dataset.py", "--out", str(out), *FLAGS], cwd=ROOT,
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    import minari
    return {lvl: minari.MinariDataset(out / "local" / "hopper" / f"{lvl}-v0" / "data") for lvl in LEVELS}


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    return [make(tmp_path_factory.mktemp(name)) for name in ("a", "b")]


def episodes(ds):
    return list(ds.iterate_episodes())


def test_levels_are_well_formed(two_runs):
    ds = two_runs[0]
    assert ds["random"].total_steps == 200
    assert ds["medium"].total_steps == ds["expert"].total_steps == 300
    assert ds["medium-replay"].total_steps <= 250
    assert ds["medium-expert"].total_steps == 600
    meta = ds["medium"].storage.metadata
    assert meta["ref_min_score"] < meta["ref_max_score"]
    assert all(d.storage.metadata["ref_max_score"] == meta["ref_max_score"] for d in ds.values())
    assert json.loads(meta["eval_env_spec"])["id"] == "Hopper-v5"
    for lvl, d in ds.items():
        for ep in episodes(d):
            assert ep.observations.shape == (len(ep.actions) + 1, 11) and ep.observations.dtype == np.float32
            assert np.all(np.abs(ep.actions) <= 1)
            # terminations and truncations stay apart; each episode ends in exactly one of them
            assert not np.any(ep.terminations & ep.truncations), lvl
            assert ep.terminations[-1] != ep.truncations[-1], lvl
            assert not np.any(ep.terminations[:-1] | ep.truncations[:-1]), lvl


def test_same_flags_give_identical_data(two_runs):
    a, b = two_runs
    for lvl in LEVELS:
        assert a[lvl].storage.metadata["ref_min_score"] == b[lvl].storage.metadata["ref_min_score"]
        for ea, eb in zip(episodes(a[lvl]), episodes(b[lvl]), strict=True):
            for key in ("observations", "actions", "rewards", "terminations", "truncations"):
                np.testing.assert_array_equal(getattr(ea, key), getattr(eb, key), err_msg=f"{lvl}.{key}")
