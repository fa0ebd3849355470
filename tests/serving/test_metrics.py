"""The predictor's metrics helpers, against prometheus_client's own behaviour."""

from __future__ import annotations

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram

from serving.metrics import observe_many

BUCKETS = (0.25, 0.5, 1.0, 2.0, 5.0)


def _histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram("score", "test", ["model"], buckets=BUCKETS, registry=registry).labels("m")


def _samples(registry: CollectorRegistry) -> dict[tuple[str, str], float]:
    return {
        (sample.name, sample.labels.get("le", "")): sample.value
        for family in registry.collect()
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_observe_many_counts_exactly_as_observe_one_by_one():
    rng = np.random.default_rng(3)
    # Values on the bounds themselves test the "value <= bound" rule; 9.0 lands in +Inf.
    values = np.concatenate([rng.exponential(1.0, 500), np.array(BUCKETS), [0.0, 9.0]])
    one_by_one, at_once = CollectorRegistry(), CollectorRegistry()
    child = _histogram(one_by_one)
    for value in values.tolist():
        child.observe(value)
    bulk = _histogram(at_once)
    observe_many(bulk, values)
    observe_many(bulk, values[:0])  # nothing to count: nothing changes
    expected, got = _samples(one_by_one), _samples(at_once)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        if key[0] == "score_sum":
            assert got[key] == pytest.approx(value, rel=1e-12)
        else:
            assert got[key] == value, key
    assert got[("score_bucket", "0.5")] == np.sum(values <= 0.5)


def test_each_registry_gets_its_own_families_even_when_an_old_one_is_gone():
    """A collected registry's id() is reused; the new registry must not get the dead one's families."""
    import gc

    from serving.metrics import serving_metrics

    # Everything alive so far (a worker may hold torch, pandas and trained models) is left out of
    # the collections below: each would otherwise walk it, about 2 s apiece.
    gc.freeze()
    try:
        for _ in range(20):
            registry = CollectorRegistry()
            serving_metrics(registry).rows.labels(model_name="m", model_version="1").inc()
            assert (
                registry.get_sample_value(
                    "aiops_serving_rows_total", {"model_name": "m", "model_version": "1"}
                )
                == 1
            )
            del registry
            gc.collect()
    finally:
        gc.unfreeze()
