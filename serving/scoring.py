"""The deployable model's score on a :class:`~serving.batch.Batch`: ensemble, members, explanation.

:func:`build_scorer` turns a loaded :class:`~aiops.model.DetectorBundle` into an
:class:`EnsembleScorer`: a fast scorer per member (see :mod:`serving.members`), each checked
against the detector's own ``score`` on probe rows, and the ensemble's calibration (the
validation reference of every member, the weights, the combination rule, the threshold).

The top contributing features of a row come from the Isolation Forest member, the only one
that reads the feature vector as a whole: the features whose splits bought the most bits of
isolation of the row across the trees (see :class:`~serving.members.CompiledForest`). The
forecast and LSTM members report the one signal that drove their own score.
"""

from __future__ import annotations

import bisect
import logging
import math
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from aiops.detectors.ensemble import EnsembleDetector, finite, surprise
from aiops.model import DetectorBundle
from aiops.schema import ENTITY_KEYS, KEY_COLUMNS, TIMESTAMP
from serving.batch import Batch
from serving.errors import ModelLoadError
from serving.members import (
    DEFAULT_PREFETCH_STEPS,
    CachedForecaster,
    CompiledForest,
    ForecastScorer,
    GenericScorer,
    LstmScorer,
    MemberOutput,
    MemberScorer,
    install_forecast_cache,
)

log = logging.getLogger(__name__)

#: Relative tolerance of the load-time check; the LSTM runs in float32 with batch-size
#: dependent kernels, everything else must match to rounding.
_CHECK_RTOL = {"lstm_autoencoder": 1e-4}
#: Rows from which the LSTM member is scored on a second thread (below, the hand-off costs more).
PARALLEL_MIN_ROWS = 16
_FAST_SCORERS: dict[str, type] = {
    "isolation_forest": CompiledForest,
    "forecast": ForecastScorer,
    "lstm_autoencoder": LstmScorer,
}


@dataclass(frozen=True)
class MemberResult:
    """One member's verdict on the scored rows.

    Attributes:
        raw: The detector's own score.
        surprise: Calibrated score ``-log10 P(validation score >= raw)`` (``None`` outside an ensemble).
        raw_threshold: The member's own alarm threshold on ``raw``, when known.
        signal: The signal behind the score per row, where the member can tell.
    """

    raw: np.ndarray
    surprise: np.ndarray | None
    raw_threshold: float | None
    signal: np.ndarray | None = None


@dataclass(frozen=True)
class Scores:
    """Everything the predictor reports for the target rows of a batch.

    Attributes:
        score: Ensemble score per row.
        is_anomaly: ``score >= threshold``.
        members: Per-member results, in the ensemble's member order.
        top_features: Indices ``(n, k)`` into the contract's features, strongest first; with a
            large ``k``, features the forest gave no credit come last with share 0.
        top_shares: Share of the row's isolation credit each top feature holds ``(n, k)``.
        timings: Seconds spent per stage (``score.<member>``, ``combine``, ``explain``).
    """

    score: np.ndarray
    is_anomaly: np.ndarray
    members: dict[str, MemberResult]
    top_features: np.ndarray
    top_shares: np.ndarray
    timings: dict[str, float] = field(default_factory=dict)


class EnsembleScorer:
    """Scores batches with fast member scorers and the ensemble's calibration."""

    def __init__(
        self,
        bundle: DetectorBundle,
        scorers: Mapping[str, MemberScorer],
    ) -> None:
        self.bundle = bundle
        self.scorers = dict(scorers)
        self.threshold = float(bundle.threshold)
        detector = bundle.detector
        self.is_ensemble = isinstance(detector, EnsembleDetector)
        self.reference: dict[str, np.ndarray] = dict(detector.reference) if self.is_ensemble else {}
        thresholds = dict(detector.member_thresholds) if self.is_ensemble else {}
        if not self.is_ensemble:
            thresholds = {name: self.threshold for name in self.scorers}
        self.member_thresholds: dict[str, float] = thresholds
        # combine="any": the members' alarm levels, fixed once the model is loaded.
        self.alarm_levels: dict[str, float] | None = (
            detector.alarm_levels() if self.is_ensemble and detector.combine == "any" else None
        )
        self.forest = next((s for s in self.scorers.values() if isinstance(s, CompiledForest)), None)
        self._executor: ThreadPoolExecutor | None = None
        self._row_rule = _RowRule(self) if self.is_ensemble else None

    def _worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="aiops-member")
        return self._executor

    @property
    def scorer_kinds(self) -> dict[str, str]:
        """Which scorer runs each member: ``fast`` or ``generic``."""
        return {
            name: "generic" if isinstance(s, GenericScorer) else "fast" for name, s in self.scorers.items()
        }

    @property
    def forecast_cache_misses(self) -> int:
        """Forecaster calls made so far (each fills the cache for the following steps)."""
        total = 0
        for detector in members_of(self.bundle).values():
            for model in getattr(detector, "models", {}).values():
                if isinstance(getattr(model, "forecaster", None), CachedForecaster):
                    total += model.forecaster.misses
        return total

    def score(self, batch: Batch, top_k: int = 5) -> Scores:
        """Score ``batch.targets``; ``top_k`` features per row (0 skips the explanation)."""
        timings: dict[str, float] = {}
        outputs: dict[str, MemberOutput] = {}

        def run(name: str, scorer: MemberScorer) -> None:
            started = time.perf_counter()
            outputs[name] = scorer.score(batch, explain=top_k > 0 and scorer is self.forest)
            timings[f"score.{name}"] = time.perf_counter() - started

        # The LSTM's forward pass runs in torch without the GIL: on a batch worth it, it runs
        # on a second core while this thread scores the other members.
        aside = [n for n, s in self.scorers.items() if isinstance(s, LstmScorer)]
        pending = None
        if aside and batch.n_targets >= PARALLEL_MIN_ROWS:
            pending = self._worker().submit(run, aside[0], self.scorers[aside[0]])
        for name, scorer in self.scorers.items():
            if pending is None or name != aside[0]:
                run(name, scorer)
        if pending is not None:
            pending.result()
        outputs = {name: outputs[name] for name in self.scorers}  # member order, as the ensemble

        started = time.perf_counter()
        raws = {name: out.raw for name, out in outputs.items()}
        score, surprises = self.combine(raws)
        members = {
            name: MemberResult(
                raw=out.raw,
                surprise=surprises.get(name),
                raw_threshold=self.member_thresholds.get(name),
                signal=out.signal,
            )
            for name, out in outputs.items()
        }
        timings["combine"] = time.perf_counter() - started

        started = time.perf_counter()
        credit = next((out.credit for out in outputs.values() if out.credit is not None), None)
        top, shares = _top_features(credit, top_k, batch.n_targets)
        timings["explain"] = time.perf_counter() - started
        return Scores(score, score >= self.threshold, members, top, shares, timings)

    def combine(self, raws: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Ensemble score and per-member surprise, exactly as ``EnsembleDetector.score`` combines them."""
        if not self.is_ensemble:
            (raw,) = raws.values()
            return raw, {}
        if self._row_rule is not None and all(len(raw) == 1 for raw in raws.values()):
            return self._row_rule.combine(raws)
        # + 0.0 turns the -0.0 of -log10(1) into 0.0 for the response; values are unchanged.
        surprises = {name: surprise(self.reference[name], raw) + 0.0 for name, raw in raws.items()}
        # The ensemble's own rule, from the surprises computed here.
        detector: EnsembleDetector = self.bundle.detector
        combined = detector.combine_surprises(surprises, self.alarm_levels, raws=raws)
        return np.asarray(combined, dtype=float), surprises


class _RowRule:
    """:meth:`EnsembleScorer.combine` for a single row, in Python floats (a served row's common case).

    One row through the array code costs some fifty numpy calls of a microsecond each; the same
    rule on floats (:meth:`EnsembleDetector.combine_row`) costs a few microseconds. The surprise
    of a member can only take the ``len(reference) + 1`` values ``-log10((k + 1) / (n + 1))``,
    which are computed once with numpy's own ``log10``, so both paths give the same bits;
    ``build_scorer`` checks that on the probe rows and the tests on whole test periods.
    """

    def __init__(self, scorer: EnsembleScorer) -> None:
        self.detector: EnsembleDetector = scorer.bundle.detector
        self.references = {name: ref.tolist() for name, ref in scorer.reference.items()}
        self.tables = {
            name: (-np.log10((np.arange(len(ref) + 1) + 1.0) / (len(ref) + 1.0)) + 0.0).tolist()
            for name, ref in scorer.reference.items()
        }
        self.levels = scorer.alarm_levels or {}

    def combine(self, raws: Mapping[str, np.ndarray]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        # nan_to_num(raw, nan=-inf): the surprise's and the threshold's view of a raw score.
        values = {name: finite(float(raw[0]), nan=-math.inf) for name, raw in raws.items()}
        surprises = {}
        for name, value in values.items():
            reference = self.references[name]
            surprises[name] = self.tables[name][len(reference) - bisect.bisect_left(reference, value)]
        combined = self.detector.combine_row(surprises, self.levels, values)
        return np.array([combined]), {name: np.array([part]) for name, part in surprises.items()}


def _top_features(credit: np.ndarray | None, top_k: int, n: int) -> tuple[np.ndarray, np.ndarray]:
    if credit is None or top_k <= 0:
        return np.full((n, 0), -1, dtype=np.int64), np.zeros((n, 0))
    k = min(top_k, credit.shape[1])
    if n == 1:
        # One row: a stable sort of its credits is three numpy calls instead of ten.
        row = credit[0]
        top = np.argsort(-row, kind="stable")[:k]
        total = row.sum()
        return top[None, :], (row[top] / (total if total > 0 else 1.0))[None, :]
    # argpartition finds the k largest in O(F); only those k are then sorted.
    part = np.argpartition(-credit, k - 1, axis=1)[:, :k]
    # Indexing with a row column is take_along_axis without its Python overhead (~8 µs a call).
    rows = np.arange(len(credit))[:, None]
    order = np.argsort(-credit[rows, part], axis=1, kind="stable")
    top = part[rows, order]
    totals = credit.sum(axis=1, keepdims=True)
    shares = credit[rows, top] / np.where(totals > 0, totals, 1.0)
    return top, shares


# --------------------------------------------------------------------------- construction


def members_of(bundle: DetectorBundle) -> dict[str, Any]:
    """The bundle's detectors by name: an ensemble's members, or the single detector."""
    detector = bundle.detector
    if isinstance(detector, EnsembleDetector):
        return dict(detector.members)
    return {str(getattr(detector, "kind", "detector")): detector}


def _fast_scorer(detector: Any, feature_index: Mapping[str, int]) -> MemberScorer | None:
    scorer_cls = _FAST_SCORERS.get(str(getattr(detector, "kind", "")))
    if scorer_cls is None:
        return None
    try:
        return scorer_cls(detector, feature_index)
    except (AttributeError, KeyError, TypeError, ValueError, IndexError) as exc:
        log.warning("no fast scorer for %s (%s); using its own score()", type(detector).__name__, exc)
        return None


def _agrees(kind: str, fast: np.ndarray, reference: np.ndarray) -> bool:
    rtol = _CHECK_RTOL.get(kind, 1e-9)
    return fast.shape == reference.shape and bool(np.allclose(fast, reference, rtol=rtol, atol=1e-12))


def _reference_scores(name: str, detector: Any, generic: GenericScorer, probe: Batch) -> np.ndarray:
    try:
        return generic.score(probe).raw
    except Exception as exc:
        raise ModelLoadError(
            f"ensemble member {name!r} ({type(detector).__name__}) cannot score rows with this version of "
            f"aiops ({type(exc).__name__}: {exc}); it was likely trained by another version: serve it with "
            "the image it was trained with, or retrain"
        ) from exc


def _checked(name: str, detector: Any, fast: MemberScorer, probe: Batch, expected: np.ndarray) -> bool:
    kind = str(getattr(detector, "kind", ""))
    try:
        agrees = _agrees(kind, fast.score(probe).raw, expected)
    except Exception as exc:  # noqa: BLE001 - any failure means: do not trust the fast path
        log.warning("fast scorer for member %s failed on probe rows (%s); using its own score()", name, exc)
        return False
    if not agrees:
        log.warning("fast scorer for member %s disagrees with its own score(); using score()", name)
    return agrees


def build_scorer(
    bundle: DetectorBundle, probe: Batch | None = None, prefetch_steps: int = DEFAULT_PREFETCH_STEPS
) -> EnsembleScorer:
    """Build the scorer of a bundle; every fast member scorer must match the detector on ``probe``.

    Args:
        bundle: The loaded model.
        probe: Rows to check the fast scorers on (see :func:`probe_batch`); no check when ``None``.
        prefetch_steps: Steps of forecasts fetched ahead on a forecast cache miss.

    Raises:
        ModelLoadError: When the combined score disagrees with the bundle's own ``score``
            (the serving code no longer matches the model code: refuse to serve it).
    """
    feature_names = bundle.contract.feature_names
    feature_index = {name: i for i, name in enumerate(feature_names)}
    step = bundle.contract.config.step_seconds
    scorers: dict[str, MemberScorer] = {}
    reference_raws: dict[str, np.ndarray] = {}
    for name, detector in members_of(bundle).items():
        if getattr(detector, "kind", "") == "forecast" and hasattr(detector, "models"):
            install_forecast_cache(detector, step, prefetch_steps)
        generic = GenericScorer(detector, feature_names)
        fast = _fast_scorer(detector, feature_index)
        if probe is not None:
            reference_raws[name] = _reference_scores(name, detector, generic, probe)
        if (
            fast is not None
            and probe is not None
            and not _checked(name, detector, fast, probe, reference_raws[name])
        ):
            fast = None
        scorers[name] = fast if fast is not None else generic
    scorer = EnsembleScorer(bundle, scorers)
    if probe is not None:
        # Same member scores in, same ensemble score out: this checks the combination rule alone.
        expected = np.asarray(bundle.detector.score(probe.to_frame(feature_names)), dtype=float)[
            probe.targets
        ]
        got, _ = scorer.combine(reference_raws)
        if not np.allclose(got, expected, rtol=1e-9, atol=1e-12):
            raise ModelLoadError(
                "the serving ensemble combines member scores differently from the model's own score() "
                f"(max difference {np.max(np.abs(got - expected)):.3g} on probe rows); serving code and "
                "model code disagree"
            )
        _check_row_rule(scorer, reference_raws, got)
    return scorer


def _check_row_rule(scorer: EnsembleScorer, raws: Mapping[str, np.ndarray], expected: np.ndarray) -> None:
    """The single-row rule must give the array rule's bits on every probe row, else it is not used."""
    if scorer._row_rule is None:
        return
    for i, want in enumerate(expected.tolist()):
        (got,) = scorer.combine({name: raw[i : i + 1] for name, raw in raws.items()})[0].tolist()
        if got != want and not (math.isnan(got) and math.isnan(want)):
            log.warning("the single-row ensemble rule differs from the array rule on probe rows; not used")
            scorer._row_rule = None
            return


def probe_batch(bundle: DetectorBundle, example: pd.DataFrame | None = None, seed: int = 0) -> Batch:
    """Rows to check the fast scorers on: the model's input example, or rows made from the bundle.

    The made-up rows sit near the training medians (Isolation Forest imputer), on the workloads
    the forecasters know, shortly after the end of training, with some values pushed far out
    and some missing, two entities of three consecutive steps each (so LSTM windows have history).
    """
    names = bundle.contract.feature_names
    rng = np.random.default_rng(seed)
    if example is not None and all(c in example.columns for c in (*KEY_COLUMNS, *names)):
        base = example.loc[:, [*KEY_COLUMNS, *names]].reset_index(drop=True)
    else:
        base = _synthetic_rows(bundle, rng)
    varied = base.copy()
    values = varied.loc[:, list(names)].to_numpy(dtype=np.float64)
    values = values * rng.choice([0.0, 1.0, 3.0, -2.0], size=values.shape, p=[0.1, 0.6, 0.2, 0.1])
    values[rng.random(values.shape) < 0.1] = np.nan
    varied.loc[:, list(names)] = values
    step = pd.Timedelta(seconds=bundle.contract.config.step_seconds)
    varied[TIMESTAMP] = pd.to_datetime(varied[TIMESTAMP], utc=True) + step * len(base)
    frame = pd.concat([base, varied], ignore_index=True)
    return Batch.from_frame(frame, names)


def _synthetic_rows(bundle: DetectorBundle, rng: np.random.Generator) -> pd.DataFrame:
    names = bundle.contract.feature_names
    center = np.zeros(len(names))
    entities = [("probe", "probe", f"probe-{i}", "probe-node") for i in range(2)]
    ends = []
    for name, detector in members_of(bundle).items():
        pipeline = getattr(detector, "_pipeline", None)
        if pipeline is not None and "impute" in getattr(pipeline, "named_steps", {}):
            # Training medians of the features the forest reads (its view of the contract).
            medians = np.asarray(pipeline.named_steps["impute"].statistics_, dtype=np.float64)
            columns = getattr(detector, "columns", None) or names
            position = {name: i for i, name in enumerate(names)}
            for name, value in zip(columns, medians, strict=False):
                if name in position:
                    center[position[name]] = value
        for group, _signal in getattr(detector, "models", {}):
            cluster, namespace, workload = (str(group).split("/", 2) + ["", ""])[:3]
            pod = f"{workload}-bcdfg"  # a ReplicaSet-style suffix that workload_of() strips
            if _workload_matches(pod, workload):
                entities.insert(0, (cluster, namespace, pod, "probe-node"))
        end = bundle.meta.get(f"{name}.train_end") or bundle.meta.get("train_end")
        if end:
            ends.append(pd.Timestamp(end))
    start = max(ends) if ends else pd.Timestamp.now(tz="UTC").floor("min")
    start = start.tz_localize("UTC") if start.tzinfo is None else start.tz_convert("UTC")
    step = pd.Timedelta(seconds=bundle.contract.config.step_seconds)
    rows = []
    for cluster, namespace, pod, node in entities[:2]:
        for k in range(3):
            values = center * (1 + 0.1 * rng.standard_normal(len(names)))
            keys = dict(zip(KEY_COLUMNS, (start + k * step, cluster, namespace, pod, node), strict=True))
            rows.append({**keys, **dict(zip(names, values, strict=True))})
    frame = pd.DataFrame(rows)
    frame[list(ENTITY_KEYS)] = frame[list(ENTITY_KEYS)].astype(object)
    return frame


def _workload_matches(pod: str, workload: str) -> bool:
    from aiops.detectors.forecast import workload_of

    return bool(workload) and workload_of(pod) == workload
