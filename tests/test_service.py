"""Training from a store, serving by id: filters, cold start, events, reasons, versions."""

from __future__ import annotations

import json

import numpy as np
import pytest

from kg.embedded import EmbeddedStore
from kg.schema import DataError
from recommender.service import RecommendationService, UnknownIdError
from recommender.training import HybridConfig, current_version, train_recommender
from tests.shop_graph import PURCHASES, small_shop

TINY = HybridConfig(
    als={"factors": 4, "regularization": 0.1, "alpha": 5.0, "iterations": 5},
    itemknn={"neighbours": 10},
    gnn={"dim": 8, "layers": 2, "epochs": 4, "eval_every": 2, "patience": 2,
         "batch_size": 8, "learning_rate": 0.01, "device": "cpu"},
)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):  # noqa: ANN201
    ws = tmp_path_factory.mktemp("ws")
    with EmbeddedStore(ws / "graph") as store:
        store.load(small_shop())
        summary = train_recommender(store, ws, TINY, log=lambda _: None)
    assert summary["interactions"] == 30  # u4 bought p6 twice: one edge
    return ws


@pytest.fixture
def service(workspace) -> RecommendationService:  # noqa: ANN001
    return RecommendationService.load(workspace)


def ids(recs: list) -> list[str]:
    return [r.id for r in recs]


def test_known_user_gets_unseen_available_products(service: RecommendationService) -> None:
    recs = service.recommend("u1", k=5)
    bought = set(PURCHASES["u1"])
    assert recs and not bought & set(ids(recs))
    assert "p7" not in ids(recs)  # out of stock
    scores = [r.score for r in recs]
    assert scores == sorted(scores, reverse=True)


def test_filters(service: RecommendationService) -> None:
    kitchen = service.recommend("u1", k=5, category="home > kitchen")
    assert kitchen and all(r.category.startswith("Home > Kitchen") for r in kitchen)
    assert ids(service.recommend("u1", k=5, brand="nova")) == ["p8"]  # p7 is out of stock
    excluded = service.recommend("u4", k=5, exclude_categories=("Home",))
    assert all(not r.category.startswith("Home") for r in excluded)


def test_explanations_name_a_history_product(service: RecommendationService) -> None:
    recs = service.recommend("u1", k=3, explain=True)
    assert all(r.reasons and r.sources for r in recs)
    titles = {"Red runner", "Blue runner", "Acme shirt", "Nova boot", "Zeta shirt"}
    assert any(any(t in reason for t in titles) for r in recs for reason in r.reasons)


def test_cold_start_uses_the_categories_touched(service: RecommendationService) -> None:
    recs = service.recommend("u7", k=3)  # one view of a kitchen product
    assert recs and all(r.category == "Home > Kitchen" for r in recs)
    assert "which you looked at" in recs[0].reasons[0]


def test_unknown_ids_and_bad_k(service: RecommendationService) -> None:
    with pytest.raises(UnknownIdError, match="unknown user 'nobody'"):
        service.recommend("nobody")
    with pytest.raises(UnknownIdError, match="unknown product"):
        service.related("p99")
    with pytest.raises(ValueError):
        service.recommend("u1", k=0)


def test_events_change_the_next_recommendations(service: RecommendationService) -> None:
    before = service.recommend("u1", k=3)
    target = before[0].id
    als = service.model.sources["als"]
    factors = als.user_factors[service.user_row["u1"]].copy()
    result = service.record_event("u1", target, "purchase")
    assert result["history"] == 6
    after = service.recommend("u1", k=3)
    assert target not in ids(after)
    assert not np.allclose(als.user_factors[service.user_row["u1"]], factors)  # folded in
    # a brand-new user: cold start first, the hybrid once the history is long enough
    for product in ("p6", "p7", "p8"):
        service.record_event("newbie", product, "view")
    assert service.history_of("newbie") == ["p6", "p7", "p8"]
    recs = service.recommend("newbie", k=3)
    assert recs and not {"p6", "p7", "p8"} & set(ids(recs))


def test_related_includes_graph_neighbours_of_a_product_nobody_bought(
        service: RecommendationService) -> None:
    related = service.related("p8", k=3)  # no interactions: graph paths still link it
    assert related and "p8" not in ids(related)
    assert any("Nova" in reason or "Kitchen" in reason
               for r in related for reason in r.reasons)


def test_versions_flip_atomically_and_old_ones_are_pruned(tmp_path) -> None:
    with EmbeddedStore(tmp_path / "graph") as store:
        store.load(small_shop())
        config = HybridConfig(**{**TINY.to_dict(), "gnn": None})
        first = train_recommender(store, tmp_path, config, log=lambda _: None)["version"]
        second = train_recommender(store, tmp_path, config, log=lambda _: None)["version"]
        third = train_recommender(store, tmp_path, config, log=lambda _: None)["version"]
    assert current_version(tmp_path).name == third
    kept = {p.name for p in (tmp_path / "artifacts" / "recommender").iterdir() if p.is_dir()}
    assert kept == {second, third} and first not in kept
    assert RecommendationService.load(tmp_path).version == third


def test_holdout_is_left_out_and_bad_files_are_located(tmp_path) -> None:
    holdout = tmp_path / "holdout.csv"
    holdout.write_text("user_id,product_id\nu1,p5\nu2,p6\n")
    config = HybridConfig(**{**TINY.to_dict(), "gnn": None})
    with EmbeddedStore(tmp_path / "graph") as store:
        store.load(small_shop())
        summary = train_recommender(store, tmp_path, config, holdout=holdout,
                                    log=lambda _: None)
        assert summary["held_out"] == 2 and summary["interactions"] == 28
        service = RecommendationService.load(tmp_path)
        assert "p5" not in service.history_of("u1")
        bad = tmp_path / "bad.csv"
        bad.write_text("user_id,product_id\nu1,p1\nu2,nope\n")
        with pytest.raises(DataError) as error:
            train_recommender(store, tmp_path, config, holdout=bad, log=lambda _: None)
        assert (error.value.line, error.value.field) == (3, "product_id")
        assert str(bad) in str(error.value)
    train_json = json.loads((current_version(tmp_path) / "train.json").read_text())
    assert train_json["held_out"] == 2  # the failed run published nothing


def test_every_source_gives_a_readable_reason_and_follows_live_events(workspace) -> None:  # noqa: ANN001
    service = RecommendationService.load(workspace)
    model = service.model
    assert {"graph_filter", "trending", "transitions"} <= set(model.sources)
    row = service.user_row["u1"]
    history = service._history_row(row)
    seen = history.indices
    for name in ("graph_filter", "trending", "transitions", "als", "copurchase"):
        item = int(model.sources[name].recommend(row, history, k=1)[0][0])
        text = service.render(model._source_reason(name, 1.0, seen, item), item)
        assert text and not text.startswith("recommended by"), (name, text)
    # graph filter and transitions score from the history row: a live event moves them
    before = {n: model.sources[n].score(np.array([row]), history)[0].copy()
              for n in ("graph_filter", "transitions")}
    unseen = [p for p in service.product_ids if p not in service.history_of("u1")]
    service.record_event("u1", unseen[-1], "purchase")
    after_history = service._history_row(row)
    for name, scores in before.items():
        now = model.sources[name].score(np.array([row]), after_history)[0]
        assert not np.allclose(now, scores), name


def test_a_calendar_time_decay_is_served_as_trained(tmp_path) -> None:
    """A model trained with `history_decay="time"` weighs live histories from the same fixed
    cut t_ref: trained rows equal the recorded weighting's, and a new event weighs 1."""
    with EmbeddedStore(tmp_path / "graph") as store:
        store.load(small_shop())
        config = HybridConfig(**{**TINY.to_dict(), "gnn": None, "history_decay": "time",
                                 "history_half_life_days": 30.0})
        summary = train_recommender(store, tmp_path, config, log=lambda _: None)
    recorded = summary["tuning"]["history"]
    assert recorded["decay"] == "time" and recorded["half_life_days"] == 30.0
    service = RecommendationService.load(tmp_path)
    assert service.weighting.decay == "time" and service.weighting.t_ref == recorded["t_ref"]
    expected = service.weighting.matrix(service.history, service._trained_rows.shape)
    assert abs(service._trained_rows - expected).max() == 0
    user = service.user_ids[0]
    row = service.user_row[user]
    unseen = next(p for p in service.product_ids
                  if service._trained_rows[row, service.product_row[p]] == 0)
    service.record_event(user, unseen, "purchase", ts=int(recorded["t_ref"]) + 86_400)
    live = service._history_row(row)
    assert live[0, service.product_row[unseen]] == pytest.approx(1.0)  # capped at the cut
    older = live.toarray()[0][service._trained_rows[row].toarray()[0] > 0]
    assert (older < 1.0).any()  # older purchases decayed by calendar time
