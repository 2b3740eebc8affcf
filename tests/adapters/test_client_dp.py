"""fedmedlora.federation.client_dp: the coordinator's noise, calibration, budget and accountant."""

from __future__ import annotations

import numpy as np
import pytest

from fedmedlora.config import ClientDPConfig
from fedmedlora.federation.client_dp import ClientLevelDP, calibrate_noise, gaussian_rounds_epsilon
from fedmedlora.privacy import global_norm


def test_epsilon_matches_dp_accounting_and_the_issue_figures():
    from dp_accounting import dp_event, rdp

    acc = rdp.RdpAccountant()
    acc.compose(dp_event.GaussianDpEvent(1.0), 10)
    assert gaussian_rounds_epsilon(1.0, 10, 1e-5, sites=5) == pytest.approx(acc.get_epsilon(1e-5), rel=1e-6)
    assert gaussian_rounds_epsilon(1.0, 1, 1e-5) == pytest.approx(4.7, abs=0.05)
    assert gaussian_rounds_epsilon(1.0, 10, 1e-5) == pytest.approx(19.0, abs=0.1)


def test_calibration_and_affordable_rounds():
    sigma = calibrate_noise(8.0, 3, 1e-5)
    assert gaussian_rounds_epsilon(sigma, 3, 1e-5) <= 8.0 < gaussian_rounds_epsilon(0.99 * sigma, 3, 1e-5)
    dp = ClientLevelDP(ClientDPConfig(noise_multiplier=1.0, max_epsilon=10.0), rounds=5, sites=3)
    n = dp.affordable_rounds(5)
    assert dp.epsilon_after(n) <= 10.0 < dp.epsilon_after(n + 1)
    assert ClientLevelDP(ClientDPConfig(target_epsilon=8.0), rounds=3, sites=3).noise_multiplier == pytest.approx(sigma)


def test_release_reclips_noises_and_composes():
    dp = ClientLevelDP(ClientDPConfig(noise_multiplier=2.0, clip_norm=1.0, reproducible_noise=True), rounds=2, sites=2)
    ref = {"w": np.zeros(50000, np.float32)}
    honest = {"w": np.full(50000, 1e-3, np.float32)}  # norm ≈ 0.22: inside the bound
    hostile = {"w": np.full(50000, 1.0, np.float32)}  # norm ≈ 224: clipped by the server to 1
    mean, record = dp.release([honest, hostile], [0.5, 0.5], ref, ["a", "b"], 1)
    assert record["over_clip"] == ["b"]
    assert record["noise_std"] == pytest.approx(2.0 * 1.0 * 0.5)
    assert mean["w"].std() == pytest.approx(1.0, rel=0.03)  # the noise, std σ·C·max w
    signal = 0.5 * honest["w"] + 0.5 * hostile["w"] / global_norm(hostile)
    assert abs(float((mean["w"] - signal).mean())) < 0.02  # the hostile site moved the mean by at most C·w
    assert record["epsilon"] == pytest.approx(gaussian_rounds_epsilon(2.0, 1, 1e-5))
    _, second = dp.release([honest, honest], [0.5, 0.5], ref, ["a", "b"], 2)
    assert second["epsilon"] == pytest.approx(gaussian_rounds_epsilon(2.0, 2, 1e-5))
    # resumed after one round: the accountant starts where the run stopped
    resumed = ClientLevelDP(ClientDPConfig(noise_multiplier=2.0), rounds=2, sites=2, done_rounds=1)
    assert resumed.epsilon == pytest.approx(record["epsilon"])


def test_uniform_weights_under_dp():
    dp = ClientLevelDP(ClientDPConfig(noise_multiplier=1.0, weights="uniform"), rounds=1, sites=3)
    assert dp.weights([0.7, 0.2, 0.1]).tolist() == pytest.approx([1 / 3] * 3)
    sized = ClientLevelDP(ClientDPConfig(noise_multiplier=1.0), rounds=1, sites=3)
    assert sized.weights([0.7, 0.2, 0.1]).tolist() == pytest.approx([0.7, 0.2, 0.1])
