"""Time-aware sources: trending with a learned half-life, and item-to-item transitions.

Both pass the shared conformance suite on its plain (timestamp-free) matrix; the rest uses
synthetic interactions with planted time structure: a catalogue whose best sellers change
(a short memory must win), one whose tastes never change (a long one must), and shoppers
for whom some products are always followed by a fixed next product.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp

from recommender.base import Recommender
from recommender.baselines import Popularity
from recommender.history import history_matrix
from recommender.time_aware import DAY, NO_TIMESTAMPS, RecentPopularity, Transitions
from tests.test_recommenders import RecommenderConformance, planted


class TestRecentPopularity(RecommenderConformance):
    min_lift = 1.5  # non-personalised, like popularity
    has_similar_items = False

    @classmethod
    def make(cls, seed: int = 0) -> Recommender:
        return RecentPopularity(seed=seed)


class TestTransitions(RecommenderConformance):
    @classmethod
    def make(cls, seed: int = 0) -> Recommender:
        return Transitions(window=3, neighbours=30)


# ---- trending -------------------------------------------------------------------------------
N_ITEMS = 60
SPAN = 365 * DAY


def _matrix(frame: pd.DataFrame, n_users: int) -> sp.csr_matrix:
    return history_matrix(frame, (n_users, N_ITEMS), None)


def shifting_shop(seed: int = 0) -> tuple[pd.DataFrame, sp.csr_matrix, int]:
    """A year of sales in which items 0-9 sold most until ten days before its end and items
    50-59 sell in its last week; the validation (the week after) buys what sold that week.
    A half-life of 14 days or more still ranks 0-9 first, 7 days or less ranks 50-59 first."""
    rng = np.random.default_rng(seed)
    n_users = 400
    old = pd.DataFrame({"user": rng.integers(0, n_users, 4000),
                        "item": rng.integers(0, 10, 4000),
                        "ts": rng.integers(SPAN - 45 * DAY, SPAN - 10 * DAY, 4000)})
    steady = pd.DataFrame({"user": rng.integers(0, n_users, 3000),
                           "item": rng.integers(10, 50, 3000),
                           "ts": rng.integers(0, SPAN, 3000)})
    recent = pd.DataFrame({"user": rng.integers(0, n_users, 1000),
                           "item": rng.integers(50, 60, 1000),
                           "ts": rng.integers(SPAN - 7 * DAY, SPAN, 1000)})
    frame = pd.concat([old, steady, recent], ignore_index=True)
    later = pd.DataFrame({"user": np.arange(n_users),
                          "item": rng.integers(50, 60, n_users)})
    return frame, _matrix(later, n_users), n_users


def flat_shop(seed: int = 0) -> tuple[pd.DataFrame, sp.csr_matrix, int]:
    """A year of sales from one fixed Zipf-like popularity; the validation draws from it too."""
    rng = np.random.default_rng(seed)
    n_users = 400
    appeal = 1.0 / np.arange(1, N_ITEMS + 1)
    appeal /= appeal.sum()
    frame = pd.DataFrame({"user": rng.integers(0, n_users, 6000),
                          "item": rng.choice(N_ITEMS, 6000, p=appeal),
                          "ts": rng.integers(0, SPAN, 6000)})
    later = pd.DataFrame({"user": np.repeat(np.arange(n_users), 3),
                          "item": rng.choice(N_ITEMS, 3 * n_users, p=appeal)})
    return frame, _matrix(later, n_users), n_users


def test_trending_learns_a_short_half_life_when_recent_sales_come_back() -> None:
    frame, valid, n_users = shifting_shop()
    train = _matrix(frame, n_users)
    model = RecentPopularity().fit(train, interactions=frame, valid=valid)
    assert model.best_half_life_days <= 7, model.validation
    assert model.validation[model.best_half_life_days] > 1.5 * model.validation[14.0]
    assert model.t_end == int(frame["ts"].max()) and model.note == ""
    ids, _ = model.recommend(np.arange(5), train[:5], k=5)
    assert (ids >= 50).all()  # this week's items, not the all-time best sellers 0-9
    # refit on the same rows with the learned half-life, no validation: the same scores
    again = RecentPopularity(half_life_days=model.best_half_life_days).fit(train, frame)
    np.testing.assert_array_equal(again.scores, model.scores)


def test_trending_learns_a_long_half_life_when_tastes_do_not_change() -> None:
    frame, valid, n_users = flat_shop()
    model = RecentPopularity().fit(_matrix(frame, n_users), interactions=frame, valid=valid)
    assert model.best_half_life_days >= 90, model.validation
    assert model.validation[1.0] < model.validation[model.best_half_life_days]


def test_trending_scores_follow_the_decay_formula() -> None:
    t_end = 100 * DAY
    frame = pd.DataFrame({"user": [0, 1, 2, 0], "item": [0, 0, 1, 2],
                          "ts": [t_end, t_end - 7 * DAY, t_end - 14 * DAY, t_end - 70 * DAY]})
    model = RecentPopularity(half_life_days=7).fit(_matrix(frame, 3), frame)
    raw = np.array([1.0 + 0.5, 0.25, 0.5 ** 10])
    np.testing.assert_allclose(model.scores[:3], raw / raw.max(), rtol=1e-5)
    assert model.best_half_life_days == 7.0
    # an item nobody bought ranks below every bought one
    assert (model.scores[3:] < model.scores[:3].min()).all()


def test_trending_without_timestamps_is_plain_popularity() -> None:
    train, _, _ = planted()
    counts = Popularity().fit(train).counts
    for frame in (None, pd.DataFrame({"user": [0, 1], "item": [3, 4], "ts": [0, 0]})):
        model = RecentPopularity().fit(train, frame)
        assert model.note == NO_TIMESTAMPS and math.isinf(model.best_half_life_days)
        np.testing.assert_allclose(model.scores, counts / counts.max(), rtol=1e-5)
        assert model.describe() == "popular with shoppers"


def test_trending_save_load_round_trip(tmp_path) -> None:
    frame, valid, n_users = shifting_shop()
    train = _matrix(frame, n_users)
    model = RecentPopularity().fit(train, interactions=frame, valid=valid)
    path = model.save(tmp_path / "trending")
    assert path.name == "trending.npz"
    loaded = RecentPopularity.load(path)
    rows = np.arange(10)
    np.testing.assert_array_equal(loaded.score(rows, train[rows]), model.score(rows, train[rows]))
    assert loaded.best_half_life_days == model.best_half_life_days
    assert loaded.validation == model.validation and loaded.t_end == model.t_end
    assert loaded.describe() == model.describe()
    assert model.describe().startswith("popular")


def test_trending_with_an_empty_validation_keeps_its_half_life() -> None:
    frame, _, n_users = shifting_shop()
    train = _matrix(frame, n_users)
    empty = sp.csr_matrix(train.shape, dtype=np.float32)
    model = RecentPopularity(half_life_days=30).fit(train, frame, valid=empty)
    assert model.best_half_life_days == 30.0 and "not learned" in model.note
    assert not model.validation
    with pytest.raises(ValueError, match="shape"):
        RecentPopularity().fit(train, frame, valid=empty[:5])


def test_trending_describes_its_window() -> None:
    model = RecentPopularity()
    model.best_half_life_days = 7.0
    assert model.describe() == "popular this week"
    model.best_half_life_days = 30.0
    assert model.describe() == "popular in the last 30 days"


# ---- transitions ----------------------------------------------------------------------------
FOLLOWS = {3: 17, 8: 41, 25: 9}  # these products are always followed by that next one


def sequences(seed: int = 0, n_users: int = 300) -> pd.DataFrame:
    """Random shopping sequences in which product a is always followed by FOLLOWS[a]."""
    rng = np.random.default_rng(seed)
    rows = []
    for user in range(n_users):
        t = int(rng.integers(0, 1000)) * DAY
        items: list[int] = []
        while len(items) < 12:
            item = int(rng.integers(0, N_ITEMS))
            items.append(item)
            if item in FOLLOWS:
                items.append(FOLLOWS[item])
        for item in items:
            t += int(rng.integers(1, 3 * DAY))
            rows.append((user, item, t))
    frame = pd.DataFrame(rows, columns=["user", "item", "ts"])
    return frame.sample(frac=1.0, random_state=seed).reset_index(drop=True)  # store order


def fitted_transitions(frame: pd.DataFrame | None = None, **options: float) -> Transitions:
    frame = sequences() if frame is None else frame
    n_users = int(frame["user"].max()) + 1
    return Transitions(**options).fit(history_matrix(frame, (n_users, N_ITEMS)), frame)


def test_transitions_recommend_what_always_follows_the_last_item() -> None:
    model = fitted_transitions()
    rng = np.random.default_rng(5)
    plain = np.setdiff1d(np.arange(N_ITEMS), [*FOLLOWS, *FOLLOWS.values()])
    for last, following in FOLLOWS.items():
        # a new shopper: the other rule products long ago, two random ones, then `last`;
        # the recency-weighted row the service builds, so the latest product decides
        others = [item for item in FOLLOWS if item != last]
        earlier = [*others, *(int(i) for i in rng.choice(plain, 2, replace=False))]
        events = pd.DataFrame({"user": 0, "item": [*earlier, last],
                               "ts": np.arange(5) * DAY})
        row = history_matrix(events, (1, N_ITEMS))
        ids, _ = model.recommend(model.n_users + 3, row, k=3)
        assert ids[0] == following, (last, ids)
        assert {FOLLOWS[item] for item in others} <= set(ids[1:])
        # the same user scored in a batch (no single-row path) gets the same scores
        batch = sp.vstack([row, row]).tocsr()
        np.testing.assert_allclose(model.score(np.array([7, 8]), batch)[0],
                                   model.score(np.array([7]), row)[0], rtol=1e-6)


def test_transitions_are_directed_and_ignore_row_order() -> None:
    frame = sequences()
    model = fitted_transitions(frame)
    T = model.transitions.toarray()
    for a, b in FOLLOWS.items():
        assert T[a, b] > 0.9  # b follows every occurrence of a
        assert T[a, b] > 5 * T[b, a]
        assert model.similar_items(a, 3)[0][0] == b
    shuffled = fitted_transitions(frame.sample(frac=1.0, random_state=3))
    np.testing.assert_array_equal(shuffled.transitions.toarray(), T)
    # time runs backwards: now b is followed by a (b also occurs on its own, so its row,
    # normalised by all of b's occurrences, is weaker than a's was)
    backwards = fitted_transitions(frame.assign(ts=-frame["ts"]))
    for a, b in FOLLOWS.items():
        assert backwards.transitions[b, a] > 2 * backwards.transitions[a, b]
        assert backwards.transitions[a, b] < 0.5 * T[a, b]


def test_transition_counts_by_hand() -> None:
    # user 0: A B B C D (B repeated); user 1: C A. window 2, decay 0.5, beta 0
    frame = pd.DataFrame({"user": [0, 0, 0, 0, 0, 1, 1], "item": [0, 1, 1, 2, 3, 2, 0],
                          "ts": [1, 2, 3, 4, 5, 1, 2]})
    n = 4
    model = Transitions(window=2, decay=0.5, beta=0.0, neighbours=10).fit(
        history_matrix(frame, (2, n)), frame.iloc[::-1])
    expected = np.zeros((n, n))
    expected[0, 1], expected[0, 2] = 1.0, 0.5  # A -> B, C (the repeat of B is collapsed)
    expected[1, 2], expected[1, 3] = 1.0, 0.5
    expected[2, 3] = 1.0
    expected[2, 0] = 1.0  # user 1: C -> A
    np.testing.assert_allclose(model.transitions.toarray(), expected)
    normalised = Transitions(window=2, decay=0.5, beta=1.0).fit(
        history_matrix(frame, (2, n)), frame)
    # C occurs twice: its row is divided by 2
    np.testing.assert_allclose(normalised.transitions.toarray()[2], expected[2] / 2)
    # directed: D never leads anywhere, so it explains nothing; C leads to D
    assert model.reason(np.array([3]), 2, "transitions") is None
    assert model.reason(np.array([3, 2]), 3, "transitions").because_of == 2


def test_transitions_reason_names_the_history_item_leading_there() -> None:
    model = fitted_transitions()
    seen = np.array([30, 8, 55])
    reason = model.reason(seen, FOLLOWS[8], "transitions", 1.5)
    assert reason is not None
    assert (reason.source, reason.contribution, reason.because_of) == ("transitions", 1.5, 8)
    seen = np.array([25, 3])
    assert model.reason(seen, FOLLOWS[3], "transitions").because_of == 3
    assert model.reason(seen, FOLLOWS[25], "transitions").because_of == 25
    assert model.reason(np.array([], dtype=np.int64), 9, "transitions") is None


def test_transitions_save_load_round_trip(tmp_path) -> None:
    frame = sequences()
    model = fitted_transitions(frame, window=4, focus=1.5, max_gap_days=30)
    path = model.save(tmp_path / "transitions")
    assert path.name == "transitions.npz"
    loaded = Transitions.load(path)
    assert (loaded.window, loaded.focus, loaded.max_gap_days) == (4, 1.5, 30)
    history = history_matrix(frame, (model.n_users, N_ITEMS))
    rows = np.arange(25)
    np.testing.assert_array_equal(loaded.score(rows, history[rows]),
                                  model.score(rows, history[rows]))
    np.testing.assert_array_equal(loaded.score(np.array([3]), history[[3]]),
                                  model.score(np.array([3]), history[[3]]))
    assert loaded.similar_items(8, 5)[0].tolist() == model.similar_items(8, 5)[0].tolist()


def test_transitions_max_gap_drops_distant_pairs() -> None:
    frame = pd.DataFrame({"user": [0, 0, 0], "item": [0, 1, 2],
                          "ts": [0, DAY, 100 * DAY]})
    model = Transitions(window=2, beta=0.0, max_gap_days=10).fit(
        history_matrix(frame, (1, 3)), frame)
    assert model.transitions[0, 1] == 1.0
    assert model.transitions[0, 2] == 0 and model.transitions[1, 2] == 0


def test_transitions_bad_arguments() -> None:
    with pytest.raises(ValueError):
        Transitions(window=0)
    with pytest.raises(ValueError):
        Transitions(decay=0.0)
    with pytest.raises(ValueError, match="lack column"):
        Transitions().fit(sp.csr_matrix(np.ones((1, 3))), pd.DataFrame({"user": [0]}))


# ---- explanations ---------------------------------------------------------------------------
def test_service_explains_trending_and_what_comes_next() -> None:
    from recommender.base import Reason
    from recommender.hybrid import HybridRecommender
    from recommender.service import RecommendationService

    frame = sequences()
    n_users = int(frame["user"].max()) + 1
    model = HybridRecommender({"trending": RecentPopularity(half_life_days=7),
                               "transitions": Transitions(), "popularity": Popularity()},
                              weights={"trending": 0.2, "transitions": 1.0, "popularity": 0.1})
    model.fit(history_matrix(frame, (n_users, N_ITEMS)),
              {"trending": {"interactions": frame}, "transitions": {"interactions": frame}})
    products = [f"p{i}" for i in range(N_ITEMS)]
    catalog = pd.DataFrame({"id": products, "title": [f"Product {i}" for i in range(N_ITEMS)]})
    service = RecommendationService(model, [f"u{i}" for i in range(n_users)], products,
                                    catalog, frame, half_life=5.0)
    assert service.render(Reason("trending", 1.0), 0) == "trending: popular this week"
    assert service.render(Reason("transitions", 1.0, 8), 41) == "often bought after Product 8"
    # a live shopper whose latest product is p8: p41 always comes next
    for day, product in enumerate(("p30", "p55", "p8")):
        service.record_event("live", product, "purchase", ts=day * DAY)
    recs = service.recommend("live", k=3, explain=True)
    assert recs[0].id == f"p{FOLLOWS[8]}" and recs[0].sources[0] == "transitions"
    # the hybrid names the history product once it routes transitions to `reason`
    assert recs[0].reasons[0] in {"often bought after Product 8", "what shoppers often buy next"}
    related = service.related("p8", k=3)
    assert related[0].id == f"p{FOLLOWS[8]}"
    assert "often bought after Product 8" in related[0].reasons
