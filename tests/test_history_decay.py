"""Calendar-time decay of histories and the hybrid's source search (issue 12).

Planted timestamps check the decay formula to the last digit, that the training cut `t_ref`
stays where training put it (a live event after it weighs 1, not more), and that the learned
half-life is the one the refit and serving use. Planted taste shifts check that the
half-life is learned from validation (short when tastes move, long when they do not), and
the source search picks from its grid on training rows only.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from recommender.history import DAY, HistoryWeighting, history_matrix, time_weights
from recommender.training import (
    HybridConfig,
    history_weighting,
    tune_and_fit,
    tune_sources,
    tuning_split,
)

T_REF = 1_000 * DAY


def test_old_interaction_weighs_exactly_the_half_life_formula() -> None:
    frame = pd.DataFrame({"user": [0, 0, 0, 1], "item": [0, 1, 2, 0],
                          "ts": [T_REF - 10 * DAY, T_REF - 3 * DAY, T_REF, T_REF - DAY]})
    weights = time_weights(frame, half_life_days=5.0).set_index(["user", "item"])["weight"]
    assert weights[(0, 2)] == 1.0
    assert weights[(0, 0)] == pytest.approx(0.25, rel=1e-6)  # two half-lives
    assert weights[(0, 1)] == pytest.approx(0.5 ** (3 / 5), rel=1e-6)
    assert weights[(1, 0)] == pytest.approx(0.5 ** (1 / 5), rel=1e-6)
    assert weights[(0, 0)] < weights[(0, 1)] < weights[(0, 2)]
    matrix = history_matrix(frame, (2, 3), decay="time", half_life_days=5.0)
    assert matrix[0, 0] == pytest.approx(0.25, rel=1e-6)


def test_a_pair_weighs_by_its_latest_interaction() -> None:
    frame = pd.DataFrame({"user": [0, 0, 0], "item": [0, 0, 1],
                          "ts": [T_REF - 100 * DAY, T_REF - 5 * DAY, T_REF]})
    matrix = history_matrix(frame, (1, 2), decay="time", half_life_days=5.0)
    assert matrix[0, 0] == pytest.approx(0.5, rel=1e-6)


def test_t_ref_is_fixed_and_a_later_event_is_capped_at_one() -> None:
    trained = pd.DataFrame({"user": [0, 0], "item": [0, 1], "ts": [T_REF - 5 * DAY, T_REF]})
    weighting = HistoryWeighting("time", None, 5.0, float(T_REF))
    before = weighting.matrix(trained, (1, 4)).toarray()
    live = pd.concat([trained, pd.DataFrame({"user": [0], "item": [2],
                                             "ts": [T_REF + 30 * DAY]})], ignore_index=True)
    after = weighting.matrix(live, (1, 4)).toarray()
    # the new event does not move the cut: the trained rows keep their weights exactly
    np.testing.assert_array_equal(after[0, :2], before[0, :2])
    assert after[0, 2] == 1.0
    assert before[0, 0] == pytest.approx(0.5, rel=1e-6)
    # without a fixed cut the latest event would become "now" and age everything else
    moved = history_matrix(live, (1, 4), decay="time", half_life_days=5.0).toarray()
    assert moved[0, 1] < before[0, 1]


def test_bad_decay_settings_are_rejected() -> None:
    frame = pd.DataFrame({"user": [0], "item": [0], "ts": [0]})
    with pytest.raises(ValueError, match="decay must be one of"):
        history_matrix(frame, (1, 1), decay="calendar")
    with pytest.raises(ValueError, match="needs half_life_days"):
        history_matrix(frame, (1, 1), decay="time")
    with pytest.raises(ValueError, match="half_life_days must be > 0"):
        time_weights(frame, 0.0)
    with pytest.raises(ValueError, match="history_decay must be one of"):
        history_weighting(HybridConfig(history_decay="days"))


# ---- learning the half-life and the source parameters ---------------------------------------
N_USERS, N_ITEMS, PER = 240, 64, 16  # four tastes of 16 products


def taste_shop(shift: bool, seed: int = 0) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training rows, later validation rows). Every user buys 8 products of one taste over
    most of a year and 3 in its last two weeks; with `shift` the recent ones (and the
    validation) are another taste, without it the same one."""
    rng = np.random.default_rng(seed)
    rows, later = [], []
    for user in range(N_USERS):
        old = rng.integers(4)
        new = (old + 1 + rng.integers(3)) % 4 if shift else old
        old_items = rng.choice(PER, 8, replace=False) + old * PER
        new_items = rng.choice(np.setdiff1d(np.arange(PER) + new * PER, old_items), 5,
                               replace=False)
        rows += [(user, i, int(rng.integers(0, 300 * DAY))) for i in old_items]
        rows += [(user, i, int(rng.integers(350 * DAY, 364 * DAY))) for i in new_items[:3]]
        later += [(user, i, 366 * DAY) for i in new_items[3:]]
    frame = pd.DataFrame(rows, columns=["user", "item", "ts"])
    return frame, pd.DataFrame(later, columns=["user", "item", "ts"])


def small_config(**changes) -> HybridConfig:  # noqa: ANN003
    return HybridConfig(**{**HybridConfig().to_dict(), "gnn": None, "graph_filter": None,
                           "graph_paths": False, "transitions": None, "trending": None,
                           "kind_weights": None, "candidates": N_ITEMS,
                           "als": {"factors": 16, "regularization": 1.0, "alpha": 5.0,
                                   "iterations": 10, "seed": 0},
                           "itemknn": {"neighbours": 20}, **changes})


@pytest.mark.parametrize(("shift", "expect_short"), [(True, True), (False, False)])
def test_the_half_life_is_learned_from_validation(shift: bool, expect_short: bool) -> None:
    frame, later = taste_shop(shift)
    valid = history_matrix(later, (N_USERS, N_ITEMS), None)
    config = small_config(history_decay="time", tune_sources=False)
    tuned, report = tune_sources(config, frame, valid, (N_USERS, N_ITEMS))
    days = tuned.history_half_life_days
    assert days == report["history_half_life_days"]
    assert days in config.history_grid_days
    assert [d for d, _ in report["history_grid"]] == list(config.history_grid_days)
    assert (days <= 30) is expect_short, report["history_grid"]


def test_the_refit_keeps_the_learned_half_life_and_its_training_cut() -> None:
    frame, _ = taste_shop(True)
    config = small_config(history_decay="time", tune_sources=False)
    model = tune_and_fit(config, None, frame, (N_USERS, N_ITEMS), log=lambda _: None)
    history = model.tuning["history"]
    assert history["decay"] == "time"
    assert history["half_life_days"] == model.tuning["sources"]["history_half_life_days"]
    assert history["t_ref"] == float(frame["ts"].max())  # the refit's cut, not the fit part's
    fit_part, _ = tuning_split(frame, config.valid_protocol, config.valid_ratio)
    assert fit_part["ts"].max() < history["t_ref"]
    # what serving rebuilds from the record is what the sources were refitted on
    rebuilt = HistoryWeighting.from_dict(history).matrix(frame, (N_USERS, N_ITEMS))
    assert rebuilt.nnz == frame.groupby(["user", "item"]).ngroups
    assert rebuilt.max() == 1.0
    assert rebuilt.data.min() == pytest.approx(
        0.5 ** ((frame["ts"].max() - frame["ts"].min()) / (history["half_life_days"] * DAY)),
        rel=1e-4)


def test_source_search_chooses_from_its_grid_on_training_rows_only() -> None:
    frame, _ = taste_shop(True)
    grid = {"regularization": (1.0, 1e7), "alpha": (5.0, 0.0)}  # 1e7 / alpha 0 flatten ALS
    config = small_config(source_grid=grid, tune_sources=True)
    model = tune_and_fit(config, None, frame, (N_USERS, N_ITEMS), log=lambda _: None)
    report = model.tuning["sources"]
    tried = [tuple(params.values()) for params, _ in report["als_grid"]]
    assert sorted(tried) == sorted((r, a) for r in grid["regularization"]
                                   for a in grid["alpha"])
    scores = {tuple(p.values()): v for p, v in report["als_grid"]}
    chosen = tuple(report["als"].values())
    first = tried[0]
    assert first == (1.0, 5.0)  # the configured parameters are tried first
    # the configured set is kept unless another beats it by 1 %, and then the best wins
    assert scores[chosen] >= max(scores.values()) / 1.01
    if chosen != first:
        assert scores[chosen] == max(scores.values()) > scores[first] * 1.01
    assert len(set(scores.values())) > 1  # the grid made a difference
    assert (model.sources["als"].regularization, model.sources["als"].alpha) == chosen
    # the same search run by hand on the tuning split of the training rows gives the same
    # scores: nothing but those rows went in
    fit_part, valid = tuning_split(frame, config.valid_protocol, config.valid_ratio)
    _, again = tune_sources(config, fit_part,
                            history_matrix(valid, (N_USERS, N_ITEMS), None),
                            (N_USERS, N_ITEMS), log=lambda _: None)
    assert again["als_grid"] == report["als_grid"]
    assert valid.index.isin(frame.index).all()
