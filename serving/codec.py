"""Request decoding and response encoding for both inference protocols (no kserve imports).

Request formats (the full reference, with examples, is ``serving/README.md``):

* **v1** ``POST /v1/models/NAME:predict``, a JSON object with exactly one of

  - ``instances``: feature rows, each an object with the key columns (``timestamp``,
    ``cluster``, ``namespace``, ``pod``, ``node``) and every feature of the model's contract
    (numbers; ``null`` = missing), nothing else; or each a feature vector, a list of those
    columns' values in the contract's order (keys first), which ``parameters.contract_id``
    or ``feature_names`` may pin as on a v2 tensor;
  - ``telemetry``: canonical metric rows (key columns + metric columns) of the recent past
    of one or more entities; the server builds the features with the shared transform and
    scores the latest row of each entity (``parameters.rows = "all"``: every row);
  - ``entities``: entity keys for an online feature-store lookup (``--feature-repo``; else 501).

  ``parameters`` (optional): ``top_k`` (features to explain per row, default 5, 0 = none),
  ``rows`` (``latest`` | ``all``, telemetry only), and for ``instances`` ``contract_id`` (a
  string) or ``feature_names`` (a comma-separated string or a list of strings), which must
  match the model's when present.

* **v2** ``POST /v2/models/NAME/infer`` (open inference protocol), inputs either

  - ``features`` FP64 ``[n, n_features]`` in the contract's order, plus ``timestamp``
    (BYTES ISO 8601, or INT64/FP64 Unix seconds) and ``cluster``, ``namespace``, ``pod``,
    ``node`` (BYTES), each ``[n]``. ``features`` may carry the parameter ``feature_names``
    (comma-separated) or ``contract_id``; when present they must match the model's;
  - or ``telemetry`` BYTES ``[k]``, each element one metric row as a JSON object.

Timestamps are ISO 8601 strings (a string without an offset is read as UTC) or Unix seconds.
Features may be missing (``null``/NaN): warm-up rows lack their lags and windows, and every
member handles a missing value (the forest imputes the training median, the forecaster and
the LSTM treat it as no evidence). A row with no feature value at all, or an infinite value,
is rejected.
"""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd

from aiops.features import FeatureContract, build_features
from aiops.schema import ENTITY_KEYS, KEY_COLUMNS, TIMESTAMP, SchemaError, validate_metrics
from serving.batch import Batch
from serving.errors import NotConfiguredError, RequestError
from serving.scoring import Scores

DEFAULT_TOP_K = 5
MAX_TOP_K = 50
ROW_MODES = ("latest", "all")
_NUMBER_TYPES = frozenset({float, int, type(None)})
_NUMERIC_TENSORS = frozenset({"FP64", "FP32", "FP16", "INT64", "INT32", "INT16", "INT8", "UINT8"})
_V1_KINDS = ("instances", "telemetry", "entities")


@dataclass(frozen=True)
class Options:
    """Per-request settings (the ``parameters`` of either protocol).

    Attributes:
        top_k: Features explained per row (0 = no explanation).
        rows: Telemetry input: score the ``latest`` row of each entity or ``all`` rows.
    """

    top_k: int = DEFAULT_TOP_K
    rows: str = "latest"


@dataclass(frozen=True)
class Tensor:
    """A v2 input tensor, independent of kserve's classes.

    Attributes:
        name: Input name.
        datatype: v2 datatype (``FP64``, ``BYTES``, ...).
        shape: Declared shape.
        data: The values (flat or nested list, or numpy array).
        parameters: Per-input parameters.
    """

    name: str
    datatype: str
    shape: list[int]
    data: Any
    parameters: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Decoded:
    """A decoded request: the batch to score, its settings, and how it came in."""

    batch: Batch
    options: Options
    kind: str  # "instances" | "telemetry" | "entities"


def contract_id(contract: FeatureContract) -> str:
    """Short fingerprint of the ordered feature names and transform version."""
    text = "\n".join([contract.transform_version, *contract.feature_names])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _shown(names: Sequence[str], limit: int = 5) -> str:
    listed = ", ".join(repr(n) for n in list(names)[:limit])
    return listed + (f" and {len(names) - limit} more" if len(names) > limit else "")


def describe_mismatch(given: Sequence[str], expected: Sequence[str]) -> str:
    """Say how a list of names differs from the expected one: missing, unknown, or order."""
    given_set, expected_set = set(given), set(expected)
    missing = [n for n in expected if n not in given_set]
    unknown = [n for n in given if n not in expected_set]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing ({_shown(missing)})")
    if unknown:
        parts.append(f"{len(unknown)} unknown ({_shown(unknown)})")
    if not parts and len(given) != len(expected):
        parts.append(f"{len(given) - len(expected)} duplicated")
    if not parts:
        first = next(i for i, (a, b) in enumerate(zip(given, expected, strict=True)) if a != b)
        parts.append(
            f"misordered: position {first} holds {given[first]!r}, the model expects {expected[first]!r}"
        )
    return "; ".join(parts)


# --------------------------------------------------------------------------- column parsing


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


#: Instants a request may carry (int64 ns): 1970 to 2199. pandas holds 1677-2262, but the
#: forecasters measure time from their training data and fetch hours ahead of a request, so
#: the edges of that range overflow there (a 500 instead of a 400).
_EARLIEST_NS = 0
_LATEST_NS = int(pd.Timestamp("2200-01-01", tz="UTC").value)
_RANGE_TEXT = "from 1970-01-01 to 2199-12-31 UTC"


#: A fraction of a second with more than six digits: finer than ``datetime`` holds.
_SUB_MICROSECOND = re.compile(r"[.,]\d{7}")


def _iso_instants(values: Sequence[str]) -> np.ndarray | None:
    """int64 ns of ISO 8601 strings, or ``None`` when one of them needs pandas' parser.

    ``datetime.fromisoformat`` takes a microsecond where pandas takes ~0.2 ms per call;
    pandas remains the reference for nanoseconds and unusual forms (and for the error message).
    """
    out = []
    try:
        for text in values:
            if _SUB_MICROSECOND.search(text):
                return None  # fromisoformat would cut the fraction to microseconds
            instant = datetime.fromisoformat(text)
            if instant.tzinfo is None:
                instant = instant.replace(tzinfo=UTC)  # no offset: UTC, as pandas reads it here
            out.append((instant - _EPOCH) // _MICROSECOND * 1000)
        # Years outside 1677-2262 overflow int64 nanoseconds here: pandas then says so (400).
        return np.array(out, dtype=np.int64)
    except (ValueError, OverflowError):
        return None


def parse_timestamps(values: Sequence[Any], where: str) -> np.ndarray:
    """UTC instants (int64 ns) from ISO 8601 strings (no offset = UTC) or Unix seconds."""
    kinds = set(map(type, values))
    if kinds <= {str}:
        fast = _iso_instants(values)
        if fast is not None:
            return _in_range(fast, where)
        try:
            parsed = pd.to_datetime(list(values), utc=True, format="ISO8601")
        except (ValueError, TypeError, OverflowError) as exc:
            raise RequestError(
                f"{where}: timestamps must be ISO 8601 strings {_RANGE_TEXT}, e.g. "
                f"'2026-01-05T10:00:00Z' ({exc})"
            ) from exc
        if parsed.isna().any():
            raise RequestError(f"{where}: timestamp missing (NaT) at row {int(np.argmax(parsed.isna()))}")
        return _in_range(parsed.as_unit("ns").asi8, where)
    if kinds <= {int, float}:
        try:
            seconds = np.asarray(values, dtype=np.float64)
        except OverflowError:  # an integer beyond float range (stdlib json reads it)
            seconds = np.array([np.inf])
        if not np.isfinite(seconds).all() or (np.abs(seconds) > 1e10).any():
            raise RequestError(
                f"{where}: timestamps as numbers must be finite Unix seconds {_RANGE_TEXT} "
                "(milliseconds are not accepted)"
            )
        return _in_range(np.round(seconds * 1e9).astype(np.int64), where)
    bad = sorted(t.__name__ for t in kinds - {str, int, float}) or sorted(t.__name__ for t in kinds)
    raise RequestError(
        f"{where}: timestamp must be an ISO 8601 string or Unix seconds (all rows alike), "
        f"got {' and '.join(bad)}"
    )


def _in_range(instants: np.ndarray, where: str) -> np.ndarray:
    outside = (instants < _EARLIEST_NS) | (instants >= _LATEST_NS)
    if outside.any():
        row = int(np.argmax(outside))
        shown = pd.Timestamp(int(instants[row]), tz="UTC").isoformat()
        raise RequestError(f"{where}: timestamp {shown} of row {row} is outside {_RANGE_TEXT}")
    return instants


def parse_entity(values: Sequence[Any], key: str, where: str) -> np.ndarray:
    """An entity key column as an object array of strings ('' where a key does not apply)."""
    kinds = set(map(type, values))
    if not kinds <= {str}:
        if kinds <= {str, bytes}:
            values = [v.decode() if isinstance(v, bytes) else v for v in values]
        else:
            bad = sorted(t.__name__ for t in kinds - {str, bytes})
            row = next(i for i, v in enumerate(values) if not isinstance(v, str | bytes))
            raise RequestError(
                f"{where}: '{key}' must be a string ('' where it does not apply), got {', '.join(bad)} "
                f"(first in row {row})"
            )
    return np.array(values, dtype=object)


@functools.lru_cache(maxsize=8)
def _run_columns(names: tuple[str, ...]) -> np.ndarray:
    """Positions of the run-length features (``<signal>__run``: repeats of the latest value)."""
    return np.array([i for i, name in enumerate(names) if name.endswith("__run")], dtype=np.int64)


def check_features(matrix: np.ndarray, names: Sequence[str], where: str) -> None:
    """Reject infinite values, negative run lengths and rows without any feature value."""
    runs = _run_columns(tuple(names))
    if runs.size:
        negative = matrix[:, runs] < 0  # NaN compares False: a missing run is allowed
        if negative.any():
            row, col = (int(i) for i in np.argwhere(negative)[0])
            raise RequestError(
                f"{where}: feature {names[runs[col]]!r} of row {row} is {matrix[row, runs[col]]:g}; a run "
                "length counts repeated samples and cannot be negative"
            )
    infinite = np.isinf(matrix)
    if infinite.any():
        row, col = (int(i) for i in np.argwhere(infinite)[0])
        raise RequestError(
            f"{where}: feature {names[col]!r} of row {row} is infinite; send null for a missing value"
        )
    empty = np.isnan(matrix).all(axis=1)
    if empty.any():
        raise RequestError(
            f"{where}: row {int(np.argmax(empty))} has no feature value at all (every feature is null); "
            "there is nothing to score"
        )


def check_unique_samples(timestamps: np.ndarray, entities: Sequence[np.ndarray], where: str) -> None:
    """Reject two rows for the same entity and instant, as telemetry input does.

    The rows of a request are also each other's history (the LSTM reads an entity's earlier rows
    in the request as its window), so a repeated sample would count as an extra step.
    """
    n = len(timestamps)
    if n < 2:
        return
    keys = list(zip(timestamps.tolist(), *(column.tolist() for column in entities), strict=True))
    if len(set(keys)) == n:
        return
    seen: dict[tuple[Any, ...], int] = {}
    for row, key in enumerate(keys):
        if key in seen:
            raise RequestError(
                f"{where}: row {row} repeats the entity and timestamp of row {seen[key]}; send each "
                "entity's sample at an instant once"
            )
        seen[key] = row


def parse_options(parameters: Any, telemetry: bool) -> Options:
    """Read ``top_k`` and ``rows`` from request parameters (other parameters are ignored)."""
    if parameters is None:
        return Options()
    if not isinstance(parameters, Mapping):
        raise RequestError(f"'parameters' must be an object, got {type(parameters).__name__}")
    top_k = parameters.get("top_k", DEFAULT_TOP_K)
    if isinstance(top_k, bool) or not isinstance(top_k, int) or not 0 <= top_k <= MAX_TOP_K:
        raise RequestError(f"parameter 'top_k' must be an integer from 0 to {MAX_TOP_K}, got {top_k!r}")
    rows = parameters.get("rows", "latest")
    if rows not in ROW_MODES:
        raise RequestError(f"parameter 'rows' must be one of {', '.join(ROW_MODES)}, got {rows!r}")
    if rows != "latest" and not telemetry:
        raise RequestError("parameter 'rows' applies to telemetry input only; feature rows are all scored")
    return Options(top_k=top_k, rows=str(rows))


# --------------------------------------------------------------------------- decoder


class RequestDecoder:
    """Turns v1 bodies and v2 tensors into :class:`Decoded` batches in the contract's order."""

    def __init__(
        self,
        contract: FeatureContract,
        max_rows: int,
        feature_lookup: Callable[[list[dict[str, str]]], pd.DataFrame] | None = None,
    ) -> None:
        self.contract = contract
        self.names: tuple[str, ...] = contract.feature_names
        self.max_rows = max_rows
        self.feature_lookup = feature_lookup
        self.contract_id = contract_id(contract)
        self._expected = frozenset((*KEY_COLUMNS, *self.names))
        self._ordered = (*KEY_COLUMNS, *self.names)
        getter = operator.itemgetter(*self.names)
        self._values: Callable[[dict[str, Any]], tuple[Any, ...]] = (
            getter if len(self.names) > 1 else (lambda row: (getter(row),))
        )

    # ----------------------------------------------------------------- v1

    def v1(self, body: Any) -> Decoded:
        """Decode a v1 body (already parsed JSON, or raw bytes of another content type)."""
        if isinstance(body, bytes | bytearray):
            try:
                body = json.loads(body)
            except (ValueError, UnicodeDecodeError, RecursionError) as exc:
                raise RequestError(f"request body is not valid JSON ({exc})") from exc
        if not isinstance(body, dict):
            raise RequestError(
                f"request body must be a JSON object with one of {', '.join(_V1_KINDS)}, "
                f"got {type(body).__name__}"
            )
        kinds = [k for k in _V1_KINDS if k in body]
        if len(kinds) != 1:
            found = f"got {', '.join(kinds)}" if kinds else f"got keys {_shown(sorted(body))}"
            raise RequestError(
                f"request body needs exactly one of 'instances' (feature rows), 'telemetry' (metric rows) "
                f"or 'entities' (feature-store lookup); {found}"
            )
        kind = kinds[0]
        parameters = body.get("parameters")
        options = parse_options(parameters, telemetry=kind == "telemetry")
        if kind == "instances" and _holds_vectors(body[kind]):
            return Decoded(self.vectors(body[kind], parameters), options, kind)
        rows = self._rows(body[kind], kind)
        if kind == "instances":
            self._check_names(parameters, "instances")
        if kind == "entities":
            return Decoded(self._lookup(rows), options, kind)
        if kind == "telemetry":
            return Decoded(self.telemetry(rows, options.rows), options, kind)
        return Decoded(self.instances(rows), options, kind)

    def _rows(self, rows: Any, kind: str) -> list[dict[str, Any]]:
        if not isinstance(rows, list):
            raise RequestError(f"'{kind}' must be a list of objects, got {type(rows).__name__}")
        self._check_count(rows, kind)
        for i, row in enumerate(rows):
            if not isinstance(row, dict):
                vectors = " (or send every row as a feature vector)" if kind == "instances" else ""
                raise RequestError(
                    f"{kind}[{i}] must be an object of column name to value, "
                    f"got {type(row).__name__}{vectors}"
                )
        return rows

    def _check_count(self, rows: list[Any], kind: str) -> None:
        if not rows:
            raise RequestError(f"'{kind}' is empty; send at least one row")
        if len(rows) > self.max_rows:
            raise RequestError(
                f"'{kind}' holds {len(rows)} rows, over this server's limit of {self.max_rows} "
                "(--max-batch); split the request"
            )

    def vectors(self, rows: list[Any], parameters: Mapping[str, Any] | None = None) -> Batch:
        """Feature vectors: each row a list of the contract's columns in order (keys, then features).

        Positions carry no names, so the request may name what it was built for
        (``parameters.contract_id`` or ``feature_names``), as a v2 ``features`` tensor may.
        """
        self._check_count(rows, "instances")
        width = len(self._ordered)
        if set(map(type, rows)) != {list} or set(map(len, rows)) != {width}:
            i, row = next((i, r) for i, r in enumerate(rows) if type(r) is not list or len(r) != width)
            got = (
                f"{len(row)} value{'' if len(row) == 1 else 's'}" if type(row) is list else type(row).__name__
            )
            raise RequestError(
                f"instances[{i}]: a feature vector needs {width} values, got {got}: the key columns "
                f"{', '.join(KEY_COLUMNS)} then the {len(self.names)} features in contract order "
                f"(contract_id {self.contract_id}, GET /v2/models/NAME/contract); "
                "send every row as a vector, or every row as an object"
            )
        self._check_names(parameters, "instances")
        keys = len(KEY_COLUMNS)
        return self._batch(
            [row[keys:] for row in rows], [[row[k] for row in rows] for k in range(keys)], "instances"
        )

    def instances(self, rows: list[dict[str, Any]]) -> Batch:
        """Feature rows: exactly the key columns and the contract's features."""
        expected = self._expected
        # Rows in canonical order (keys, then features in contract order) are valid as they are.
        # orjson hands every row the same key objects, so after the first row's comparison by
        # value the others compare by identity (the same answer, a millisecond less at 256 rows).
        first = tuple(rows[0])
        in_order = first == self._ordered and all(tuple(row) == first for row in rows)
        for i, row in enumerate(() if in_order else rows):
            if row.keys() != expected:
                raise RequestError(
                    f"instances[{i}]: columns do not match the model's contract: "
                    f"{describe_mismatch(list(row), self._ordered)}; expected the key columns "
                    f"{', '.join(KEY_COLUMNS)} and the {len(self.names)} features listed by "
                    "GET /v2/models/NAME/contract"
                )
        keys = [[row[key] for row in rows] for key in KEY_COLUMNS]
        return self._batch(self._feature_values(rows, in_order), keys, "instances")

    def _batch(self, values: list[Any], keys: list[list[Any]], where: str) -> Batch:
        """Feature values (a row per sample, contract order) and key columns → a checked batch."""
        kinds = set(map(type, itertools.chain.from_iterable(values)))
        if not kinds <= _NUMBER_TYPES or bool in kinds:
            self._raise_bad_value(values)
        try:
            matrix = np.array(values, dtype=np.float64)
        except (OverflowError, ValueError) as exc:
            raise RequestError(f"{where}: feature values must be numbers or null ({exc})") from exc
        check_features(matrix, self.names, where)
        timestamps = parse_timestamps(keys[0], where)
        entities = self._entities(keys[1:], where)
        check_unique_samples(timestamps, entities, where)
        targets = np.arange(len(matrix))
        return Batch(timestamps=timestamps, entities=entities, features=matrix, targets=targets)

    def _feature_values(self, rows: list[dict[str, Any]], in_order: bool) -> list[Any]:
        """Each row's feature values in contract order.

        Clients usually send the key columns then the features in contract order; JSON objects
        keep their order, so those rows are sliced as they come instead of looked up name by name.
        """
        if in_order:
            width = len(KEY_COLUMNS)
            return [list(row.values())[width:] for row in rows]
        return [self._values(row) for row in rows]

    def _raise_bad_value(self, values: list[Any]) -> None:
        for i, row in enumerate(values):
            for name, value in zip(self.names, row, strict=True):
                if type(value) not in _NUMBER_TYPES:
                    raise RequestError(
                        f"instances[{i}]: feature {name!r} must be a number or null, got "
                        f"{type(value).__name__} {value!r:.40}"
                    )

    def _entities(
        self, columns: list[list[Any]], where: str
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        cluster, namespace, pod, node = (
            parse_entity(values, key, where) for key, values in zip(ENTITY_KEYS, columns, strict=True)
        )
        return cluster, namespace, pod, node

    def telemetry(self, rows: list[dict[str, Any]], mode: str = "latest") -> Batch:
        """Canonical metric rows → features (shared transform) → the latest row per entity, or all."""
        metrics = self._metrics_frame(rows)
        try:
            # One entity's rows may lack a series altogether (no CPU limit, no HTTP traffic): the
            # features then hold NaN there, as they do for that pod in a batch of many.
            validate_metrics(metrics, allow_empty_columns=True)
            features = build_features(metrics, self.contract.config)
        except SchemaError as exc:
            raise RequestError(f"telemetry: {exc}") from exc
        missing = [n for n in self.names if n not in features.columns]
        if missing:
            signals = sorted({n.split("__", 1)[0] for n in missing})
            raise RequestError(
                f"telemetry: the model needs signal(s) {_shown(signals)} that these metric rows do not "
                f"provide; send the metric columns they derive from (cpu_utilisation and memory_utilisation "
                f"need the usage and the limit)"
            )
        if mode == "all":
            targets = np.arange(len(features))
        else:
            # build_features sorts by entity then time: an entity's last row is its latest.
            keys = features[list(ENTITY_KEYS)].astype(str).to_numpy()
            changes = (keys[1:] != keys[:-1]).any(axis=1)
            targets = np.flatnonzero(np.r_[changes, True])
        return Batch.from_frame(features, self.names, targets)

    def _metrics_frame(self, rows: list[dict[str, Any]]) -> pd.DataFrame:
        columns = list(dict.fromkeys(itertools.chain.from_iterable(rows)))
        absent = [c for c in KEY_COLUMNS if c not in columns]
        if absent:
            raise RequestError(
                f"telemetry: key column(s) {_shown(absent)} missing; every row needs {', '.join(KEY_COLUMNS)}"
            )
        first = rows[0].keys()
        ragged = next((i for i, row in enumerate(rows) if row.keys() != first), None)
        if ragged is not None:
            extra = sorted(set(rows[ragged]) - set(first))
            lacking = sorted(set(first) - set(rows[ragged]))
            raise RequestError(
                f"telemetry[{ragged}] does not have the columns of telemetry[0]"
                + (f": it adds {_shown(extra)}" if extra else "")
                + (f"{';' if extra else ':'} it lacks {_shown(lacking)}" if lacking else "")
                + "; every row needs the same columns (null for a missing sample)"
            )
        frame = {
            TIMESTAMP: pd.to_datetime(parse_timestamps([r[TIMESTAMP] for r in rows], "telemetry"), utc=True)
        }
        for key in ENTITY_KEYS:
            frame[key] = parse_entity([r[key] for r in rows], key, "telemetry")
        for name in columns:
            if name in KEY_COLUMNS:
                continue
            values = [r[name] for r in rows]
            kinds = set(map(type, values))
            if not kinds <= _NUMBER_TYPES or bool in kinds:
                bad = sorted(t.__name__ for t in kinds - _NUMBER_TYPES)
                raise RequestError(
                    f"telemetry: metric {name!r} must hold numbers or null, got {', '.join(bad)}"
                )
            try:
                frame[name] = np.array(values, dtype=np.float64)
            except OverflowError as exc:  # an integer beyond float range (stdlib json reads it)
                raise RequestError(f"telemetry: metric {name!r} holds a number beyond float range") from exc
        return pd.DataFrame(frame)

    def _lookup(self, rows: list[dict[str, Any]]) -> Batch:
        if self.feature_lookup is None:
            raise NotConfiguredError(
                "online feature lookup by entity key (Feast) is not configured on this server (start it with "
                "--feature-repo); send "
                "'instances' (feature rows) or 'telemetry' (recent metric rows) instead"
            )
        features = self.feature_lookup(rows)
        return Batch.from_frame(features, self.names)

    # ----------------------------------------------------------------- v2

    def v2(self, tensors: Sequence[Tensor], parameters: Mapping[str, Any] | None) -> Decoded:
        """Decode v2 input tensors (see the module docstring for the layout)."""
        by_name: dict[str, Tensor] = {}
        for tensor in tensors:
            if tensor.name in by_name:
                raise RequestError(f"input {tensor.name!r} appears twice")
            by_name[tensor.name] = tensor
        if "telemetry" in by_name:
            if len(by_name) > 1:
                raise RequestError(
                    f"input 'telemetry' comes alone; got also {_shown(sorted(set(by_name) - {'telemetry'}))}"
                )
            options = parse_options(parameters, telemetry=True)
            rows = self._rows(self._json_rows(by_name["telemetry"]), "telemetry")
            return Decoded(self.telemetry(rows, options.rows), options, "telemetry")
        expected = ("features", *KEY_COLUMNS)
        if set(by_name) != set(expected):
            raise RequestError(
                f"inputs do not match: {describe_mismatch(sorted(by_name), expected)}; expected 'features' "
                f"FP64 [n, {len(self.names)}] and {', '.join(KEY_COLUMNS)} [n], "
                "or one BYTES input 'telemetry'"
            )
        options = parse_options(parameters, telemetry=False)
        matrix = self._feature_tensor(by_name["features"])
        n = len(matrix)
        columns = [self._key_tensor(by_name[key], n) for key in KEY_COLUMNS]
        timestamps = parse_timestamps(columns[0], "input 'timestamp'")
        entities = self._entities(columns[1:], "inputs")
        check_unique_samples(timestamps, entities, "inputs")
        return Decoded(
            Batch(timestamps=timestamps, entities=entities, features=matrix, targets=np.arange(n)),
            options,
            "instances",
        )

    def _feature_tensor(self, tensor: Tensor) -> np.ndarray:
        width = len(self.names)
        if tensor.datatype.upper() not in _NUMERIC_TENSORS:
            raise RequestError(
                f"input 'features' must be FP64 (or another numeric type), got {tensor.datatype}"
            )
        shape = list(tensor.shape)
        if len(shape) != 2 or shape[1] != width:
            raise RequestError(
                f"input 'features' has shape {shape}; the model expects [n, {width}]: one row per "
                "sample, the "
                f"{width} features in contract order (contract_id {self.contract_id})"
            )
        if not 1 <= shape[0] <= self.max_rows:
            raise RequestError(
                f"input 'features' holds {shape[0]} rows; send 1 to {self.max_rows} (--max-batch)"
            )
        self._check_names(tensor.parameters, "input 'features'")
        try:
            matrix = _numbers(tensor.data).reshape(shape)
        except (TypeError, ValueError, OverflowError) as exc:
            raise RequestError(
                f"input 'features': data does not fill shape {shape} with numbers (null = missing): {exc}"
            ) from exc
        check_features(matrix, self.names, "input 'features'")
        return matrix

    def _check_names(self, parameters: Mapping[str, Any] | None, where: str) -> None:
        """The contract a request declares (``feature_names`` or ``contract_id``) must be the model's.

        ``feature_names`` is a comma-separated string or a list of strings (as the contract
        endpoint returns it); ``contract_id`` a string.
        """
        parameters = parameters or {}
        declared = parameters.get("feature_names")
        if declared is not None:
            if isinstance(declared, str):
                given = [n.strip() for n in declared.split(",") if n.strip()]
            elif isinstance(declared, list) and all(isinstance(n, str) for n in declared):
                given = declared
            else:
                raise RequestError(
                    f"{where}: parameter 'feature_names' must be a comma-separated string or a list of "
                    f"strings, got {type(declared).__name__}"
                )
            if tuple(given) != self.names:
                raise RequestError(f"{where}: feature_names {describe_mismatch(given, self.names)}")
        claimed = parameters.get("contract_id")
        if claimed is not None and not isinstance(claimed, str):
            raise RequestError(
                f"{where}: parameter 'contract_id' must be a string, got {type(claimed).__name__}"
            )
        if claimed is not None and claimed != self.contract_id:
            raise RequestError(
                f"{where}: built for contract {claimed}, but this model's is {self.contract_id}; "
                "fetch the feature order from GET /v2/models/NAME/contract"
            )

    def _key_tensor(self, tensor: Tensor, n: int) -> list[Any]:
        values = _flat(tensor.data)
        if len(values) != n or int(np.prod(tensor.shape)) != n:
            raise RequestError(
                f"input {tensor.name!r} has {len(values)} values (shape {tensor.shape}); expected {n}"
            )
        return values

    def _json_rows(self, tensor: Tensor) -> list[Any]:
        if tensor.datatype.upper() != "BYTES":
            raise RequestError(
                f"input 'telemetry' must be BYTES (one JSON object per row), got {tensor.datatype}"
            )
        rows = []
        for i, item in enumerate(_flat(tensor.data)):
            try:
                rows.append(json.loads(item))
            except (TypeError, ValueError, RecursionError) as exc:
                raise RequestError(f"input 'telemetry' element {i} is not a JSON object ({exc})") from exc
        return rows


def _holds_vectors(rows: Any) -> bool:
    """Whether v1 ``instances`` are feature vectors (lists) rather than objects, by the first row."""
    return isinstance(rows, list) and bool(rows) and isinstance(rows[0], list)


def _numbers(data: Any) -> np.ndarray:
    """A numeric tensor's data as float64; strings and booleans are refused, not converted.

    numpy would read ``"0.5"`` as 0.5 and ``true`` as 1.0, and promotes a boolean among floats
    without a trace; the v1 decoder refuses both, and so does this. JSON data (a list) has its
    element types checked before numpy sees it (about 30 ns a value).
    """
    if isinstance(data, list):
        values = list(itertools.chain.from_iterable(data)) if data and isinstance(data[0], list) else data
        kinds = set(map(type, values))
        if not kinds <= _NUMBER_TYPES:  # bool is a type of its own here, not int
            bad = sorted(t.__name__ for t in kinds - _NUMBER_TYPES)
            raise ValueError(f"values must be numbers or null, got {', '.join(bad)}")
        return np.array(data, dtype=np.float64)  # checked: numbers and None (NaN) only
    raw = np.asarray(data)
    if raw.dtype.kind in "fiu":
        return raw.astype(np.float64, copy=False)
    if raw.dtype.kind == "O":  # nulls, or mixed types
        kinds = set(map(type, raw.reshape(-1).tolist()))
        if kinds <= _NUMBER_TYPES and bool not in kinds:
            return raw.astype(np.float64)
        bad = sorted(t.__name__ for t in kinds - _NUMBER_TYPES)
        raise ValueError(f"values must be numbers or null, got {', '.join(bad)}")
    shown = {"b": "bool", "U": "str", "S": "bytes"}.get(raw.dtype.kind, str(raw.dtype))
    raise ValueError(f"values must be numbers or null, got {shown}")


def _flat(data: Any) -> list[Any]:
    if isinstance(data, np.ndarray):
        return list(data.reshape(-1))
    if isinstance(data, list) and data and isinstance(data[0], list):
        return list(itertools.chain.from_iterable(data))
    return list(data) if isinstance(data, list | tuple) else [data]


# --------------------------------------------------------------------------- encoding


@dataclass(frozen=True)
class OutputTensor:
    """A v2 output tensor, independent of kserve's classes."""

    name: str
    datatype: str
    data: np.ndarray


#: Formatted instants by (instant, unit): requests repeat the same few scrape instants, and
#: numpy's formatting costs ~10 µs a call however few the rows. Cleared when full.
_ISO_MEMO: dict[tuple[int, str], str] = {}
_ISO_MEMO_ENTRIES = 65_536


_Unit = Literal["s", "ms", "us", "ns"]
#: The coarsest unit that shows every instant exactly: seconds, else milliseconds, ...
_UNITS: tuple[tuple[_Unit, int], ...] = (("s", 1_000_000_000), ("ms", 1_000_000), ("us", 1_000))


def iso_timestamps(instants: np.ndarray) -> list[str]:
    """ISO 8601 UTC strings (``Z``) of int64 nanosecond instants."""
    unit: _Unit = next((u for u, ns in _UNITS if not (instants % ns).any()), "ns")
    wanted = [(t, unit) for t in instants.tolist()]
    missing = list({key for key in wanted if key not in _ISO_MEMO})
    if missing:
        if len(_ISO_MEMO) + len(missing) > _ISO_MEMO_ENTRIES:
            _ISO_MEMO.clear()
        values: Any = np.array([t for t, _ in missing], dtype="datetime64[ns]")
        text = np.datetime_as_string(values, unit=unit, timezone="UTC").tolist()
        _ISO_MEMO.update(zip(missing, text, strict=True))
    return [_ISO_MEMO[key] for key in wanted]


class ResponseEncoder:
    """Turns :class:`~serving.scoring.Scores` into v1 JSON or v2 output tensors."""

    def __init__(self, feature_names: tuple[str, ...], medians: np.ndarray | None) -> None:
        self.names = np.array(feature_names, dtype=object)
        self.medians = medians

    def v1(self, batch: Batch, scores: Scores) -> list[dict[str, Any]]:
        """One object per scored row: keys, score, flag, per-detector results, top features."""
        targets = batch.targets
        keys = {TIMESTAMP: iso_timestamps(batch.timestamps[targets])}
        keys.update(
            {key: values[targets].tolist() for key, values in zip(ENTITY_KEYS, batch.entities, strict=True)}
        )
        n = len(targets)
        detectors = _member_rows(scores, n)
        explained = self._top_lists(batch, scores)
        # Built column-wise with dict(zip(...)): per-row Python work is what a large batch costs.
        header = (*keys, "anomaly_score", "is_anomaly", "detectors", "top_features")
        columns = (*keys.values(), scores.score.tolist(), scores.is_anomaly.tolist(), detectors, explained)
        return [dict(zip(header, values, strict=True)) for values in zip(*columns, strict=True)]

    def _top_lists(self, batch: Batch, scores: Scores) -> list[list[dict[str, Any]]]:
        if scores.top_features.shape[1] == 0:
            return [[] for _ in range(batch.n_targets)]
        top = scores.top_features
        values = batch.features[batch.targets[:, None], top].tolist()
        medians = self.medians[top].tolist() if self.medians is not None else None
        names, shares = self.names[top].tolist(), scores.top_shares.tolist()
        if medians is None:
            medians = [[None] * top.shape[1]] * len(top)
        # Dict displays, not dict(zip(fields, ...)): a third of the time on 256 x k entries.
        return [
            [
                {"name": name, "value": value, "training_median": median, "share": share}
                for name, value, median, share in zip(*row, strict=True)
            ]
            for row in zip(names, values, medians, shares, strict=True)
        ]

    def v2(self, batch: Batch, scores: Scores) -> list[OutputTensor]:
        """Output tensors, all with ``n`` rows first (see ``serving/README.md``)."""
        targets = batch.targets
        out = [
            OutputTensor("anomaly_score", "FP64", scores.score),
            OutputTensor("is_anomaly", "BOOL", scores.is_anomaly),
            OutputTensor(
                TIMESTAMP, "BYTES", np.array(iso_timestamps(batch.timestamps[targets]), dtype=object)
            ),
        ]
        out += [
            OutputTensor(k, "BYTES", v[targets]) for k, v in zip(ENTITY_KEYS, batch.entities, strict=True)
        ]
        for name, result in scores.members.items():
            out.append(OutputTensor(f"{name}.raw", "FP64", result.raw))
            if result.surprise is not None:
                out.append(OutputTensor(f"{name}.surprise", "FP64", result.surprise))
            if result.signal is not None:
                out.append(OutputTensor(f"{name}.signal", "BYTES", _strings(result.signal)))
        top = scores.top_features
        if top.shape[1]:
            out.append(OutputTensor("top_features", "BYTES", self.names[top]))
            out.append(OutputTensor("top_feature_shares", "FP64", scores.top_shares))
            out.append(OutputTensor("top_feature_values", "FP64", batch.features[targets[:, None], top]))
        return out


def _strings(values: np.ndarray) -> np.ndarray:
    return np.array(["" if v is None else str(v) for v in values], dtype=object)


def _member_rows(scores: Scores, n: int) -> list[dict[str, dict[str, Any]]]:
    """Per row, each member's fields (``raw``, ``surprise``, ``raw_threshold``, ...) for that row."""
    per_member = []
    for result in scores.members.values():
        member = _member_lists(result)
        fields = tuple(member)
        columns = [value if isinstance(value, list) else [value] * n for value in member.values()]
        per_member.append([dict(zip(fields, row, strict=True)) for row in zip(*columns, strict=True)])
    names = tuple(scores.members)
    if not names:
        return [{} for _ in range(n)]
    return [dict(zip(names, row, strict=True)) for row in zip(*per_member, strict=True)]


def _member_lists(result: Any) -> dict[str, Any]:
    member: dict[str, Any] = {"raw": result.raw.tolist()}
    if result.surprise is not None:
        member["surprise"] = result.surprise.tolist()
    if result.raw_threshold is not None:
        member["raw_threshold"] = result.raw_threshold
        member["alarm"] = (result.raw >= result.raw_threshold).tolist()
    if result.signal is not None:
        member["signal"] = result.signal.tolist()
    return member
