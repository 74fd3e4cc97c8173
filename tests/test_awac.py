"""AWAC: the capped advantage weights, a short run, resume equality."""
import json
import math

import pytest
import torch

from conftest import SHIPPED, load_algorithm

TINY = dict(hidden_dim=32, n_hidden=2, batch_size=64, eval_freq=100, n_episodes=2, progress_bar=False,
            wandb_mode="disabled")


@pytest.fixture(scope="module")
def awac():
    return load_algorithm("awac")


def config(mod, tmp_path, **kw):
    base = dict(dataset_path=str(SHIPPED / "medium-replay-v0"), output_dir=str(tmp_path / "runs"), name="t", **TINY)
    return mod.TrainConfig(**{**base, **kw})


def read_metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_actor_loss_weights_are_exp_advantage_capped(awac):
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([0.0, 1.0, 10.0])  # exp(3 * 10) is capped at 100
    loss = awac.awac_actor_loss(logp, adv, awac_lambda=1 / 3, weight_max=100.0)
    weights = [1.0, math.exp(3.0), 100.0]
    assert loss.item() == pytest.approx(-(weights[0] * -1 + weights[1] * -2 + weights[2] * -0.5) / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, -torch.tensor(weights) / 3)


def test_short_run_writes_metrics_and_resumes_identically(awac, tmp_path):
    full = awac.train(config(awac, tmp_path, max_timesteps=300, name="full"))
    part = awac.train(config(awac, tmp_path, max_timesteps=200, name="part"))
    assert (part / "checkpoint.pt").exists() and [r["step"] for r in read_metrics(part)] == [100, 200]
    awac.train(awac.parse_config(["--resume", str(part), "--max_timesteps", "300"]))
    drop = lambda rows: [{k: v for k, v in r.items() if k not in ("elapsed_s", "updates_per_s")} for r in rows]  # noqa: E731
    assert drop(read_metrics(part)) == drop(read_metrics(full))
