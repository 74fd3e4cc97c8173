"""AWAC: the capped advantage weights, a short run, resume equality."""
import math

import pytest
import torch

from conftest import check_resume_matches, load_algorithm


@pytest.fixture(scope="module")
def awac():
    return load_algorithm("awac")


def test_actor_loss_weights_are_exp_advantage_capped(awac):
    logp = torch.tensor([-1.0, -2.0, -0.5], requires_grad=True)
    adv = torch.tensor([0.0, 1.0, 10.0])  # exp(3 * 10) is capped at 100
    loss = awac.awac_actor_loss(logp, adv, awac_lambda=1 / 3, weight_max=100.0)
    weights = [1.0, math.exp(3.0), 100.0]
    assert loss.item() == pytest.approx(-(weights[0] * -1 + weights[1] * -2 + weights[2] * -0.5) / 3)
    loss.backward()
    torch.testing.assert_close(logp.grad, -torch.tensor(weights) / 3)


def test_short_run_writes_metrics_and_resumes_identically(awac, tmp_path):
    check_resume_matches(awac, tmp_path)
