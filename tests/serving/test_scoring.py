"""The fast scorers give the detectors' own numbers; the explanation points at the faulty signal."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from aiops.detectors.isolation_forest import IsolationForestConfig
from aiops.schema import label_masks
from aiops.training import train_detector
from serving.batch import Batch
from serving.members import CachedForecaster, CompiledForest, GenericScorer, LstmScorer, _nanmedian_columns
from serving.scoring import build_scorer, probe_batch


@pytest.fixture(scope="module")
def scorer(trained):
    return build_scorer(trained.bundle, probe_batch(trained.bundle))


def test_every_member_gets_a_fast_scorer(scorer):
    assert scorer.scorer_kinds == {"isolation_forest": "fast", "forecast": "fast"}


def test_fast_path_equals_the_bundle_on_every_test_row(trained, scorer):
    test = trained.split.test
    scores = scorer.score(Batch.from_frame(test, trained.bundle.contract.feature_names))
    # Equal to rounding: numpy means where the detector uses pandas' running sums.
    np.testing.assert_allclose(scores.score, trained.bundle.score(test), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(scores.is_anomaly, trained.bundle.predict(test)["is_anomaly"].to_numpy())
    for name, detector in trained.bundle.detector.members.items():
        np.testing.assert_allclose(scores.members[name].raw, detector.score(test), rtol=1e-12, atol=1e-12)


def test_a_forecaster_saved_before_units_scores_as_it_did(trained):
    """Detectors pickled before units existed have no ``units``: both paths use plain log1p."""
    import copy

    bundle = copy.deepcopy(trained.bundle)
    forecast = bundle.detector.members["forecast"]
    assert forecast.unit("request_rate") != 1.0
    del forecast.__dict__["units"]  # what unpickling an older detector gives
    assert forecast.unit("request_rate") == 1.0
    test = trained.split.test.iloc[:500]
    fast = build_scorer(bundle, probe_batch(bundle)).scorers["forecast"]
    assert not isinstance(fast, GenericScorer)
    raw = fast.score(Batch.from_frame(test, bundle.contract.feature_names)).raw
    np.testing.assert_allclose(raw, forecast.score(test), rtol=1e-12, atol=1e-12)


def test_row_order_does_not_change_a_row_score(trained, scorer):
    names = trained.bundle.contract.feature_names
    test = trained.split.test.iloc[:300]
    shuffled = test.sample(frac=1.0, random_state=1)
    in_order = pd.Series(scorer.score(Batch.from_frame(test, names)).score, index=test.index)
    reordered = pd.Series(scorer.score(Batch.from_frame(shuffled, names)).score, index=shuffled.index)
    pd.testing.assert_series_equal(reordered.sort_index(), in_order)


def test_a_row_alone_scores_as_the_bundle_scores_it_alone(trained, scorer):
    """No history in the request: no level correction, in both paths."""
    names = trained.bundle.contract.feature_names
    for i in (0, 250, 999):
        row = trained.split.test.iloc[[i]]
        assert scorer.score(Batch.from_frame(row, names)).score[0] == trained.bundle.score(row)[0]


def test_a_lone_rows_forest_score_adds_the_trees_in_sklearns_order(trained):
    """Summed pairwise, a lone row's depths moved its score's last bit on about four rows in ten."""
    forest_member = trained.bundle.detector.members["isolation_forest"]
    names = trained.bundle.contract.feature_names
    compiled = CompiledForest(forest_member, {name: i for i, name in enumerate(names)})
    rows = trained.split.test.iloc[::7].head(150)
    alone = [compiled.score(Batch.from_frame(rows.iloc[[i]], names)).raw[0] for i in range(len(rows))]
    np.testing.assert_array_equal(alone, forest_member.score(rows))


def test_compiled_forest_matches_sklearn_with_missing_and_extreme_values(trained):
    forest_member = trained.bundle.detector.members["isolation_forest"]
    names = trained.bundle.contract.feature_names
    frame = trained.split.test.head(200).copy()
    rng = np.random.default_rng(0)
    values = frame.loc[:, list(names)].to_numpy()
    values[rng.random(values.shape) < 0.2] = np.nan
    values[rng.random(values.shape) < 0.05] *= 1e6
    frame.loc[:, list(names)] = values
    compiled = CompiledForest(forest_member, {name: i for i, name in enumerate(names)})
    np.testing.assert_array_equal(
        compiled.score(Batch.from_frame(frame, names)).raw, forest_member.score(frame)
    )


def test_forecast_cache_is_filled_ahead_and_reused(trained, scorer):
    forecaster = next(iter(trained.bundle.detector.members["forecast"].models.values())).forecaster
    assert isinstance(forecaster, CachedForecaster)
    names = trained.bundle.contract.feature_names
    later = trained.split.test.copy()
    later["timestamp"] += pd.Timedelta("3D")  # instants nobody asked for yet
    before = scorer.forecast_cache_misses
    scorer.score(Batch.from_frame(later.head(1), names))
    assert scorer.forecast_cache_misses > before
    first_miss = scorer.forecast_cache_misses
    following = later[later["timestamp"] <= later["timestamp"].iloc[0] + pd.Timedelta("30min")]
    scorer.score(Batch.from_frame(following.head(20), names))
    assert scorer.forecast_cache_misses == first_miss  # the next hour was fetched with the first miss


def test_a_disagreeing_fast_scorer_is_replaced_by_the_detectors_own(trained, monkeypatch):
    from serving import members

    original = members.ForecastScorer.score

    def off_by_one(self, batch, explain=False):
        out = original(self, batch, explain)
        return members.MemberOutput(raw=out.raw + 1.0, signal=out.signal)

    monkeypatch.setattr(members.ForecastScorer, "score", off_by_one)
    scorer = build_scorer(trained.bundle, probe_batch(trained.bundle))
    assert isinstance(scorer.scorers["forecast"], GenericScorer)
    test = trained.split.test.head(50)
    scores = scorer.score(Batch.from_frame(test, trained.bundle.contract.feature_names))
    np.testing.assert_array_equal(scores.score, trained.bundle.score(test))


def test_probe_rows_without_an_input_example_reach_the_forecasters(trained):
    probe = probe_batch(trained.bundle)
    forecast = trained.bundle.detector.members["forecast"]
    raw = forecast.score(probe.to_frame(trained.bundle.contract.feature_names))
    assert (raw > 0).any(), "probe rows should land on workloads the forecaster knows"


@pytest.fixture(scope="module")
def forest_scorer(trained):
    """200 trees over every feature: 20 trees explain too noisily to test directions."""
    config = IsolationForestConfig(n_estimators=200, features="all")
    bundle = train_detector("isolation_forest", trained.split.train, trained.split.validation, config)
    return build_scorer(bundle, probe_batch(bundle)), bundle.contract.feature_names


@pytest.mark.parametrize(
    ("anomaly_type", "signal"),
    [("spike", "latency_p95_seconds"), ("network_degradation", "network_"), ("crash_loop", "restarts")],
)
def test_top_features_name_the_faulty_signal(trained, forest_scorer, small_telemetry, anomaly_type, signal):
    """Directional: on the row the forest finds most anomalous in an injected fault, its signal leads."""
    scorer, names = forest_scorer
    masks = [
        mask
        for label, mask in label_masks(trained.features, small_telemetry.labels)
        if label["anomaly_type"] == anomaly_type
    ]
    assert masks, f"the seeded data holds no {anomaly_type}"
    scores = scorer.score(Batch.from_frame(trained.features[masks[0]], names), top_k=3)
    worst = int(np.argmax(scores.members["isolation_forest"].raw))
    top = [names[i] for i in scores.top_features[worst]]
    assert top[0].startswith(signal) or top[1].startswith(signal), top
    assert 0 < scores.top_shares[worst].sum() <= 1.0 + 1e-12


def test_lstm_scorer_matches_the_detector_with_and_without_history(trained):
    """Windows per entity, in time order; rows without a full window score 0, as in the detector."""
    from aiops.detectors.lstm_autoencoder import LstmAutoencoderDetector, LstmConfig

    names = trained.bundle.contract.feature_names
    config = LstmConfig(window=6, hidden=8, latent=4, epochs=1, max_windows=200, device="cpu")
    detector = LstmAutoencoderDetector(config).fit(trained.split.train.head(600), trained.bundle.contract)
    index = {n: i for i, n in enumerate(names)}
    frame = trained.split.test.head(80).sample(frac=1.0, random_state=3)  # shuffled: entities interleave
    fast = LstmScorer(detector, index).score(Batch.from_frame(frame, names))
    # The windows are prepared in float64 as in the detector (a float32 cast before centring
    # moved scores by up to 1e-4); only the network runs in float32, in both paths.
    np.testing.assert_allclose(fast.raw, detector.score(frame), rtol=1e-9, atol=1e-12)
    assert (fast.raw > 0).any() and (fast.raw == 0).any()
    assert set(fast.signal[fast.raw > 0]) <= set(detector.signals)
    lone = LstmScorer(detector, index).score(Batch.from_frame(frame.head(1), names))
    assert lone.raw.tolist() == [0.0] == detector.score(frame.head(1)).tolist()


def test_tree_walk_of_a_few_rows_matches_sklearn_and_the_compiled_trees(trained):
    """Below _CYTHON_MIN_ROWS the forest walks all trees at once: same leaves, same scores."""
    forest_member = trained.bundle.detector.members["isolation_forest"]
    names = trained.bundle.contract.feature_names
    frame = trained.split.test.head(12).copy()
    values = frame.loc[:, list(names)].to_numpy()
    values[np.random.default_rng(1).random(values.shape) < 0.2] = np.nan
    values[3] *= 1e6
    frame.loc[:, list(names)] = values
    compiled = CompiledForest(forest_member, {name: i for i, name in enumerate(names)})
    expected = forest_member.score(frame)
    for rows in ([0], [3], [5, 1], list(range(12))):
        batch = Batch.from_frame(frame.iloc[rows], names)
        np.testing.assert_array_equal(compiled.score(batch).raw, expected[rows])
        x = compiled._inputs(batch)
        x32 = np.ascontiguousarray(np.where(np.isnan(x), compiled.medians, x), dtype=np.float32)
        np.testing.assert_array_equal(compiled._walk(x32, None), compiled._leaves_per_tree(x32))


def _isolation_bits_by_sklearn(forest_member, x: np.ndarray) -> np.ndarray:
    """The explanation's definition, from sklearn's own decision paths: per row and forest input,
    log2(samples at the node / samples on the row's side) summed over the splits on the row's path
    in every tree, averaged over trees."""
    forest = forest_member._pipeline.named_steps["forest"]
    credit = np.zeros_like(x, dtype=np.float64)
    for estimator, columns in zip(forest.estimators_, forest.estimators_features_, strict=True):
        tree = estimator.tree_
        paths = estimator.decision_path(x[:, columns].astype(np.float32)).toarray()
        for r, on_path in enumerate(paths):
            nodes = np.flatnonzero(on_path)  # root first: children have larger ids
            for node, child in zip(nodes[:-1], nodes[1:], strict=True):
                gained = np.log2(tree.n_node_samples[node] / tree.n_node_samples[child])
                credit[r, columns[tree.feature[node]]] += gained
    return credit / len(forest.estimators_)


@pytest.mark.parametrize("dense_table", [True, False], ids=["per-node table", "summed along the walk"])
def test_explanation_credits_the_isolation_bits_of_each_split_on_the_rows_paths(
    trained, monkeypatch, dense_table
):
    """Both ways of crediting (a per-node table for narrow forest views, sums along the walk
    for wide ones), for a few rows (one walk over all trees) and many (each tree's ``apply``)."""
    from serving import members

    if not dense_table:
        monkeypatch.setattr(members, "_DENSE_CREDIT_MAX_FEATURES", 0)
    forest_member = trained.bundle.detector.members["isolation_forest"]
    names = trained.bundle.contract.feature_names
    compiled = CompiledForest(forest_member, {name: i for i, name in enumerate(names)})
    assert (compiled.leaf_credit is not None) == dense_table
    frame = trained.split.test.iloc[
        [5, 400, 777, *range(1000, 1000 + 2 * members._CYTHON_MIN_ROWS, 2)]
    ].copy()
    frame.loc[frame.index[1], names[0]] = np.nan  # imputed with the training median first
    batch = Batch.from_frame(frame, names)
    x = compiled._inputs(batch)
    x = np.where(np.isnan(x), compiled.medians, x)
    expected = np.zeros((len(frame), len(names)))
    known = compiled.feature_ids >= 0  # a derived input (the stall indicator) has no contract column
    expected[:, compiled.feature_ids[known]] = _isolation_bits_by_sklearn(forest_member, x)[:, known]
    credit = compiled.score(batch, explain=True).credit
    assert credit is not None and (credit.sum(axis=1) > 1.0).all()
    np.testing.assert_allclose(credit, expected, rtol=1e-12, atol=1e-12)
    # Among a few rows or many, a row gets the same credit.
    few = compiled.score(Batch.from_frame(frame.iloc[[2]], names), explain=True).credit
    np.testing.assert_allclose(few[0], credit[2], rtol=1e-12, atol=1e-12)


def test_forecast_memo_is_bounded_and_changes_no_score(trained, monkeypatch):
    from serving import members

    monkeypatch.setattr(members, "_LOG_FORECAST_ENTRIES", 7)
    scorer = build_scorer(trained.bundle, probe_batch(trained.bundle))
    forecast = scorer.scorers["forecast"]
    names = trained.bundle.contract.feature_names
    test = trained.split.test
    detector = trained.bundle.detector.members["forecast"]
    for rows in (test.iloc[[0]], test.iloc[[0]], test.iloc[40:60], test.iloc[[0]], test.iloc[100:103]):
        raw = forecast.score(Batch.from_frame(rows, names)).raw
        np.testing.assert_allclose(raw, detector.score(rows), rtol=1e-12, atol=1e-12)
        # At most the bound plus the instants of one request (those are kept while it is answered).
        assert len(forecast._log_forecasts) <= 7 + 20


def test_forecast_cache_keeps_a_requests_own_instants_when_it_makes_room():
    class Inner:
        def predict(self, ts: pd.Series) -> pd.DataFrame:
            seconds = pd.DatetimeIndex(ts).as_unit("ns").asi8 / 1e9
            return pd.DataFrame({"yhat": seconds})

    cache = CachedForecaster(Inner(), step_ns=10**9, prefetch=3, lookback=0, max_entries=8)
    old = np.array([0, 10**9], dtype=np.int64)
    cache.lookup(old)
    assert len(cache._cache) == 5
    # The new instants overflow the cache: the oldest entries go, except those asked for now.
    both = np.array([0, 10**9, 100 * 10**9], dtype=np.int64)
    np.testing.assert_array_equal(cache.lookup(both)[:, 0], [0.0, 1.0, 100.0])
    assert cache.misses == 2


def test_column_nanmedian_is_numpys_to_the_bit():
    rng = np.random.default_rng(3)
    for _ in range(500):
        block = rng.normal(size=(int(rng.integers(1, 30)), 4)) * 10.0 ** rng.integers(-3, 6)
        block[rng.random(block.shape) < 0.3] = np.nan
        block[:, 0] = np.round(block[:, 0])  # ties
        finite = np.isfinite(block).sum(axis=0)
        keep = finite >= 1
        expected = np.nanmedian(block[:, keep], axis=0)
        np.testing.assert_array_equal(_nanmedian_columns(block[:, keep], finite[keep]), expected)


def test_top_features_are_the_largest_credits_strongest_first():
    from serving.scoring import _top_features

    credit = np.array([[0.0, 3.0, 1.0, 3.0, 0.5], [0.0, 0.0, 0.0, 0.0, 0.0], [5.0, 0.0, 0.0, 1.0, 4.0]])
    top, shares = _top_features(credit, 3, 3)
    assert top[0].tolist()[2] == 2 and set(top[0].tolist()[:2]) == {1, 3}
    assert top[2].tolist() == [0, 4, 3]
    np.testing.assert_allclose(shares[2], [0.5, 0.4, 0.1])
    np.testing.assert_array_equal(shares[1], 0.0)
    np.testing.assert_allclose(shares[0], credit[0, top[0]] / 7.5)


def _edge_raws(scorer, raws: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Member scores plus NaN, +-inf, reference scores themselves and each member's own threshold."""
    rng = np.random.default_rng(5)
    out = {}
    for name, raw in raws.items():
        reference = scorer.reference[name]
        threshold = scorer.member_thresholds.get(name, 0.0)
        drawn = reference[rng.integers(0, len(reference), 40)]
        extra = [np.nan, np.inf, -np.inf, threshold, threshold, *drawn]
        out[name] = np.concatenate([raw, extra])
    return out


@pytest.mark.parametrize("rule", ["mean", "max", "any"])
def test_a_single_row_combines_to_the_bits_of_the_array_rule(trained, rule):
    """A served row takes the float path of the ensemble rule; it must give the array rule's numbers."""
    import copy

    bundle = copy.deepcopy(trained.bundle)
    bundle.detector.combine = rule
    scorer = build_scorer(bundle, probe_batch(bundle))
    assert scorer._row_rule is not None, "the load-time check turned the single-row rule off"
    names = bundle.contract.feature_names
    batch = Batch.from_frame(trained.split.test.iloc[:300], names)
    raws = _edge_raws(scorer, {name: s.score(batch).raw for name, s in scorer.scorers.items()})
    combined, surprises = scorer.combine(raws)
    for i in range(len(combined)):
        one, one_surprises = scorer.combine({name: raw[i : i + 1] for name, raw in raws.items()})
        assert one.tolist() == [combined[i]], (i, {name: raw[i] for name, raw in raws.items()})
        assert {n: s.tolist() for n, s in one_surprises.items()} == {n: [s[i]] for n, s in surprises.items()}


def test_a_lone_row_scores_and_explains_as_in_a_batch(trained, scorer):
    """Single-row requests take shortcuts (forecast, ensemble, top features): same scores, same signal.

    The reference puts each row in a two-row batch beside a pod of a workload the model does not
    know, at another instant, so it goes through the array code and still has no history.
    """
    names = trained.bundle.contract.feature_names
    rows = trained.split.test.iloc[::7].head(120).copy()
    values = rows.loc[:, list(names)].to_numpy()
    rng = np.random.default_rng(2)
    values[rng.random(values.shape) < 0.1] = np.nan
    values[rng.random(values.shape) < 0.01] *= 1e6
    rows.loc[:, list(names)] = values
    forecast_hits = 0
    for i in range(len(rows)):
        row = rows.iloc[[i]]
        stranger = row.assign(pod="unknown-workload-x9z2k", timestamp=row["timestamp"] - pd.Timedelta(days=3))
        alone = scorer.score(Batch.from_frame(row, names), top_k=3)
        paired = scorer.score(Batch.from_frame(pd.concat([row, stranger]), names), top_k=3)
        # Member scores to rounding: numpy sums the trees' depths of one row and of two rows in
        # different orders, and a last-bit difference can cross a reference score, so the
        # ensemble score is compared with the array rule applied to the lone row's own scores.
        raws = {name: member.raw for name, member in alone.members.items()}
        twice, _ = scorer.combine({name: np.repeat(raw, 2) for name, raw in raws.items()})
        assert alone.score.tolist() == twice[:1].tolist()
        for name, member in alone.members.items():
            np.testing.assert_allclose(member.raw, paired.members[name].raw[:1], rtol=1e-12, atol=1e-15)
            if member.signal is not None:
                assert member.signal.tolist() == paired.members[name].signal[:1].tolist(), name
        np.testing.assert_allclose(alone.top_shares, paired.top_shares[:1], rtol=1e-12, atol=1e-15)
        # The same features lead; features with equal credit may come in either order.
        shares = alone.top_shares[0].tolist()
        untied = next((k for k in range(len(shares) - 1) if shares[k] == shares[k + 1]), len(shares))
        assert alone.top_features[0][:untied].tolist() == paired.top_features[0][:untied].tolist()
        forecast_hits += int(alone.members["forecast"].raw[0] > 0)
    assert forecast_hits > 10, "too few rows on workloads the forecaster knows to test its shortcut"


def test_an_alarm_raised_by_the_stall_rule_names_the_stalled_signal(trained, scorer):
    """The stall rule's part of the score is no split of the forest: it is credited to the
    ``<signal>__run`` feature behind it, which then leads the explanation."""
    forest_member = trained.bundle.detector.members["isolation_forest"]
    names = trained.bundle.contract.feature_names
    compiled = CompiledForest(forest_member, {name: i for i, name in enumerate(names)})
    assert compiled.stall_ids is not None, "the fixture's forest has no stall input"
    run = names[int(compiled.stall_ids[0])]
    row = trained.split.test.iloc[[100]].copy()
    quiet = scorer.score(Batch.from_frame(row, names), top_k=3)
    row[run] = 20.0 * forest_member.stall_ceiling
    stalled = scorer.score(Batch.from_frame(row, names), top_k=3)
    assert names[int(stalled.top_features[0, 0])] == run and stalled.top_shares[0, 0] > 0.5
    assert run not in [names[int(i)] for i in quiet.top_features[0]]
    assert stalled.score[0] > quiet.score[0]
