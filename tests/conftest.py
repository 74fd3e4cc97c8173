"""Shared test helpers: load an algorithm file as a module (the files are scripts, not a package),
tiny configs on the shipped data, and the interrupt-then-resume helper."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATASETS = Path(os.environ.get("SHIPPED_DATASETS", ROOT / "datasets")) / "local"
SHIPPED = DATASETS / "hopper"
ALGORITHMS = ["iac_cpe", "td3_bc", "iql", "awac", "spot", "por"]
ONLINE = ["iac_cpe", "iql", "awac", "spot"]  # the files that fine-tune online

# small networks and short phases, per file, so a few hundred updates take seconds
TINY = dict(hidden_dim=32, batch_size=64, eval_freq=100, n_episodes=2, progress_bar=False, wandb_mode="disabled")
TINY_ALGO = {"iac_cpe": dict(n_hidden=2), "awac": dict(n_hidden=2), "spot": dict(vae_steps=100, vae_hidden_dim=32),
             "por": dict(execute_hidden_dim=32)}


def load_algorithm(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "algorithms" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def load_tool(name: str, folder: str = "tools"):
    spec = importlib.util.spec_from_file_location(name, ROOT / folder / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def iac_cpe():
    return load_algorithm("iac_cpe")


@pytest.fixture(params=ALGORITHMS)
def algo(request):
    """Each algorithm file as a module, one test per file."""
    return load_algorithm(request.param)


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch, tmp_path):
    """No test may reach wandb's servers or the user's Minari folder."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))


def tiny(mod) -> dict:
    """The tiny settings of algorithm module ``mod``."""
    return {**TINY, **TINY_ALGO.get(mod.ALGORITHM, {})}


def make_config(mod, tmp_path, **kw):
    """A tiny, fast config of algorithm module ``mod`` on the shipped Hopper medium-replay data."""
    base = dict(dataset_path=str(SHIPPED / "medium-replay-v0"), output_dir=str(tmp_path / "runs"), name="t",
                **tiny(mod))
    return mod.TrainConfig(**{**base, **kw})


def read_metrics(run_dir):
    return [json.loads(line) for line in (Path(run_dir) / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "updates_per_s")} for r in rows]


def assert_same_networks(*run_dirs):
    """Every network (not optimiser or schedule) in the runs' checkpoints is bit-identical."""
    import torch
    a, b = (torch.load(Path(r) / "checkpoint.pt", weights_only=False)["agent"] for r in run_dirs)
    assert a.keys() == b.keys()
    for net in a:
        if not net.endswith(("opt", "sched")):
            for k in a[net]:
                torch.testing.assert_close(a[net][k], b[net][k], rtol=0, atol=0)


def train_interrupted(mod, monkeypatch, cfg, step: int) -> Path:
    """Run ``mod.train(cfg)`` until it is interrupted (KeyboardInterrupt, as Ctrl-C) right after
    its checkpoint at ``step``; returns the run directory."""
    save = mod.save_checkpoint

    def save_then_crash(path, agent, progress, *rest):
        save(path, agent, progress, *rest)
        if progress["step"] == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(mod, "save_checkpoint", save_then_crash)
    with pytest.raises(KeyboardInterrupt):
        mod.train(cfg)
    monkeypatch.setattr(mod, "save_checkpoint", save)
    return Path(cfg.output_dir) / cfg.name


def dataset(mod, states, actions, rewards, next_states, dones):
    """A ``mod.Dataset`` of the given transitions (no env, no references)."""
    import numpy as np
    return mod.Dataset(*(np.asarray(x, np.float32) for x in (states, actions, rewards, next_states, dones)),
                       np.zeros(0), None, None, None, "t", [])
