"""Training entry points: fit detectors on the training period, set thresholds on validation.

Detectors never see labels. Thresholds are set on the validation period by an explicit
policy:

* ``quantile`` – the alarm budget: the given quantile of the validation scores (no labels).
* ``event_f1`` – the threshold that maximises event-wise F1 on the validation period's
  labelled windows. It uses labels, but only those of the validation period, never the
  test period the model is judged on; it refuses to run when validation holds no labels.
  Among equally good thresholds it takes the middle of the range, not an edge (ADR 0015).
  For an ensemble under the ``any`` rule it never picks a threshold below 1 (below every
  member's own threshold).

An ensemble can also choose how it combines its members (``any`` member at its own threshold,
``mean`` or ``max`` of weighted surprises) and the members' weights by the same criterion
(``select_weights=True``), again on the validation period's labels only.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from aiops.detectors.ensemble import COMBINE_RULES, EnsembleDetector
from aiops.detectors.forecast import ForecastConfig, ForecastDetector
from aiops.detectors.isolation_forest import IsolationForestConfig, IsolationForestDetector
from aiops.detectors.lstm_autoencoder import LstmAutoencoderDetector, LstmConfig
from aiops.evaluation import entity_time_order
from aiops.features import FeatureConfig, contract_for
from aiops.model import DetectorBundle
from aiops.schema import label_masks, row_labels

log = logging.getLogger(__name__)

THRESHOLD_POLICIES = ("quantile", "event_f1")
#: Training metadata that is measured (tracked as metrics); every other entry is a setting (a param).
MEASURED_META = frozenset(
    {
        "fit_seconds",
        "train_rows",
        "validation_rows",
        "validation_score_median",
        "validation_event_f1",
        "member_validation_event_f1",
        "member_alarm_surprise",
        "calibration_seconds",
        "n_features",
    }
)
DetectorConfig = IsolationForestConfig | ForecastConfig | LstmConfig
_DETECTORS: dict[str, tuple[type, type]] = {
    "isolation_forest": (IsolationForestDetector, IsolationForestConfig),
    "forecast": (ForecastDetector, ForecastConfig),
    "lstm_autoencoder": (LstmAutoencoderDetector, LstmConfig),
}
DETECTOR_KINDS = tuple(_DETECTORS)
#: Weights tried per member by ``train_ensemble(select_weights=True)``.
WEIGHT_GRID = (0.0, 0.5, 1.0)
#: Labelled validation windows needed before weights are chosen on them: with a handful, the
#: choice fits noise (a 4-day run has about five) and equal weights generalise better.
MIN_SELECTION_WINDOWS = 20


@dataclass(frozen=True)
class EventF1Scorer:
    """Event-wise F1 of ``scores >= threshold`` for many thresholds, as :func:`aiops.evaluation.evaluate`.

    The label masks, the (entity, time) row order and the row truth are computed once, so
    each threshold costs a few vector operations instead of a full evaluation.
    """

    window_rows: list[np.ndarray]  # rows of each labelled window present in the frame
    order: np.ndarray  # rows sorted by entity, then time
    continues: np.ndarray  # in that order: the row is the next step of the row before's entity
    truth: np.ndarray  # in that order: the row lies inside a labelled window

    @classmethod
    def of(cls, frame: pd.DataFrame, labels: pd.DataFrame) -> EventF1Scorer:
        """Prepare the scorer for the rows of ``frame`` and the windows of ``labels``."""
        frame = frame.reset_index(drop=True)
        windows = [np.flatnonzero(mask) for _, mask in label_masks(frame, labels) if mask.any()]
        order, group, slots = entity_time_order(frame)
        # As alarm_events (merge_gap=0): a hole in an entity's time grid ends an event.
        continues = np.r_[False, (np.diff(group) == 0) & (np.diff(slots) <= 1)][: len(order)]
        return cls(windows, order, continues, row_labels(frame, labels)[order])

    def f1(self, scores: np.ndarray, threshold: float) -> float:
        """Event-wise F1 of the alarms ``scores >= threshold``."""
        alarms = np.asarray(scores, dtype=float)[self.order] >= threshold
        starts = alarms & ~(np.r_[False, alarms[:-1]] & self.continues)
        n_events = int(starts.sum())
        run = np.cumsum(starts)
        n_true = len(np.unique(run[alarms & self.truth]))
        detected = sum(bool((scores[rows] >= threshold).any()) for rows in self.window_rows)
        precision = n_true / n_events if n_events else 0.0
        recall = detected / len(self.window_rows) if self.window_rows else 0.0
        return 2 * precision * recall / (precision + recall) if precision + recall else 0.0

    def best_threshold(self, scores: np.ndarray, floor: float | None = None) -> tuple[float, float]:
        """``(event F1, threshold)`` over upper quantiles of ``scores`` (10% to 0.01% alarm rates).

        ``floor``: only thresholds at or above it are candidates (``floor`` itself is one).

        Ties are common: validation holds a few dozen windows, so F1 is flat over a range of
        thresholds (every window caught, no false alarm). The pick is the middle of the longest
        run of neighbouring best candidates, the threshold farthest from both edges of that
        plateau, which is where new data is least likely to push it off: a higher threshold
        misses the weakest windows first, a lower one meets the loudest normal rows first.
        (Taking the plateau's top edge, as before, sat right at the recall cliff whenever the
        plateau ended at the grid's last quantile.)
        """
        f1, threshold, _, _ = self.best_threshold_range(scores, floor)
        return f1, threshold

    @staticmethod
    def candidates(scores: np.ndarray, floor: float | None = None) -> np.ndarray:
        """The thresholds searched: 60 upper quantiles of ``scores`` (10% to 0.01% alarm rates), sorted.

        ``floor``: only those at or above it, and ``floor`` itself.
        """
        candidates = np.unique(np.quantile(scores, 1 - np.geomspace(0.1, 1e-4, 60)))
        if floor is not None:
            candidates = np.unique(np.append(candidates[candidates >= floor], floor))
        return candidates

    def best_threshold_range(
        self, scores: np.ndarray, floor: float | None = None
    ) -> tuple[float, float, float, float]:
        """``(event F1, threshold, lowest tied, highest tied)``: :meth:`best_threshold` and its plateau.

        The last two bound the run of candidates the threshold was picked from (equal to it
        when nothing tied): how far validation scores could move before the choice changes.
        """
        candidates = self.candidates(scores, floor)
        if not len(candidates):
            return -1.0, 0.0, 0.0, 0.0
        f1s = np.array([self.f1(scores, float(threshold)) for threshold in candidates])
        start, middle, end = _plateau_middle(f1s)
        return (
            float(f1s.max()),
            float(candidates[middle]),
            float(candidates[start]),
            float(candidates[end - 1]),
        )


def _plateau_middle(values: np.ndarray) -> tuple[int, int, int]:
    """``(start, middle, end)`` of the longest run ``[start, end)`` of neighbouring maxima of ``values``.

    ``middle`` is the run's middle index (the upper one of two when its length is even).
    """
    best = values >= values.max() - 1e-12
    edges = np.flatnonzero(np.diff(np.r_[0, best.astype(np.int8), 0]))
    starts, ends = edges[::2], edges[1::2]  # runs [start, end)
    longest = int(np.argmax(ends - starts))  # the first of equally long runs
    start, end = int(starts[longest]), int(ends[longest])
    return start, (start + end) // 2, end


def _floor(combine: str) -> float | None:
    """The lowest ensemble threshold the ``event_f1`` policy may pick for a combine rule.

    Under ``any`` a score of 1 is every member at its own validation-chosen threshold. A lower
    threshold would alarm each member below its own best operating point, and the union of
    members only adds false alarms to each one's: it may tighten, never loosen. (Left free, the
    choice sometimes landed just under 1 on the coarse quantile grid, and on new data the
    loosened forest raised several times its own false alarms.)
    """
    return 1.0 if combine == "any" else None


def _check_quantile(alarm_quantile: float) -> None:
    if not 0.5 <= alarm_quantile < 1:
        raise ValueError(f"alarm_quantile must lie in [0.5, 1), got {alarm_quantile}")


def choose_threshold(
    scores: np.ndarray,
    frame: pd.DataFrame,
    labels: pd.DataFrame,
    policy: str = "quantile",
    alarm_quantile: float = 0.99,
    events: EventF1Scorer | None = None,
    floor: float | None = None,
) -> tuple[float, dict[str, float]]:
    """Pick an alarm threshold on validation scores by ``policy`` (see module docstring).

    Args:
        scores: Validation scores.
        frame: The validation rows the scores belong to.
        labels: Label table (``event_f1`` only).
        policy: ``quantile`` or ``event_f1``.
        alarm_quantile: Quantile for the ``quantile`` policy.
        events: ``EventF1Scorer.of(frame, labels)`` when the caller already built it.
        floor: ``event_f1`` only: the lowest threshold considered.

    Returns:
        The threshold and what the choice was based on (for tracking).

    Raises:
        ValueError: Unknown policy, or ``event_f1`` without labelled windows in ``frame``.
    """
    _check_quantile(alarm_quantile)
    scores = np.asarray(scores, dtype=float)
    if policy == "quantile":
        return float(np.quantile(scores, alarm_quantile)), {"threshold_quantile": alarm_quantile}
    if policy != "event_f1":
        raise ValueError(f"unknown threshold policy '{policy}'; choose one of {THRESHOLD_POLICIES}")
    events = events if events is not None else EventF1Scorer.of(frame, labels)
    if not events.window_rows:
        raise ValueError(
            "threshold policy 'event_f1' needs labelled windows in the validation period and there are "
            "none; use threshold_policy='quantile' (an alarm budget) for unlabelled data"
        )
    # Candidates: upper quantiles of the validation scores, from a 10% to a 0.01% alarm rate.
    f1, threshold, tied_from, tied_to = events.best_threshold_range(scores, floor)
    return threshold, {
        "validation_event_f1": f1,
        "threshold_quantile": float(np.mean(scores < threshold)),
        "threshold_tied_from": tied_from,
        "threshold_tied_to": tied_to,
    }


def _check_not_at_the_floor(
    kind: str, detector: Any, scores: np.ndarray, threshold: float, alarm_quantile: float
) -> None:
    """Refuse a threshold that sits on the lowest validation score shared by most rows.

    ``score >= threshold`` would then alarm on every such row. It happens when nearly all
    validation rows score the floor, e.g. the LSTM's 0 ("no opinion") for rows without a full
    window of their entity's history, when the validation period is shorter than the window.
    """
    finite = scores[np.isfinite(scores)]
    if not finite.size or threshold > finite.min():
        return
    share = float(np.mean(finite <= threshold))
    if share <= alarm_quantile:
        return
    window = getattr(getattr(detector, "config", None), "window", None)
    why = (
        f" (rows without a full window of {window} steps of their entity's history score 0: the "
        f"validation period needs more than {window} steps per entity)"
        if window
        else ""
    )
    raise ValueError(
        f"{kind}: {share:.1%} of the validation rows score {threshold:g}, the lowest score{why}; a "
        f"threshold there would alarm on all of them. Lengthen the validation period."
    )


def make_detector(kind: str, config: DetectorConfig | None = None) -> Any:
    """Build an unfitted detector of ``kind`` (``isolation_forest``, ``forecast``, ``lstm_autoencoder``)."""
    if kind not in _DETECTORS:
        raise ValueError(f"unknown detector '{kind}'; choose one of {DETECTOR_KINDS}")
    detector_cls, config_cls = _DETECTORS[kind]
    if config is not None and not isinstance(config, config_cls):
        raise TypeError(f"detector '{kind}' takes a {config_cls.__name__}, got {type(config).__name__}")
    return detector_cls(config if config is not None else config_cls())


def train_detector(
    kind: str,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    config: DetectorConfig | None = None,
    feature_config: FeatureConfig = FeatureConfig(),
    alarm_quantile: float = 0.99,
) -> DetectorBundle:
    """Fit one detector on the training period; its own threshold is a validation quantile.

    Args:
        kind: Detector kind.
        train: Feature table of the earliest period.
        validation: Feature table of the following period.
        config: The detector's settings (defaults when ``None``).
        feature_config: The transform settings the features were built with.
        alarm_quantile: Share of validation rows expected to stay quiet.
    """
    bundle, _ = train_detector_scored(kind, train, validation, config, feature_config, alarm_quantile)
    return bundle


def train_detector_scored(
    kind: str,
    train: pd.DataFrame,
    validation: pd.DataFrame,
    config: DetectorConfig | None = None,
    feature_config: FeatureConfig = FeatureConfig(),
    alarm_quantile: float = 0.99,
) -> tuple[DetectorBundle, np.ndarray]:
    """:func:`train_detector`, also returning the validation scores it set the threshold on.

    An ensemble calibrates on the same scores (``train_ensemble(validation_scores=...)``), so
    they need not be computed twice.
    """
    _check_quantile(alarm_quantile)
    if train.empty:
        raise ValueError(f"{kind}: the training split is empty; there is nothing to fit")
    if validation.empty:
        raise ValueError("the validation split is empty; the threshold cannot be set")
    contract = contract_for(train, feature_config)
    detector = make_detector(kind, config)
    started = time.perf_counter()
    detector.fit(train, contract)
    fit_seconds = time.perf_counter() - started
    val_scores = np.asarray(detector.score(validation), dtype=float)
    threshold, basis = choose_threshold(val_scores, validation, pd.DataFrame(), "quantile", alarm_quantile)
    _check_not_at_the_floor(kind, detector, val_scores, threshold, alarm_quantile)
    meta = {
        **detector.config.params(),
        **basis,
        "alarm_quantile": alarm_quantile,
        "n_features": len(contract.feature_names),
        "feature_transform_version": contract.transform_version,
        "train_rows": len(train),
        "validation_rows": len(validation),
        "train_start": str(train["timestamp"].min()),
        "train_end": str(train["timestamp"].max()),
        "fit_seconds": round(fit_seconds, 3),
        "validation_score_median": float(np.median(val_scores)),
    }
    bundle = DetectorBundle(detector=detector, contract=contract, threshold=threshold, meta=meta)
    return bundle, val_scores


def train_isolation_forest(
    train: pd.DataFrame,
    validation: pd.DataFrame,
    config: IsolationForestConfig = IsolationForestConfig(),
    feature_config: FeatureConfig = FeatureConfig(),
    alarm_quantile: float = 0.99,
) -> DetectorBundle:
    """Fit an Isolation Forest (see :func:`train_detector`)."""
    return train_detector("isolation_forest", train, validation, config, feature_config, alarm_quantile)


def train_ensemble(
    members: Mapping[str, DetectorBundle],
    validation: pd.DataFrame,
    labels: pd.DataFrame,
    weights: Mapping[str, float] | None = None,
    threshold_policy: str = "quantile",
    alarm_quantile: float = 0.99,
    combine: str = "any",
    select_weights: bool = False,
    validation_scores: Mapping[str, np.ndarray] | None = None,
) -> DetectorBundle:
    """Combine fitted detectors into one deployable ensemble with one threshold.

    Args:
        members: Trained member bundles by name (all built on the same feature contract).
        validation: Feature table of the validation period (calibration and threshold).
        labels: Label table; used only by the ``event_f1`` policy, on validation rows only.
        weights: Weight per member (equal when ``None``).
        threshold_policy: ``quantile`` or ``event_f1``. With ``event_f1`` the members' own
            alarm thresholds (per-member alarms in reports and responses) are set the same way,
            each on its own validation scores.
        alarm_quantile: Quantile for the ``quantile`` policy.
        combine: ``any`` (default: the members specialise in different faults, and each keeps
            the operating point of its own threshold), ``max`` or ``mean`` of the weighted
            surprises (:mod:`aiops.detectors.ensemble`). With ``select_weights`` this rule is
            tried first, so the others must beat it by one window's worth of F1.
        select_weights: Choose the combine rule and the weights (from :data:`WEIGHT_GRID`) by
            event F1 on the validation period, preferring fewer members and equal weights
            unless more buys at least one window's worth of F1; needs
            ``threshold_policy='event_f1'`` and no explicit ``weights``. Skipped, with a
            warning and ``selection_skipped_windows`` in the metadata, when validation holds
            fewer than :data:`MIN_SELECTION_WINDOWS` labelled windows.
        validation_scores: Members' raw scores of ``validation`` when already computed.
    """
    if not members:
        raise ValueError("an ensemble needs at least one member")
    if combine not in COMBINE_RULES:
        raise ValueError(f"unknown combine rule '{combine}'; choose one of {COMBINE_RULES}")
    if select_weights and (threshold_policy != "event_f1" or weights):
        raise ValueError(
            "select_weights chooses weights by validation event F1: use it with "
            "threshold_policy='event_f1' and without explicit weights"
        )
    contracts = {b.contract.feature_names for b in members.values()}
    if len(contracts) != 1:
        raise ValueError("ensemble members were trained on different feature contracts")
    started = time.perf_counter()
    known = validation_scores or {}
    raw = {
        name: np.asarray(known[name] if name in known else bundle.detector.score(validation), dtype=float)
        for name, bundle in members.items()
    }
    ensemble = EnsembleDetector(
        members={name: bundle.detector for name, bundle in members.items()},
        weights=dict(weights or {}),
        member_thresholds={name: bundle.threshold for name, bundle in members.items()},
        combine=combine,
    ).calibrate(validation, raw)
    surprises = ensemble.member_surprise(validation, raw)
    extra: dict[str, Any] = {}
    events = EventF1Scorer.of(validation, labels) if threshold_policy == "event_f1" else None
    if events is not None and events.window_rows:
        # The members' own alarm thresholds follow the ensemble's policy: a fixed alarm budget
        # (the members' 1% validation quantile) over-alarms when validation holds fewer
        # anomalous rows than the budget, and under-alarms when it holds more.
        for name, scores in raw.items():
            f1, threshold, tied_from, tied_to = events.best_threshold_range(scores)
            ensemble.member_thresholds[name] = threshold
            # Replaces the member's own alarm budget: say where the new threshold sits, as
            # choose_threshold does for the ensemble's.
            extra[f"{name}.threshold_quantile"] = float(np.mean(scores < threshold))
            extra[f"{name}.member_validation_event_f1"] = f1
            extra[f"{name}.member_threshold_tied_from"] = tied_from
            extra[f"{name}.member_threshold_tied_to"] = tied_to
    if select_weights:
        assert events is not None  # select_weights requires the event_f1 policy (checked above)
        windows = len(events.window_rows)
        if windows >= MIN_SELECTION_WINDOWS:
            extra.update(_select_weights(ensemble, surprises, events, raw))
        else:
            log.warning(
                "ensemble weights not selected: %d labelled validation windows, fewer than %d; "
                "equal weights, combine=%s",
                windows,
                MIN_SELECTION_WINDOWS,
                ensemble.combine,
            )
            extra["selection_skipped_windows"] = windows
    levels = ensemble.alarm_levels() if ensemble.combine == "any" else None
    # Each member's operating point on the surprise scale (-log10 of its validation tail
    # probability), shown next to its threshold in the member's tracking run.
    for name, level in (levels or {}).items():
        extra[f"{name}.member_alarm_surprise"] = level
    scores = ensemble.combine_surprises(surprises, levels, raws=raw)
    threshold, basis = choose_threshold(
        scores, validation, labels, threshold_policy, alarm_quantile, events, _floor(ensemble.combine)
    )
    contract = next(iter(members.values())).contract
    meta: dict[str, Any] = {
        "members": ",".join(members),
        "weights": ",".join(f"{k}={v:g}" for k, v in ensemble.weights.items()),
        "combine": ensemble.combine,
        "threshold_policy": threshold_policy,
        **basis,
        **extra,
        "calibration_seconds": round(time.perf_counter() - started, 3),
        "validation_rows": len(validation),
        "feature_transform_version": contract.transform_version,
    }
    for name, bundle in members.items():
        # The member's training record, except what the ensemble changed (its threshold's basis).
        meta.update({f"{name}.{k}": v for k, v in bundle.meta.items() if f"{name}.{k}" not in extra})
    return DetectorBundle(detector=ensemble, contract=contract, threshold=threshold, meta=meta)


def weight_candidates(
    names: list[str], rules: list[str]
) -> list[tuple[tuple[int, int, int], str, dict[str, float]]]:
    """Distinct (combine rule, weights) pairs from :data:`WEIGHT_GRID`, in grid order.

    Weights that normalise to the same shares are one candidate, kept in its simplest form.
    Each comes with its simplicity: ``(members used, unequal weights, position of the rule)``.
    """
    candidates: dict[tuple[str, tuple[float, ...]], tuple[tuple[int, int, int], dict[str, float]]] = {}
    for rule_index, rule in enumerate(rules):
        for values in itertools.product(WEIGHT_GRID, repeat=len(names)):
            if rule == "any":  # weights only include or leave out a member
                values = tuple(1.0 if v > 0 else 0.0 for v in values)
            total = sum(values)
            if total <= 0:
                continue
            used = [v for v in values if v > 0]
            key = (rule, tuple(round(v / total, 9) for v in values))
            order = (len(used), int(len(set(used)) > 1), rule_index)
            if key not in candidates or order < candidates[key][0]:
                candidates[key] = (order, dict(zip(names, values, strict=True)))
    return [(order, rule, weights) for (rule, _), (order, weights) in candidates.items()]


def _select_weights(
    ensemble: EnsembleDetector,
    surprises: Mapping[str, np.ndarray],
    events: EventF1Scorer,
    raws: Mapping[str, np.ndarray],
) -> dict[str, Any]:
    """Set the ensemble's combine rule and weights by validation event F1 (in place).

    Candidates go from the simplest (one member) to the most elaborate (all members, unequal
    weights); a candidate displaces the current choice only if it gains more than one
    labelled window's worth of F1 (``1 / windows``): with a few dozen validation windows,
    smaller gains are noise, and a member kept for noise adds its false alarms on new data.
    """
    if not events.window_rows:
        raise ValueError("select_weights needs labelled windows in the validation period and there are none")
    rules = [ensemble.combine, *(r for r in COMBINE_RULES if r != ensemble.combine)]
    candidates = weight_candidates(list(ensemble.members), rules)
    tolerance = 1.0 / len(events.window_rows)
    best: tuple[float, str, dict[str, float]] | None = None
    for _, rule, weights in sorted(candidates, key=lambda candidate: candidate[0]):
        ensemble.combine, ensemble.weights = rule, weights
        f1, _ = events.best_threshold(ensemble.combine_surprises(surprises, raws=raws), _floor(rule))
        if best is None or f1 > best[0] + tolerance:
            best = (f1, rule, weights)
    assert best is not None
    ensemble.combine, ensemble.weights = best[1], best[2]
    return {"selection_validation_event_f1": best[0], "selection_candidates": len(candidates)}


def train_from_folders(
    kind: str,
    config: DetectorConfig,
    train_dir: str,
    validation_dir: str,
    alarm_quantile: float = 0.99,
) -> DetectorBundle:
    """Load the split feature tables written by the pipeline and train one detector on them."""
    from aiops.features import load_features

    train, feature_config = load_features(train_dir)
    validation, _ = load_features(validation_dir)
    return train_detector(kind, train, validation, config, feature_config, alarm_quantile)


def step_metrics(bundle: DetectorBundle) -> dict[str, float]:
    """The numbers a training step shows on the dashboard (KFP Metrics)."""
    keys = ("fit_seconds", "train_rows", "validation_rows")
    out = {"threshold": bundle.threshold}
    out.update({k: float(v) for k, v in bundle.meta.items() if k in keys})
    trained_for = getattr(bundle.detector, "train_seconds", None)  # the LSTM's training loop alone
    if trained_for is not None:
        out["train_seconds"] = float(trained_for)
    history = getattr(bundle.detector, "history", None)
    if history:
        out["final_train_loss"] = float(history[-1])
    return out
