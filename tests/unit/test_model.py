"""DetectorBundle: what a saved bundle records about the code that can read it."""

from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pytest

from aiops.features import FeatureContract
from aiops.model import BUNDLE_FORMAT, BundleFormatError, DetectorBundle


class _Sum:
    """A picklable detector: the sum of the features."""

    kind = "sum"

    def score(self, features: pd.DataFrame) -> np.ndarray:
        return features[["a", "b"]].sum(axis=1).to_numpy()


def _saved(tmp_path):
    contract = FeatureContract(feature_names=("a", "b"), signals=("a", "b"))
    bundle = DetectorBundle(detector=_Sum(), contract=contract, threshold=2.5, meta={"train_rows": 10})
    return bundle, bundle.save(tmp_path / "bundle")


def _rewrite_meta(folder, **changes):
    path = folder / "meta.json"
    meta = json.loads(path.read_text())
    for key, value in changes.items():
        if value is None:
            meta.pop(key, None)
        else:
            meta[key] = value
    path.write_text(json.dumps(meta))


def test_a_bundle_records_its_format_and_reads_back_unchanged(tmp_path):
    bundle, folder = _saved(tmp_path)
    written = json.loads((folder / "meta.json").read_text())
    assert written["bundle_format"] == BUNDLE_FORMAT
    assert written["aiops_version"]  # the installed package's version ("unknown" from a bare tree)

    loaded = DetectorBundle.load(folder)
    # The format is about the file, not the model: it is not a training parameter to log.
    assert loaded.meta == {"train_rows": 10, "detector": "sum"}
    assert loaded.threshold == 2.5 and loaded.contract == bundle.contract
    rows = pd.DataFrame({"a": [1.0, 2.0], "b": [1.0, 0.0]})
    assert loaded.detector.score(rows).tolist() == [2.0, 2.0]


def test_a_bundle_of_another_format_is_refused_before_its_detector_is_unpickled(tmp_path):
    _, folder = _saved(tmp_path)
    _rewrite_meta(folder, bundle_format=BUNDLE_FORMAT + 1, aiops_version="9.9.9")
    (folder / "detector.joblib").write_bytes(b"not a pickle")  # never opened
    with pytest.raises(BundleFormatError, match=r"format 2, written by aiops 9\.9\.9.*reads format 1"):
        DetectorBundle.load(folder)


def test_a_bundle_from_before_formats_were_recorded_is_read_with_a_warning(tmp_path, caplog):
    _, folder = _saved(tmp_path)
    _rewrite_meta(folder, bundle_format=None, aiops_version=None)
    with caplog.at_level(logging.WARNING, logger="aiops.model"):
        loaded = DetectorBundle.load(folder)
    assert "records no bundle format" in caplog.text
    assert loaded.meta == {"train_rows": 10, "detector": "sum"}
