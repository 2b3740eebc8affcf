"""fedmedlora.screening: size caps, loss and update-norm checks, each naming the site and the reason."""

from __future__ import annotations

import math

import pytest

from fedmedlora.screening import ScreeningSettings, cap_sizes, screen_losses, screen_norms

S = ScreeningSettings()


def test_cap_sizes_at_ten_times_the_median_with_three_sites():
    sizes, notes = cap_sizes(["a", "b", "c"], [100, 120, 1e300], S)
    assert sizes == [100, 120, 1200] and list(notes) == ["c"]
    # two sites: no median reference, only the absolute bound
    sizes, notes = cap_sizes(["a", "b"], [100, 5000], S)
    assert sizes == [100, 5000] and notes == {}
    sizes, notes = cap_sizes(["a", "b"], [100, 1e300], S)
    assert sizes[1] == S.max_size and "capped" in notes["b"]
    assert cap_sizes(["a", "b", "c"], [1, 2, 1e9], ScreeningSettings(max_size_factor=None))[1] == {}


def test_screen_losses():
    bad = screen_losses(["a", "b", "c", "d"], [1.2, -1e300, math.inf, 101.0])
    assert sorted(bad) == ["b", "c", "d"] and "outside [0, 100.0]" in bad["b"]


@pytest.mark.parametrize(
    ("norms", "settings", "excluded"),
    [
        ([1.0, 1.2, 1e6], S, ["c"]),
        ([1.0, 1.2, 11.0], S, []),  # 11 / median 1.2 < 10
        ([1.0, 1e6], S, []),  # two sites: the median cannot tell who is honest
        ([1.0, 1.2, 3.0], ScreeningSettings(max_update_norm=2.0), ["c"]),
        ([1.0, math.nan, 1.1], S, ["b"]),
    ],
)
def test_screen_norms(norms, settings, excluded):
    sites = ["a", "b", "c"][: len(norms)]
    assert sorted(screen_norms(sites, norms, settings)) == excluded
