"""Find, fetch and load the model to serve: from the MLflow registry or from a folder.

Sources:

* ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION``: the alias is resolved to a version
  once, then only that version's ``MLmodel`` file, its input example and its ``bundle``
  artifact are downloaded, and the :class:`~aiops.model.DetectorBundle` is loaded directly
  (no pyfunc environment, no copy of the code path). The version number becomes the
  ``model_version`` label of every metric.
* A folder, such as ``/mnt/models`` filled by KServe's storage initializer: either a
  DetectorBundle folder or an MLflow model folder (``MLmodel`` + ``artifacts/bundle``),
  found at the top or one or two levels down. Its ``model_version`` is ``sha256:<12 hex>``
  of the fitted detector file unless given explicitly.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from aiops.features import FEATURE_VERSION
from aiops.model import BundleFormatError, DetectorBundle
from aiops.pyfunc import BUNDLE_ARTIFACT
from serving.errors import ModelLoadError

log = logging.getLogger(__name__)

_MODEL_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))/?$")
_MLMODEL = "MLmodel"
_BUNDLE_MARKER = "detector.joblib"


@dataclass(frozen=True)
class LoadedModel:
    """A model ready to be scored, with what identifies it.

    Attributes:
        bundle: The detector, its feature contract and its threshold.
        version: Registry version, or a content fingerprint for a folder.
        source: Where it came from (URI or folder), for logs and ``model_info``.
        example: The MLflow input example (a few feature rows), when the model has one.
    """

    bundle: DetectorBundle
    version: str
    source: str
    example: pd.DataFrame | None = None


def load_model(uri: str, tracking_uri: str | None = None, version: str | None = None) -> LoadedModel:
    """Load the model at ``uri`` (see the module docstring for the accepted forms).

    Args:
        uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or a local folder.
        tracking_uri: MLflow tracking/registry URI for ``models:/`` URIs; default
            ``MLFLOW_TRACKING_URI``, else the local store under ``./mlruns``.
        version: Override of the ``model_version`` label.

    Raises:
        ModelLoadError: With what was looked for and where, when nothing loadable is found,
            or when the model was built by another feature transform version.
    """
    if uri.startswith("models:/"):
        loaded = _from_registry(uri, tracking_uri, version)
    else:
        loaded = _from_folder(Path(uri), version)
    _check_transform(loaded)
    return loaded


def _check_transform(loaded: LoadedModel) -> None:
    contract = loaded.bundle.contract
    if contract.transform_version != FEATURE_VERSION:
        raise ModelLoadError(
            f"{loaded.source} was trained on feature transform v{contract.transform_version}, this server "
            f"computes v{FEATURE_VERSION}; serve it with the image it was trained with, or retrain"
        )


# --------------------------------------------------------------------------- registry


def _from_registry(uri: str, tracking_uri: str | None, version: str | None) -> LoadedModel:
    from mlflow.exceptions import MlflowException

    from aiops.registry import mlflow_client, resolve_tracking_uri, sqlite_path

    match = _MODEL_URI.match(uri)
    if match is None:
        raise ModelLoadError(
            f"model URI '{uri}' not understood; use models:/NAME@ALIAS or models:/NAME/VERSION"
        )
    store = resolve_tracking_uri(tracking_uri or "")
    database = sqlite_path(store)
    # MLflow would create an empty store (and its folders) for a path that is not there.
    if database is not None and not database.is_file():
        raise ModelLoadError(
            f"no MLflow store at {database} ({store}); pass --tracking-uri or set MLFLOW_TRACKING_URI"
        )
    client = mlflow_client(store)
    name = match["name"]
    try:
        if match["alias"]:
            number = str(client.get_model_version_by_alias(name, match["alias"]).version)
        else:
            number = str(client.get_model_version(name, match["version"]).version)
        location = client.get_model_version_download_uri(name, number)
    except MlflowException as exc:
        raise ModelLoadError(f"{uri} not found in the registry at {store}: {exc.message}") from exc
    scratch = Path(tempfile.mkdtemp(prefix="aiops-serving-"))
    try:
        mlmodel = _download(f"{location}/{_MLMODEL}", scratch, store)
        bundle_path, example_path = _mlmodel_paths(mlmodel)
        bundle_dir = _download(f"{location}/{bundle_path}", scratch / "bundle", store)
        example = None
        if example_path:
            try:
                example = _read_example(_download(f"{location}/{example_path}", scratch / "example", store))
            except (MlflowException, ModelLoadError, OSError, ValueError, KeyError) as exc:
                log.warning("input example of %s unreadable (%s); probe rows will be made up", uri, exc)
        bundle = _load_bundle(bundle_dir, uri)
    finally:
        # Everything is in memory now (joblib and TorchScript read their files whole).
        shutil.rmtree(scratch, ignore_errors=True)
    log.info("loaded %s: %s version %s from %s", uri, name, number, location)
    return LoadedModel(bundle, version or number, f"models:/{name}/{number}", example)


def _download(artifact_uri: str, dst: Path, tracking_uri: str) -> Path:
    import mlflow.artifacts
    from mlflow.exceptions import MlflowException

    dst.mkdir(parents=True, exist_ok=True)
    try:
        return Path(
            mlflow.artifacts.download_artifacts(
                artifact_uri=artifact_uri,
                dst_path=str(dst),
                tracking_uri=tracking_uri,
                registry_uri=tracking_uri,
            )
        )
    except MlflowException as exc:
        raise ModelLoadError(f"could not download {artifact_uri}: {exc.message}") from exc


def _mlmodel_paths(mlmodel: Path) -> tuple[str, str | None]:
    """The bundle artifact's path inside the MLflow model folder, and its input example's."""
    import yaml

    try:
        spec: dict[str, Any] = yaml.safe_load(mlmodel.read_text()) or {}
        artifacts = spec.get("flavors", {}).get("python_function", {}).get("artifacts", {})
    except (OSError, UnicodeDecodeError, yaml.YAMLError, AttributeError) as exc:
        raise ModelLoadError(f"{mlmodel} is not a readable MLmodel file: {exc}") from exc
    bundle = artifacts.get(BUNDLE_ARTIFACT, {}).get("path")
    if not bundle:
        raise ModelLoadError(
            f"{mlmodel} describes no '{BUNDLE_ARTIFACT}' artifact; it is not a model logged by "
            "aiops.registry.log_detector"
        )
    example = (spec.get("saved_input_example_info") or {}).get("artifact_path")
    return str(bundle), example


def _read_example(path: Path) -> pd.DataFrame:
    """Read MLflow's input example (pandas ``split`` orient; timestamps naive UTC)."""
    raw = json.loads(path.read_text())
    frame = pd.DataFrame(raw["data"], columns=raw["columns"])
    if "timestamp" in frame:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


def _load_bundle(folder: Path, source: str) -> DetectorBundle:
    try:
        return DetectorBundle.load(folder)
    except (FileNotFoundError, BundleFormatError) as exc:
        raise ModelLoadError(f"{source}: {exc}") from exc
    except Exception as exc:  # noqa: BLE001 - a corrupt file of any kind: say which model, exit 2
        raise ModelLoadError(
            f"{source}: the model bundle in {folder} cannot be read ({type(exc).__name__}: {exc}); "
            "is it complete, and written by this version of aiops?"
        ) from exc


# --------------------------------------------------------------------------- folders


def _find_model_dir(root: Path) -> Path:
    """The folder under ``root`` (itself, or up to two levels down) that holds a model."""
    if not root.is_dir():
        raise ModelLoadError(f"model folder {root} does not exist or is not a folder")
    for depth in range(3):
        pattern = "/".join(["*"] * depth)
        found = sorted(
            {
                p.parent
                for marker in (_MLMODEL, _BUNDLE_MARKER)
                for p in root.glob(f"{pattern}/{marker}".lstrip("/"))
            }
        )
        # An MLflow model folder also holds its bundle further down: prefer the MLmodel.
        mlmodels = [p for p in found if (p / _MLMODEL).exists()]
        candidates = mlmodels or found
        if len(candidates) == 1:
            return candidates[0]
        if len(candidates) > 1:
            shown = ", ".join(str(p) for p in candidates[:5])
            raise ModelLoadError(f"{root} holds several models ({shown}); point at one of them")
    raise ModelLoadError(
        f"no model in {root}: expected an MLflow model folder ({_MLMODEL} naming its "
        f"'{BUNDLE_ARTIFACT}' artifact) or a detector bundle ({_BUNDLE_MARKER}, feature_contract.json, "
        "meta.json)"
    )


def _fingerprint(bundle_dir: Path) -> str:
    digest = hashlib.sha256((bundle_dir / _BUNDLE_MARKER).read_bytes()).hexdigest()
    return f"sha256:{digest[:12]}"


def _from_folder(root: Path, version: str | None) -> LoadedModel:
    folder = _find_model_dir(root)
    example = None
    if (folder / _MLMODEL).exists():
        bundle_path, example_path = _mlmodel_paths(folder / _MLMODEL)
        bundle_dir = folder / bundle_path
        if example_path and (folder / example_path).exists():
            try:
                example = _read_example(folder / example_path)
            except (OSError, ValueError, KeyError) as exc:
                log.warning("input example in %s unreadable (%s); probe rows will be made up", folder, exc)
    else:
        bundle_dir = folder
    bundle = _load_bundle(bundle_dir, str(folder))
    return LoadedModel(bundle, version or _fingerprint(bundle_dir), str(folder), example)
