"""Shared test helpers: load an algorithm file as a module (the files are scripts, not a package)."""
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = Path(os.environ.get("SHIPPED_DATASETS", ROOT / "datasets")) / "local" / "hopper"


def load_algorithm(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "algorithms" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def iac_cpe():
    return load_algorithm("iac_cpe")


@pytest.fixture(autouse=True)
def _offline_env(monkeypatch, tmp_path):
    """No test may reach wandb's servers or the user's Minari folder."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("MINARI_DATASETS_PATH", str(tmp_path / "minari"))


TINY = dict(hidden_dim=32, n_hidden=2, batch_size=64, eval_freq=100, n_episodes=2, progress_bar=False,
            wandb_mode="disabled")


def make_config(mod, tmp_path, **kw):
    """A tiny, fast config of algorithm module ``mod`` on the shipped medium-replay data."""
    base = dict(dataset_path=str(SHIPPED / "medium-replay-v0"), output_dir=str(tmp_path / "runs"), name="t", **TINY)
    return mod.TrainConfig(**{**base, **kw})


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def without_timing(rows):
    return [{k: v for k, v in r.items() if k not in ("elapsed_s", "updates_per_s")} for r in rows]


def check_resume_matches(mod, tmp_path):
    """300 updates straight vs 200, then ``--resume`` to 300: same metrics, same networks.
    Returns the two run dirs (full, resumed)."""
    import torch
    full = mod.train(make_config(mod, tmp_path, max_timesteps=300, name="full"))
    part = mod.train(make_config(mod, tmp_path, max_timesteps=200, name="part"))
    assert (part / "checkpoint.pt").exists() and [r["step"] for r in read_metrics(part)] == [100, 200]
    with (part / "metrics.jsonl").open("a") as f:  # an eval written after the last checkpoint
        f.write(json.dumps({"step": 250}) + "\n")
    cfg = mod.parse_config(["--resume", str(part), "--max_timesteps", "300"])
    assert cfg.hidden_dim == TINY["hidden_dim"] and cfg.name == "part"  # the saved config is the base
    mod.train(cfg)
    assert [r["step"] for r in read_metrics(part)] == [100, 200, 300]
    assert without_timing(read_metrics(part)) == without_timing(read_metrics(full))
    assert_same_networks(full, part)
    return full, part


def assert_same_networks(*run_dirs):
    """Every network (not optimiser or schedule) in the runs' checkpoints is bit-identical."""
    import torch
    a, b = (torch.load(r / "checkpoint.pt", weights_only=False)["agent"] for r in run_dirs)
    for net in a:
        if not net.endswith(("opt", "sched")):
            for k in a[net]:
                torch.testing.assert_close(a[net][k], b[net][k], rtol=0, atol=0)


def interrupt_after(mod, monkeypatch, step: int):
    """Make ``mod.train`` raise KeyboardInterrupt right after saving its checkpoint at ``step``;
    returns a function that undoes it."""
    save = mod.save_checkpoint

    def save_then_crash(path, agent, at, *rest, **kw):
        save(path, agent, at, *rest, **kw)
        if at == step:
            raise KeyboardInterrupt

    monkeypatch.setattr(mod, "save_checkpoint", save_then_crash)
    return lambda: monkeypatch.setattr(mod, "save_checkpoint", save)


def train_interrupted(mod, monkeypatch, cfg, step: int) -> Path:
    """Run ``mod.train(cfg)`` until it is interrupted right after its checkpoint at ``step``;
    returns the run directory."""
    restore = interrupt_after(mod, monkeypatch, step)
    with pytest.raises(KeyboardInterrupt):
        mod.train(cfg)
    restore()
    return Path(cfg.output_dir) / cfg.name
