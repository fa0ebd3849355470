"""Fast scorers for the ensemble's members: the same numbers as ``detector.score``, on numpy arrays.

Each detector's own ``score(frame)`` takes a pandas feature table. That costs several
milliseconds per call whatever the batch size (scikit-learn's input validation and joblib
dispatch, the forecaster's per-workload DataFrames, the LSTM's group-by), which is most of a
single-row request. These scorers compute the same values from a :class:`~serving.batch.Batch`:

* :class:`CompiledForest` walks every tree of the Isolation Forest at once with array indexing
  (or calls each tree's compiled ``apply`` for larger batches), and explains rows by the
  isolation each feature's splits bought.
* :class:`ForecastScorer` looks the forecasts up in a :class:`CachedForecaster` and applies
  the detector's residual z-scores (level correction and running mean included).
* :class:`LstmScorer` lays the rows out from arrays and runs the detector's own windowing,
  preparation and TorchScript network.
* :class:`GenericScorer` calls the detector's own ``score`` (any other member kind, or a fast
  scorer that failed its check).

They read fitted attributes of the detectors, some of them private, so
:func:`serving.scoring.build_scorer` checks every fast scorer against the detector's own
``score`` when the model loads and falls back to :class:`GenericScorer` on any difference.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from aiops.detectors import forecast as forecast_module
from aiops.detectors.ensemble import finite, nan_to_num
from aiops.detectors.forecast import workload_of
from serving.batch import Batch

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MemberOutput:
    """A member's verdict on the target rows of a batch.

    Attributes:
        raw: The detector's own anomaly score per target row.
        signal: The signal that drove the score per target row, where the detector can tell
            (forecast: the worst residual; LSTM: the worst reconstructed signal), else ``None``.
        credit: Per-feature isolation credit ``(n_targets, n_features)`` (Isolation Forest only).
    """

    raw: np.ndarray
    signal: np.ndarray | None = None
    credit: np.ndarray | None = None


class MemberScorer(Protocol):
    """Scores the target rows of a batch the way one detector's ``score`` does."""

    kind: str

    def score(self, batch: Batch, explain: bool = False) -> MemberOutput:
        """Raw scores (and what drove them) for ``batch.targets``."""
        ...


class GenericScorer:
    """The detector's own ``score`` on a DataFrame built from the batch (always correct, slower)."""

    kind = "generic"

    def __init__(self, detector: Any, feature_names: tuple[str, ...]) -> None:
        self.detector = detector
        self.feature_names = feature_names

    def score(self, batch: Batch, explain: bool = False) -> MemberOutput:
        """Score every row (history included) and keep the targets."""
        raw = np.asarray(self.detector.score(batch.to_frame(self.feature_names)), dtype=float)
        return MemberOutput(raw=raw[batch.targets])


# --------------------------------------------------------------------------- Isolation Forest


#: From this many rows the trees' compiled ``apply`` beats walking all trees at once.
_CYTHON_MIN_ROWS = 64
#: Forest views up to this many inputs keep a dense per-node credit table (nodes x inputs).
_DENSE_CREDIT_MAX_FEATURES = 64


class CompiledForest:
    """A fitted ``SimpleImputer`` + ``IsolationForest`` pipeline, evaluated tree-parallel.

    All trees are packed into flat node arrays. Leaves point to themselves with an infinite
    threshold, so one loop of ``max_depth`` steps moves every (tree, row) pair to its leaf
    without branching. Scores equal ``-pipeline.score_samples(X)``, which is what
    :class:`~aiops.detectors.isolation_forest.IsolationForestDetector` returns.

    The walk moves over *slots* rather than nodes: node ``k`` owns slots ``2k`` (its right
    branch) and ``2k + 1`` (its left branch), and every per-node array is laid out per slot.
    A step then reads the split at the current (even) slot, adds 1 when the row goes left,
    and jumps to the slot of the child on that side. For a few rows the walk costs about a
    microsecond per numpy call, not per element, so it keeps the calls few and free of
    dtype conversions (which cost twice as much as the call itself): indices are ``intp``
    and the float32-rounded inputs are compared as float64, as sklearn compares them.

    With ``explain=True`` every split on a row's path credits its feature with the bits of
    isolation it bought, ``log2(training samples at the node / samples on the row's side)``,
    averaged over trees. A split that sends the row away from almost every training sample
    earns many bits, one that keeps it with the crowd earns about one, so the features that
    isolate a row carry most of its credit (in the spirit of DIFFI, Carletti et al. 2020, which
    credits splits by inverse depth).
    """

    kind = "isolation_forest"

    def __init__(self, detector: Any, feature_index: Mapping[str, int]) -> None:
        pipeline = detector._pipeline  # fitted by IsolationForestDetector.fit
        imputer, forest = pipeline.named_steps["impute"], pipeline.named_steps["forest"]
        # The forest reads a view of the contract, in its own order, possibly with columns the
        # detector derives (e.g. a stall indicator); those come from the detector's own code.
        inputs = tuple(
            getattr(detector, "input_names", None) or getattr(detector, "columns", None) or feature_index
        )
        self.detector = detector
        self.contract_names = tuple(feature_index)
        self.feature_ids = np.array([feature_index.get(name, -1) for name in inputs], dtype=np.int64)
        self.direct = bool((self.feature_ids >= 0).all())
        self.stall_ids = self._stall_columns(detector, inputs, feature_index)
        if self.stall_ids is not None:
            self.stall_read = np.concatenate([self.feature_ids[:-1], self.stall_ids])
        self.medians = np.asarray(imputer.statistics_, dtype=np.float64)
        n_features = self.n_features = len(self.medians)
        if n_features != len(inputs):
            raise ValueError(f"the imputer saw {n_features} features, the detector names {len(inputs)}")
        known = self.feature_ids >= 0
        #: Training medians in contract order (NaN for features the forest does not read).
        self.contract_medians = np.full(len(feature_index), np.nan)
        self.contract_medians[self.feature_ids[known]] = self.medians[known]
        lefts, rights, feats, thresholds, leaf_depths, bits_left, bits_right = [], [], [], [], [], [], []
        offset = 0
        for tree_idx, (estimator, columns) in enumerate(
            zip(forest.estimators_, forest.estimators_features_, strict=True)
        ):
            tree = estimator.tree_
            nodes = np.arange(tree.node_count)
            is_leaf = tree.children_left < 0
            lefts.append(np.where(is_leaf, nodes, tree.children_left) + offset)
            rights.append(np.where(is_leaf, nodes, tree.children_right) + offset)
            # Trees of a feature-subsampled forest index their own column subset.
            columns = np.asarray(columns) if forest._max_features != n_features else np.arange(n_features)
            feats.append(np.where(is_leaf, 0, columns[np.maximum(tree.feature, 0)]))
            thresholds.append(np.where(is_leaf, np.inf, tree.threshold))
            samples = tree.n_node_samples.astype(np.float64)
            left_n = np.where(is_leaf, samples, samples[np.maximum(tree.children_left, 0)])
            right_n = np.where(is_leaf, samples, samples[np.maximum(tree.children_right, 0)])
            bits_left.append(np.log2(samples / np.maximum(left_n, 1.0)))
            bits_right.append(np.log2(samples / np.maximum(right_n, 1.0)))
            # Exactly sklearn's per-leaf depth: decision path + average path of the leaf's samples - 1.
            leaf_depths.append(
                forest._decision_path_lengths[tree_idx] + forest._average_path_length_per_tree[tree_idx] - 1.0
            )
            offset += tree.node_count
        self.feature = np.concatenate(feats).astype(np.int32)
        self.threshold = np.concatenate(thresholds)
        self.leaf_depth = np.concatenate(leaf_depths)
        # Interleaved per node: [right, left], indexed by slot 2 * node + (goes left).
        children = np.column_stack([np.concatenate(rights), np.concatenate(lefts)]).ravel()
        if 2 * len(children) >= np.iinfo(np.int32).max:
            raise ValueError("forest too large for 32-bit node indices")
        self.children = children.astype(np.int32)
        self.bits = np.column_stack([np.concatenate(bits_right), np.concatenate(bits_left)]).ravel()
        self.roots = np.cumsum([0] + [len(x) for x in lefts[:-1]]).astype(np.int32)
        # The walk's per-slot view of the same nodes (see the class docstring): both slots of a
        # node hold its split, and a slot's successor is the first slot of the child it leads to.
        self.slot_feature = np.repeat(self.feature, 2).astype(np.intp)
        self.slot_threshold = np.repeat(self.threshold, 2)
        self.slot_next = 2 * self.children.astype(np.intp)
        self.root_slots = 2 * self.roots.astype(np.intp)
        self.max_depth = max(estimator.tree_.max_depth for estimator in forest.estimators_)
        from sklearn.ensemble._iforest import _average_path_length

        self.denominator = len(forest.estimators_) * float(_average_path_length([forest._max_samples])[0])
        self.trees = [estimator.tree_ for estimator in forest.estimators_]
        self.subsampled = forest._max_features != n_features
        self.columns_per_tree = [np.asarray(c) for c in forest.estimators_features_]
        # Per-node isolation bits by input feature along the root-to-node path: a leaf fixes the
        # path, so a row's explanation is a sum of its leaves' rows. Dense only for small views.
        self.leaf_credit = self._path_credit() if n_features <= _DENSE_CREDIT_MAX_FEATURES else None

    def _path_credit(self) -> np.ndarray:
        credit = np.zeros((len(self.feature), self.n_features))
        for root in self.roots.tolist():
            stack = [root]
            while stack:
                node = stack.pop()
                for side in (0, 1):  # 0: right child, 1: left child
                    child = int(self.children[2 * node + side])
                    if child != node:  # a leaf is its own child
                        credit[child] = credit[node]
                        credit[child, self.feature[node]] += self.bits[2 * node + side]
                        stack.append(child)
        return credit

    def score(self, batch: Batch, explain: bool = False) -> MemberOutput:
        """Anomaly score (higher = more anomalous) of the target rows."""
        x = self._inputs(batch)
        x = np.where(np.isnan(x), self.medians, x)
        # sklearn validates the input as float32 before walking the trees; so do we.
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        n = len(x32)
        path: list[tuple[np.ndarray, np.ndarray]] | None = None
        if n >= _CYTHON_MIN_ROWS and not (explain and self.leaf_credit is None):
            node = self._leaves_per_tree(x32)
        else:
            path = [] if explain and self.leaf_credit is None else None
            node = self._walk(x32, path)
        depths = self.leaf_depth.take(node)
        # Tree by tree, in sklearn's order: sum(axis=0) would do that for many rows, but adds a
        # lone row's column pairwise, which moves the last bit of its score (and, through the
        # calibration's reference scores, the ensemble's surprise).
        total = np.cumsum(depths, axis=0)[-1]
        # sklearn's guard for a one-sample forest: every score is 2 ** -1.
        raw = 2.0 ** -(total / self.denominator) if self.denominator else np.full(n, 0.5)
        bonus = None
        if self.stall_ids is not None:
            bonus = np.asarray(self.detector.stall_bonus(x[:, -1]), dtype=np.float64) * np.ones(n)
            raw = raw + bonus
        credit = None
        if explain:
            credit = self._credit(path, n) if path is not None else self._leaf_sum(node)
            if bonus is not None and (bonus > 0).any():
                self._credit_stall(credit, batch, raw, bonus)
        return MemberOutput(raw=raw, credit=credit)

    def _credit_stall(self, credit: np.ndarray, batch: Batch, raw: np.ndarray, bonus: np.ndarray) -> None:
        """Give the stall rule's part of a row's score to the ``<signal>__run`` feature behind it.

        The rule adds ``bonus`` to the forest's score when a signal repeats its value for longer
        than any run in training. That part of the score is no split of the forest, so its bits
        credit nothing; the longest run then gets the share ``bonus / score`` of the row's
        credit, and the forest's features share the rest.
        """
        assert self.stall_ids is not None
        rows = np.flatnonzero(bonus > 0)
        runs = nan_to_num(batch.features.take(batch.targets[rows], axis=0).take(self.stall_ids, axis=1))
        longest = self.stall_ids[np.argmax(runs, axis=1)]
        share = np.clip(bonus[rows] / raw[rows], 0.0, 1.0 - 1e-9)
        forest = credit[rows].sum(axis=1)
        credit[rows, longest] += np.where(forest > 0, forest * share / (1.0 - share), 1.0)

    def _walk(self, x32: np.ndarray, path: list[tuple[np.ndarray, np.ndarray]] | None) -> np.ndarray:
        """Global leaf index ``(trees, rows)`` by walking all trees at once (cheap for few rows)."""
        # float32 -> float64 is exact: the comparisons below are sklearn's float32 <= float64 ones.
        values = x32.astype(np.float64).ravel()
        n = len(x32)
        # Row r's values start at r * n_features of the flat input (one row: no offset to add).
        offsets = (np.arange(n) * self.n_features)[None, :] if n > 1 else None
        slot = np.repeat(self.root_slots[:, None], n, axis=1)
        for _ in range(self.max_depth):
            feature = self.slot_feature.take(slot)
            value = values.take(feature if offsets is None else offsets + feature)
            # Slot 2*node + 1 leads to the left child, 2*node to the right one.
            slot = slot + (value <= self.slot_threshold.take(slot))
            if path is not None:
                # Leaves earn no bits (both sides hold all their samples).
                path.append((feature, self.bits.take(slot)))
            slot = self.slot_next.take(slot)
        return slot >> 1

    def _leaves_per_tree(self, x32: np.ndarray) -> np.ndarray:
        """Global leaf index ``(trees, rows)`` from each tree's compiled ``apply`` (cheaper for many rows)."""
        leaves = np.empty((len(self.trees), len(x32)), dtype=np.int64)
        for t, tree in enumerate(self.trees):
            rows = np.ascontiguousarray(x32[:, self.columns_per_tree[t]]) if self.subsampled else x32
            leaves[t] = tree.apply(rows)
        return leaves + self.roots[:, None]

    def _leaf_sum(self, node: np.ndarray) -> np.ndarray:
        assert self.leaf_credit is not None
        credit = self.leaf_credit.take(node, axis=0).sum(axis=0) / len(self.roots)  # (rows, inputs)
        return self._to_contract(credit)

    @staticmethod
    def _stall_columns(
        detector: Any, inputs: tuple[str, ...], feature_index: Mapping[str, int]
    ) -> np.ndarray | None:
        """Contract positions of the ``<signal>__run`` features behind a trailing stall input.

        IsolationForestDetector's ``health`` view appends one derived input: the longest run
        of repeated values over its ``stall_signals``. Reading it from the arrays saves the
        DataFrame the detector would need (a millisecond per request); the load-time check
        catches any change of that definition.
        """
        stall = tuple(getattr(detector, "stall_signals", ()) or ())
        runs = [f"{signal}__run" for signal in stall]
        derived = [name for name in inputs if name not in feature_index]
        if not stall or derived != [inputs[-1]] or not all(run in feature_index for run in runs):
            return None
        return np.array([feature_index[run] for run in runs], dtype=np.int64)

    def _inputs(self, batch: Batch) -> np.ndarray:
        """The forest's input matrix ``(targets, n_features)``: a new array, the caller may write to it."""
        # take() on each axis in turn: np.ix_ costs more than the copy for a few rows.
        rows = batch.features.take(batch.targets, axis=0)
        if self.direct:
            return rows.take(self.feature_ids, axis=1)
        if self.stall_ids is not None:
            # One gather: the forest's contract features, then the runs behind the stall input.
            read = rows.take(self.stall_read, axis=1)
            x = read[:, : self.n_features].copy()
            x[:, -1] = np.log1p(np.max(nan_to_num(read[:, self.n_features - 1 :]), axis=1))
            return x
        frame = batch.to_frame(self.contract_names).iloc[batch.targets]
        return np.asarray(self.detector._matrix(frame), dtype=np.float64)

    def _credit(self, path: list[tuple[np.ndarray, np.ndarray]], n: int) -> np.ndarray:
        """Isolation bits per (row, contract feature), averaged over trees: ``(n, n_contract)``."""
        features = np.stack([feature for feature, _ in path])  # (depth, trees, rows)
        bits = np.stack([gained for _, gained in path])
        rows = np.broadcast_to(np.arange(n), features.shape)
        flat = (rows * self.n_features + features).ravel()
        summed = np.bincount(flat, weights=bits.ravel(), minlength=n * self.n_features)
        return self._to_contract(summed.reshape(n, self.n_features) / len(self.roots))

    def _to_contract(self, credit: np.ndarray) -> np.ndarray:
        # Derived inputs (no contract feature of their own) are left out of the explanation.
        known = self.feature_ids >= 0
        full = np.zeros((len(credit), len(self.contract_names)))
        full[:, self.feature_ids[known]] = credit[:, known]
        return full


# --------------------------------------------------------------------------- forecasts


#: Steps fetched after (and before) a missed instant: 12 h ahead and 1 h back at a 1-minute step.
#: A forecaster call costs about the same for 1 or 800 instants (Prophet ~40 ms, ARIMA less).
DEFAULT_PREFETCH_STEPS = 720
DEFAULT_LOOKBACK_STEPS = 60


class CachedForecaster:
    """Memoises a forecaster's ``predict`` per instant; a miss also fills the next steps.

    The forecast detector's forecasts depend only on the training period (both forecasters
    are deterministic functions of the instant), so the forecast for a (workload, signal,
    instant) never changes. Live traffic asks for the same few instants again and again
    (every pod of a workload, every scrape of the same minute), and a forecaster call costs
    tens of milliseconds whatever the number of instants, so one call fills ``prefetch``
    steps ahead (and ``lookback`` behind, for replays) and later requests are dictionary
    lookups.

    Not thread-safe: the predictor scores on one thread (the server's event loop).
    """

    def __init__(
        self,
        inner: Any,
        step_ns: int,
        prefetch: int = DEFAULT_PREFETCH_STEPS,
        lookback: int = DEFAULT_LOOKBACK_STEPS,
        max_entries: int = 200_000,
    ) -> None:
        self.inner = inner
        self.step_ns = int(step_ns)
        self.prefetch = prefetch
        self.lookback = lookback
        self.max_entries = max_entries
        self.columns: list[str] = []
        self._cache: dict[int, tuple[float, ...]] = {}
        self.misses = 0

    def predict(self, ts: pd.Series) -> pd.DataFrame:
        """The wrapped forecaster's interface: its columns (``yhat``, ...) for each instant, in order."""
        instants = pd.DatetimeIndex(pd.to_datetime(ts, utc=True)).as_unit("ns").asi8
        values = self.lookup(instants)
        return pd.DataFrame(values, columns=self.columns)

    def lookup(self, instants: np.ndarray) -> np.ndarray:
        """Forecasts ``(len(instants), len(columns))`` for int64 nanosecond instants."""
        wanted = instants.tolist()
        missing = [t for t in set(wanted) if t not in self._cache]
        if missing:
            self._fill(missing, keep=wanted)
        cache = self._cache
        return np.array([cache[t] for t in wanted], dtype=np.float64).reshape(len(instants), -1)

    def column(self, name: str) -> int:
        """Position of one of the forecaster's output columns (after the first lookup)."""
        return self.columns.index(name)

    def _fill(self, missing: list[int], keep: list[int]) -> None:
        self.misses += 1
        steps = range(-self.lookback, self.prefetch + 1)
        wanted = {t + k * self.step_ns for t in missing for k in steps}
        instants = np.array(sorted(wanted - self._cache.keys()), dtype=np.int64)
        table = self.inner.predict(pd.Series(pd.to_datetime(instants, utc=True)))
        self.columns = [str(c) for c in table.columns]
        values = table.to_numpy(dtype=np.float64)
        _make_room(self._cache, len(instants), self.max_entries, keep)
        self._cache.update(zip(instants.tolist(), map(tuple, values.tolist()), strict=True))


def _make_room(cache: dict[Any, Any], incoming: int, max_entries: int, keep: list[Any]) -> None:
    """Drop the oldest half of a full memo (and room for ``incoming``), except the ``keep`` keys.

    Oldest first (dicts keep insertion order): live traffic moves forward in time. The keys of
    the request being answered stay, or its own hits could vanish before they are read.
    """
    if len(cache) + incoming <= max_entries:
        return
    kept = set(keep)
    for key in list(cache)[: len(cache) // 2 + incoming]:
        if key not in kept:
            del cache[key]


def install_forecast_cache(
    detector: Any, step_seconds: float, prefetch: int = DEFAULT_PREFETCH_STEPS
) -> None:
    """Wrap every fitted forecaster of a forecast detector in a :class:`CachedForecaster` (in place).

    Both the fast scorer and the detector's own ``score`` then read the same cache, so the
    load-time check compares the scoring arithmetic, not two forecaster calls.
    """
    for model in detector.models.values():
        if not isinstance(model.forecaster, CachedForecaster):
            model.forecaster = CachedForecaster(model.forecaster, int(step_seconds * 1e9), prefetch)


@functools.lru_cache(maxsize=65_536)
def _group_of(cluster: str, namespace: str, pod: str) -> str:
    """The forecast detector's workload key of a pod (its ``_groups``), memoised per entity."""
    return f"{cluster}/{namespace}/{workload_of(pod)}"


def _log(values: np.ndarray) -> np.ndarray:
    return np.log1p(np.clip(values, 0.0, None))


def _rows_by_group(groups: list[str], targets: np.ndarray) -> dict[str, np.ndarray]:
    """Rows (in order, history included) of each workload that has a target row."""
    rows: dict[str, list[int]] = {}
    for i, group in enumerate(groups):
        rows.setdefault(group, []).append(i)
    scored = {groups[t] for t in targets.tolist()}
    return {group: np.array(found, dtype=np.int64) for group, found in rows.items() if group in scored}


def _unique_instants(stamps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(stamps, return_inverse=True)``, without its sorting for a lone row."""
    if len(stamps) == 1:
        return stamps, np.zeros(1, dtype=np.intp)
    return np.unique(stamps, return_inverse=True)


@dataclass(frozen=True)
class _Workload:
    """The forecast models of one workload, in the detector's signal order.

    Attributes:
        known: Positions (in ``ForecastScorer.signals``) of the signals with a model.
        sigma: Each known signal's training residual spread.
        forecasters: Each known signal's cached forecaster.
        units: Each known signal's unit (residuals are on ``log1p(value / unit)``).
        columns: Each known signal's position in the contract's features.
    """

    known: np.ndarray
    sigma: np.ndarray
    forecasters: tuple[CachedForecaster, ...]
    units: np.ndarray
    columns: np.ndarray


#: Workload instants whose log-forecast vectors :class:`ForecastScorer` keeps (a few MB).
_LOG_FORECAST_ENTRIES = 100_000


class ForecastScorer:
    """``ForecastDetector.score`` on arrays: log-scale residual against the corrected workload forecast.

    Per signal, a row's expected value is its workload's forecast (from the cache) plus the
    detector's online level correction, the trailing median residual of the workload's rows
    *in the same request* before the row's instant; its score is the residual in units of the
    workload's training residual spread, maxed over signals. A workload with a single instant
    in the request has no correction (the detector's window excludes the instant itself), so
    only workloads with history in the request pay for it. A pod with ``persistence`` rows in
    the request also gets the detector's running-mean score (its mean residual over those
    rows against the training spread of such means). History rows (telemetry input) are read
    for both but not scored.

    A workload's logged forecasts of all its signals at one instant are memoised as one
    vector (bounded, oldest dropped first): like the forecasts themselves they never change,
    and a single-row request then costs one dictionary lookup instead of a cache lookup,
    a division, a clip and a log per signal.
    """

    kind = "forecast"

    def __init__(self, detector: Any, feature_index: Mapping[str, int]) -> None:
        self.detector = detector
        self.signals: tuple[str, ...] = tuple(detector.signals)
        self.columns = np.array([feature_index[s] for s in self.signals], dtype=np.int64)
        # Residuals are taken on log1p(value / unit) per signal (units of 1: plain log1p).
        self.units = np.array([detector.unit(s) for s in self.signals])
        self.models: dict[tuple[str, str], Any] = detector.models
        # The level correction's settings: with them the correction of all signals takes one
        # pandas call per workload; without them, the detector's own method per signal.
        self.persistence = int(getattr(detector.config, "persistence", 1))
        self.min_instants = max(1, int(getattr(forecast_module, "_LEVEL_MIN_INSTANTS", 1)))
        window = getattr(detector.config, "level_window", None)
        has_constant = hasattr(forecast_module, "_LEVEL_MIN_INSTANTS")
        self.window: str | None = str(window) if window and has_constant else None
        if not window:
            self.min_instants = 1 << 62  # no correction configured: always 0
        for model in self.models.values():
            if not isinstance(model.forecaster, CachedForecaster):
                raise TypeError("install_forecast_cache() first: the fast scorer reads the cache")
        self.workloads: dict[str, _Workload] = {}
        for group in dict.fromkeys(group for group, _ in self.models):
            known = [j for j, s in enumerate(self.signals) if (group, s) in self.models]
            models = [self.models[(group, self.signals[j])] for j in known]
            self.workloads[group] = _Workload(
                known=np.array(known, dtype=np.int64),
                sigma=np.array([float(m.sigma) for m in models]),  # the spread this scorer divides by
                forecasters=tuple(m.forecaster for m in models),
                units=self.units[known],
                columns=self.columns[known],
            )
        self._names = np.array([*self.signals, None], dtype=object)  # index -1: no signal
        self._log_forecasts: dict[tuple[str, int], np.ndarray] = {}

    def score(self, batch: Batch, explain: bool = False) -> MemberOutput:
        """Max over signals of ``|log1p(x/unit) - log1p(forecast/unit) - level| / sigma`` (0: none)."""
        if len(batch) == 1 and self.persistence > 1:
            return self._lone_row(batch)
        cluster, namespace, pod, _ = batch.entities
        keys = zip(cluster.tolist(), namespace.tolist(), pod.tolist(), strict=True)
        groups = [_group_of(*key) for key in keys]
        targets = batch.targets
        values = _log(batch.features.take(self.columns, axis=1) / self.units)  # (rows, signals)
        mean = np.full(values.shape, np.nan)
        sigma = np.full(values.shape, np.nan)
        for group, rows in _rows_by_group(groups, targets).items():
            workload = self.workloads.get(group)
            if workload is None:
                continue
            codes, position = _unique_instants(batch.timestamps.take(rows))
            expected = self._base(group, workload, codes)[position]
            at = (rows[:, None], workload.known)
            if len(codes) > self.min_instants:
                residual = values[at] - expected
                expected = expected + self._levels(codes, residual, position)
            # (Fewer instants: the correction is 0 for every instant, see _levels.)
            mean[at] = expected
            sigma[at] = workload.sigma
        z = nan_to_num(np.abs(values[targets] - mean[targets]) / sigma[targets])
        if self.persistence > 1 and len(batch) >= self.persistence:
            # (Fewer rows: no entity has a running mean, its score is 0 and z >= 0 already.)
            z = np.fmax(z, self._running(batch, np.array(groups, dtype=object), values - mean))
        # z >= 0, so the max over signals is the detector's running fmax from 0.
        scores = z.max(axis=1) if z.shape[1] else np.zeros(len(targets))
        strongest = np.where(scores > 0, z.argmax(axis=1) if z.shape[1] else -1, -1)
        return MemberOutput(raw=scores, signal=self._names[strongest])

    def _lone_row(self, batch: Batch) -> MemberOutput:
        """:meth:`score` of a request of one row, on its workload's signals only.

        One row has no history in the request: no level correction and (``persistence`` above
        1) no running mean, so its score is the largest ``|log1p(x/unit) - log1p(forecast/unit)|
        / sigma``, computed with the same numpy operations on the workload's known signals (the
        others score 0).
        """
        cluster, namespace, pod, _ = batch.entities
        group = _group_of(cluster[0], namespace[0], pod[0])
        workload = self.workloads.get(group)
        strongest = -1
        score = 0.0
        if workload is not None and len(workload.known):
            expected = self._base(group, workload, batch.timestamps)[0]
            values = _log(batch.features[0].take(workload.columns) / workload.units)
            # As nan_to_num: a missing value scores 0, an infinite one the largest float.
            z = [finite(v) for v in (np.abs(values - expected) / workload.sigma).tolist()]
            score = max(z)
            if score > 0:
                strongest = int(workload.known[z.index(score)])
        return MemberOutput(raw=np.array([score]), signal=self._names[[strongest]])

    def _base(self, group: str, workload: _Workload, codes: np.ndarray) -> np.ndarray:
        """``log1p`` of the workload's forecasts ``(len(codes), len(workload.known))`` at sorted instants."""
        memo = self._log_forecasts
        wanted = [(group, t) for t in codes.tolist()]
        missing = [key for key in wanted if key not in memo]
        if missing:
            instants = np.array([t for _, t in missing], dtype=np.int64)
            logged = np.column_stack(
                [
                    _log(f.lookup(instants)[:, f.column("yhat")] / unit)
                    for f, unit in zip(workload.forecasters, workload.units.tolist(), strict=True)
                ]
            )
            _make_room(memo, len(missing), _LOG_FORECAST_ENTRIES, wanted)
            memo.update(zip(missing, logged, strict=True))
        return np.array([memo[key] for key in wanted]).reshape(len(codes), len(workload.known))

    def _running(self, batch: Batch, groups: np.ndarray, residual: np.ndarray) -> np.ndarray:
        """``|mean of the pod's last persistence residuals| / sigma_mean`` per target row and signal.

        NaN (so 0) until an entity has ``persistence`` rows in the request: only entities with
        that much history pay for the rolling mean.
        """
        targets = batch.targets
        out = np.zeros((len(targets), len(self.signals)))
        codes = _entity_codes(batch)
        if np.bincount(codes).max() < self.persistence:
            return out
        # Windows of each target row's last `persistence` rows of its entity, in time order;
        # a NaN residual in a window makes its mean NaN, as the detector's min_periods does.
        order, age, ends = _entity_layout(batch, codes)
        ready = np.flatnonzero(age[ends] >= self.persistence - 1)
        steps = ends[ready, None] - (self.persistence - 1) + np.arange(self.persistence)[None, :]
        running = residual[order[steps]].mean(axis=1)
        spread_of = {
            group: np.array([self._sigma_mean(group, signal) for signal in self.signals])
            for group in set(groups[targets[ready]].tolist())
        }
        spread = np.array([spread_of[group] for group in groups[targets[ready]].tolist()])
        out[ready] = np.nan_to_num(np.abs(running) / spread.reshape(running.shape), nan=0.0)
        return out

    def _sigma_mean(self, group: str, signal: str) -> float:
        model = self.models.get((group, signal))
        spread = float(getattr(model, "sigma_mean", 0.0)) if model is not None else 0.0
        return spread if spread > 0 else np.nan

    def _levels(self, codes: np.ndarray, residual: np.ndarray, position: np.ndarray) -> np.ndarray:
        """The detector's online level correction for every signal of one workload at once."""
        if len(codes) <= self.min_instants:
            # Every instant's window (which excludes the instant) holds too few instants.
            return np.zeros(residual.shape)
        if self.window is None:
            instants = pd.DatetimeIndex(pd.to_datetime(codes, utc=True))
            return np.column_stack(
                [
                    np.asarray(self.detector._level(instants, column, position))[position]
                    for column in residual.T
                ]
            )
        # ForecastDetector._level (a time-based rolling median) for all signals at once, in numpy.
        finite = np.isfinite(residual)
        sums = np.stack(
            [np.bincount(position, weights=c, minlength=len(codes)) for c in np.nan_to_num(residual).T],
            axis=1,
        )
        counts = np.stack([np.bincount(position, weights=c, minlength=len(codes)) for c in finite.T], axis=1)
        means = np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)
        # Trailing window [t - window, t) over the workload's instants (sorted, unique), median
        # of the per-instant means once min_instants of them are there, else 0.
        low = np.searchsorted(codes, codes - pd.Timedelta(self.window).value, side="left")
        level = np.zeros(means.shape)
        for i in np.flatnonzero(np.arange(len(codes)) - low >= self.min_instants).tolist():
            block = means[low[i] : i]
            finite = np.isfinite(block).sum(axis=0)
            enough = finite >= self.min_instants
            if enough.any():
                level[i, enough] = _nanmedian_columns(block[:, enough], finite[enough])
        return level[position]


def _nanmedian_columns(block: np.ndarray, finite: np.ndarray) -> np.ndarray:
    """``np.nanmedian(block, axis=0)`` for columns holding ``finite`` (>= 1) non-NaN values each.

    The same sort and the same mean of the two middle values (for an odd count, the middle
    one twice) as numpy's small-array path, without its masked-array overhead (~1 ms a call).
    """
    ordered = np.sort(block, axis=0)  # NaN sorts last
    high = finite // 2
    low = np.where(finite % 2 == 1, high, high - 1)
    columns = np.arange(block.shape[1])
    return (ordered[low, columns] + ordered[high, columns]) / 2.0


# --------------------------------------------------------------------------- LSTM autoencoder


def _entity_layout(batch: Batch, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Rows in (entity, time) order, each ordered row's age within its entity, targets' positions."""
    order = np.lexsort((batch.timestamps, codes))  # stable: ties keep request order
    sorted_codes = codes[order]
    first = np.flatnonzero(np.r_[True, sorted_codes[1:] != sorted_codes[:-1]])
    age = np.arange(len(order)) - np.repeat(first, np.diff(np.r_[first, len(order)]))
    position = np.empty(len(order), dtype=np.int64)
    position[order] = np.arange(len(order))
    return order, age, position[batch.targets]


def _entity_codes(batch: Batch) -> np.ndarray:
    codes: dict[tuple[str, ...], int] = {}
    return np.array(
        [codes.setdefault(key, len(codes)) for key in zip(*batch.entities, strict=True)], dtype=np.int64
    )


class LstmScorer:
    """Reconstruction error of each target row's own step, in a window of its entity's rows.

    The rows are laid out as the detector lays out a frame (entity by entity, in time order,
    signals ``log1p``-transformed, each row's age within its entity), from the arrays instead
    of a DataFrame; the windows, their preparation and the network are the detector's own
    (``_last_step_errors``). A row without a full window of its entity's history *in the
    request* scores 0 (no opinion): a lone feature row gets no LSTM opinion, telemetry input
    carries the history.
    """

    kind = "lstm_autoencoder"

    def __init__(self, detector: Any, feature_index: Mapping[str, int]) -> None:
        self.detector = detector
        self.signals: tuple[str, ...] = tuple(detector.signals)
        self.columns = np.array([feature_index[s] for s in self.signals], dtype=np.int64)
        self.window = int(detector.config.window)
        self.error_scale = np.asarray(detector.error_scale, dtype=np.float64)
        if detector._scripted is None or not callable(getattr(detector, "_last_step_errors", None)):
            raise TypeError("the LSTM detector holds no trained network or no array-level scoring")

    def score(self, batch: Batch, explain: bool = False) -> MemberOutput:
        """Mean over signals of the last step's squared error relative to the training error."""
        raw = np.zeros(batch.n_targets)
        signal = np.full(batch.n_targets, None, dtype=object)
        if len(batch) < self.window:
            return MemberOutput(raw=raw, signal=signal)  # no entity can fill a window
        order, age, ends = _entity_layout(batch, _entity_codes(batch))
        full = age[ends] >= self.window - 1
        if full.any():
            values = batch.features[np.ix_(order, self.columns)]
            # float64 as in the detector, which centres the windows before it casts to float32.
            logged = np.log1p(np.clip(values, 0.0, None))
            errors = self.detector._last_step_errors(logged, age, ends[full]) / self.error_scale
            raw[full] = errors.mean(axis=1)
            signal[full] = np.array(self.signals, dtype=object)[errors.argmax(axis=1)]
        return MemberOutput(raw=raw, signal=signal)
