"""Average metric, BWT, FWT and forgetting on a hand-made accuracy matrix."""

from __future__ import annotations

import pytest

from polytask.grow.metrics import plot_matrix, summarise


def test_metrics_by_hand():
    # experiences: 0 -> task a; 1 -> tasks b, c; 2 -> task d
    matrix = [
        [0.9, None, None, None],
        [0.8, 0.7, 0.6, None],
        [0.85, 0.5, 0.65, 0.95],
    ]
    before = [None, 0.55, 0.45, 0.6]
    random = [0.5, 0.5, 0.5, 0.5]
    result = summarise(matrix, [0, 1, 1, 2], before, random)
    assert result["average"] == pytest.approx((0.85 + 0.5 + 0.65 + 0.95) / 4)
    assert result["bwt"] == pytest.approx(((0.85 - 0.9) + (0.5 - 0.7) + (0.65 - 0.6)) / 3)
    assert result["fwt"] == pytest.approx(((0.55 - 0.5) + (0.45 - 0.5) + (0.6 - 0.5)) / 3)
    forgetting = result["forgetting"]
    assert forgetting[0] == pytest.approx(0.9 - 0.85)
    assert forgetting[1] == pytest.approx(0.7 - 0.5)
    assert forgetting[2] == pytest.approx(0.6 - 0.65)  # improved since: negative
    assert forgetting[3] is None


def test_forgetting_is_the_drop_from_the_best_earlier_value():
    matrix = [[0.9, None, None], [0.95, 0.8, None], [0.7, 0.85, 0.9]]
    result = summarise(matrix, [0, 1, 2])
    assert result["forgetting"][0] == pytest.approx(0.95 - 0.7)
    assert result["forgetting"][1] == pytest.approx(-0.05)
    assert result["forgetting"][2] is None
    assert result["fwt"] is None and result["mean_forgetting"] == pytest.approx(0.1)


def test_heat_map_is_written(tmp_path):
    plot_matrix([[0.9, None], [0.8, 0.7]], ["a", "b"], ["0", "1"], "title", tmp_path / "m.png")
    assert (tmp_path / "m.png").stat().st_size > 1000
