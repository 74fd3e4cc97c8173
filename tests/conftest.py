"""Shared test helpers: load an algorithm file as a module (the files are scripts, not a package)."""
import importlib.util
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
