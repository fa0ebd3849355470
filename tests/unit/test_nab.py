"""NAB scorer, corpus loading, results layout and runner.

The reproduction tests score Numenta HTM's published raw outputs with our scorer and compare with
NAB's published per-file scores (``results/published_scores.csv``).
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from aiops import nab
from aiops.detectors.streaming import RobustChangeDetector
from tests.conftest import shared_absent

NAB_DIR = Path(__file__).resolve().parents[2].parent / "shared" / "benchmarks" / "nab"
needs_nab = pytest.mark.skipif(
    shared_absent((NAB_DIR / "combined_windows.json").is_file()),
    reason=f"NAB benchmark data not found at {NAB_DIR} (the shared benchmarks folder is absent)",
)
PROFILES = tuple(nab.STANDARD_PROFILES)
STANDARD = nab.STANDARD_PROFILES["standard"]
MAX_TP = 2 / (1 + math.exp(-5)) - 1  # NAB's sigma at a window's first row


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def published() -> pd.DataFrame:
    # keep_default_na: the detector called "null" must not be read as a missing value.
    return pd.read_csv(NAB_DIR / "results" / "published_scores.csv", keep_default_na=False)


@pytest.fixture(scope="module")
def corpus() -> nab.NabCorpus:
    return nab.load_corpus(NAB_DIR)


@pytest.fixture(scope="module")
def numenta_report(published: pd.DataFrame) -> dict:
    rows = published[published.Detector == "numenta"]
    thresholds = {r.Profile: float(r.Threshold) for r in rows.itertuples()}
    return nab.score_results(NAB_DIR, NAB_DIR / "results" / "numenta", thresholds)


def _stamps(n: int, start: str = "2020-01-01") -> pd.DatetimeIndex:
    return pd.date_range(start, periods=n, freq="5min")


def write_folder(
    root: Path,
    files: dict[str, np.ndarray],
    windows: dict[str, list[list[str]]],
    profiles: dict | None = None,
) -> Path:
    """A NAB-layout folder under ``root`` with the given series and windows."""
    for name, values in files.items():
        path = root / "data" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        stamps = _stamps(len(values)).strftime("%Y-%m-%d %H:%M:%S")
        pd.DataFrame({"timestamp": stamps, "value": values}).to_csv(path, index=False)
    (root / "combined_windows.json").write_text(json.dumps(windows))
    if profiles is not None:
        (root / "profiles.json").write_text(json.dumps(profiles))
    return root


def _window(first: int, last: int) -> list[str]:
    stamps = _stamps(last + 1)
    return [f"{stamps[first]}.000000", f"{stamps[last]}.000000"]


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    """Two 200-row files (probation 30 rows): one window in the first, none in the second."""
    rng = np.random.default_rng(0)
    spiky = rng.normal(10.0, 1.0, 200)
    spiky[120] = 60.0
    return write_folder(
        tmp_path / "nab",
        {"catA/spiky.csv": spiky, "catB/quiet.csv": rng.normal(5.0, 1.0, 200)},
        {"catA/spiky.csv": [_window(110, 139)], "catB/quiet.csv": []},
    )


def in_memory_file(n: int = 100, windows: tuple[tuple[int, int], ...] = ((40, 59),)) -> nab.NabFile:
    stamps = _stamps(n)
    limits = tuple((stamps[a], stamps[b]) for a, b in windows)
    return nab.NabFile("cat/f.csv", stamps.to_numpy(dtype="datetime64[ns]"), np.zeros(n), limits)


def alarms_at(n: int, *rows: int) -> np.ndarray:
    scores = np.zeros(n)
    scores[list(rows)] = 1.0
    return scores


# --------------------------------------------------------------------------- published reproduction


@needs_nab
@pytest.mark.parametrize("profile", PROFILES)
def test_reproduces_published_numenta_scores(
    numenta_report: dict, published: pd.DataFrame, profile: str
) -> None:
    rows = published[(published.Detector == "numenta") & (published.Profile == profile)].set_index("File")
    ours = numenta_report["details"][profile]
    # Numenta's raw outputs are published for 23 of the 28 files (not for artificialNoAnomaly).
    assert len(ours) == 23
    for got in ours:
        want = rows.loc[got["file"]]
        assert got["score"] == pytest.approx(want.Score, rel=1e-9, abs=1e-12), got["file"]
        counts = (got["tp"], got["tn"], got["fp"], got["fn"], got["total"])
        assert counts == (want.TP, want.TN, want.FP, want.FN, want.Total_Count), got["file"]


@needs_nab
@pytest.mark.parametrize("profile", PROFILES)
def test_reproduces_published_null_scores_on_every_file(
    corpus: nab.NabCorpus, published: pd.DataFrame, profile: str
) -> None:
    rows = published[(published.Detector == "null") & (published.Profile == profile)].set_index("File")
    assert len(rows) == len(corpus.files) == 28
    for nab_file in corpus.files:
        want = rows.loc[nab_file.name]
        got = nab.score_file(nab_file, np.zeros(nab_file.n_rows), want.Threshold, corpus.profiles[profile])
        assert got.score == pytest.approx(want.Score, abs=1e-12)
        assert (got.tp, got.tn, got.fp, got.fn, got.total) == (
            want.TP,
            want.TN,
            want.FP,
            want.FN,
            want.Total_Count,
        )


@needs_nab
def test_realaws_standard_normalised_score_matches_readme(
    numenta_report: dict, published: pd.DataFrame, corpus: nab.NabCorpus
) -> None:
    assert numenta_report["categories"]["realAWSCloudwatch"]["standard"] == pytest.approx(73.4, abs=0.1)
    # The same from NAB's own per-file scores, normalised with our null and perfect scores.
    aws = [f for f in corpus.files if f.category == "realAWSCloudwatch"]
    assert len(aws) == 17
    rows = published[(published.Detector == "numenta") & (published.Profile == "standard")]
    raw = rows[rows.File.str.startswith("realAWSCloudwatch/")].Score.sum()
    normalised = nab.normalized_score(raw, nab.null_score(aws, STANDARD), nab.perfect_score(aws, STANDARD))
    assert normalised == pytest.approx(73.4, abs=0.1)


@needs_nab
def test_corpus_score_over_a_subset(numenta_report: dict, corpus: nab.NabCorpus) -> None:
    aws = [f for f in corpus.files if f.category == "realAWSCloudwatch"]
    scores = [
        nab.FileScore(**d) for d in numenta_report["details"]["standard"] if d["file"].startswith("real")
    ]
    assert nab.corpus_score(scores, aws, STANDARD) == pytest.approx(73.4, abs=0.1)
    with pytest.raises(nab.NabError, match="same set"):
        nab.corpus_score(scores[:-1], aws, STANDARD)


@needs_nab
def test_loads_the_shared_folder(corpus: nab.NabCorpus) -> None:
    assert len(corpus.files) == 28
    assert corpus.n_windows == 36
    assert dict(corpus.profiles) == dict(nab.STANDARD_PROFILES)
    # NAB's AWS files repeat timestamps at a DST change; they must load.
    assert corpus.file("realAWSCloudwatch/ec2_disk_write_bytes_1ef3de.csv").n_rows == 4730


# --------------------------------------------------------------------------- hand-computed cases


@pytest.mark.parametrize(
    ("n_rows", "expected"), [(4032, 604), (4730, 709), (1243, 186), (10_000, 750), (100, 15), (3, 0)]
)
def test_probation_length(n_rows: int, expected: int) -> None:
    assert nab.probation_length(n_rows) == expected


@pytest.mark.parametrize(
    ("position", "expected"), [(-1.0, 0.98661), (-0.5, 0.84828), (0.0, 0.0), (1.0, -0.98661), (3.5, -1.0)]
)
def test_scaled_sigmoid(position: float, expected: float) -> None:
    assert float(nab.scaled_sigmoid(position)) == pytest.approx(expected, abs=1e-5)


def test_detection_at_window_start_earns_a_tp() -> None:
    got = nab.score_file(in_memory_file(), alarms_at(100, 40), 0.5, STANDARD)
    assert got.score == pytest.approx(1.0)
    assert (got.tp, got.fp, got.fn, got.tn, got.windows_detected) == (1, 0, 19, 65, 1)


def test_detection_at_window_end_earns_little() -> None:
    got = nab.score_file(in_memory_file(), alarms_at(100, 59), 0.5, STANDARD)
    # Position -(59 - 59 + 1) / 20 = -0.05.
    assert got.score == pytest.approx((2 / (1 + math.exp(-0.25)) - 1) / MAX_TP)


def test_only_the_earliest_detection_in_a_window_counts() -> None:
    first = nab.score_file(in_memory_file(), alarms_at(100, 45), 0.5, STANDARD)
    more = nab.score_file(in_memory_file(), alarms_at(100, 45, 50, 59), 0.5, STANDARD)
    assert more.score == pytest.approx(first.score)
    assert (more.tp, more.fp) == (3, 0)


@pytest.mark.parametrize(("profile", "cost"), [("standard", -1.0), ("reward_low_FN_rate", -2.0)])
def test_a_miss_costs_a_fn(profile: str, cost: float) -> None:
    got = nab.score_file(in_memory_file(), np.zeros(100), 0.5, nab.STANDARD_PROFILES[profile])
    assert got.score == pytest.approx(cost)
    assert (got.tp, got.fn, got.windows_detected) == (0, 20, 0)


def test_detections_in_probation_are_ignored() -> None:
    # Probation is 15 rows of 100: an alarm on row 5 neither detects the window nor costs an FP.
    got = nab.score_file(in_memory_file(windows=((10, 30),)), alarms_at(100, 5, 12), 0.5, STANDARD)
    assert got.score == pytest.approx(-1.0)
    assert (got.tp, got.fp, got.windows_detected) == (0, 0, 0)


def test_false_positives_are_weighted_by_the_sigmoid() -> None:
    a_fp = STANDARD.fp_weight
    # Before any window: the full cost.
    assert nab.score_file(in_memory_file(), alarms_at(100, 20), 0.5, STANDARD).score == pytest.approx(
        -1 - a_fp
    )
    # 19 rows after a 20-row window: relative position 19 / (20 - 1) = 1.
    got = nab.score_file(in_memory_file(), alarms_at(100, 78), 0.5, STANDARD)
    assert got.score == pytest.approx(-1 + a_fp * (2 / (1 + math.exp(5)) - 1))
    # Just after the window costs almost nothing; far after (position > 3) the full cost.
    near = nab.score_file(in_memory_file(), alarms_at(100, 60), 0.5, STANDARD).score
    assert -1.0 > near > -1.0 - 0.2 * a_fp
    far = nab.score_file(in_memory_file(n=200), alarms_at(200, 59 + 3 * 19 + 1), 0.5, STANDARD)
    assert far.score == pytest.approx(-1 - a_fp)
    assert (far.fp, got.fp) == (1, 1)


def test_false_positive_uses_the_closest_preceding_window() -> None:
    two = in_memory_file(n=200, windows=((40, 59), (100, 109)))
    got = nab.score_file(two, alarms_at(200, 40, 100, 119), 0.5, STANDARD)
    # Row 119 is 10 rows after the second window (10 rows wide): position 10 / 9.
    assert got.score == pytest.approx(2.0 + STANDARD.fp_weight * (2 / (1 + math.exp(50 / 9)) - 1))


def test_threshold_is_inclusive() -> None:
    scores = np.zeros(100)
    scores[40] = 0.7
    assert nab.score_file(in_memory_file(), scores, 0.7, STANDARD).tp == 1
    assert nab.score_file(in_memory_file(), scores, 0.7000001, STANDARD).tp == 0


def test_normalised_score_bounds() -> None:
    assert nab.normalized_score(-3.0, -3.0, 3.0) == 0.0
    assert nab.normalized_score(3.0, -3.0, 3.0) == 100.0
    with pytest.raises(nab.NabError, match="no window"):
        nab.normalized_score(-0.5, 0.0, 0.0)


def test_score_file_rejects_wrong_length_or_nan() -> None:
    with pytest.raises(nab.NabError, match="anomaly scores for 100 rows"):
        nab.score_file(in_memory_file(), np.zeros(99), 0.5, STANDARD)
    with pytest.raises(nab.NabError, match="finite"):
        nab.score_file(in_memory_file(), np.full(100, np.nan), 0.5, STANDARD)


# --------------------------------------------------------------------------- results layout


def test_results_layout_round_trip(tiny: Path, tmp_path: Path) -> None:
    corpus = nab.load_corpus(tiny)
    nab_file = corpus.file("catA/spiky.csv")
    scores = np.random.default_rng(1).random(nab_file.n_rows) / 3.0
    path = nab.write_results(tmp_path / "results" / "mine", "mine", nab_file, scores)
    assert path == tmp_path / "results" / "mine" / "catA" / "mine_spiky.csv"
    frame = nab.read_results(path, nab_file)
    assert list(frame.columns) == list(nab.RESULTS_COLUMNS)
    np.testing.assert_array_equal(frame["anomaly_score"].to_numpy(), scores)
    np.testing.assert_array_equal(frame["value"].to_numpy(), nab_file.values)
    np.testing.assert_array_equal(frame["label"].to_numpy(), nab_file.labels().astype(int))
    assert frame["label"].sum() == 30


def test_run_then_score_results_agree(tiny: Path, tmp_path: Path) -> None:
    report = nab.run_nab(tiny, RobustChangeDetector, detector_name="robust", results_dir=tmp_path / "res")
    assert (tmp_path / "res" / "catA" / "robust_spiky.csv").is_file()
    rescored = nab.score_results(tiny, tmp_path / "res", report["profiles"]["standard"]["threshold"])
    assert rescored["detector"] == "robust"  # the prefix is read off the files
    assert rescored["profiles"] == report["profiles"]
    assert rescored["files"] == report["files"]
    assert rescored["missing"] == []


def test_a_results_folder_with_two_detectors_names_them(tiny: Path, tmp_path: Path) -> None:
    robust = nab.run_nab(tiny, RobustChangeDetector, detector_name="robust", results_dir=tmp_path / "res")
    nab.run_nab(tiny, RobustChangeDetector, detector_name="another", results_dir=tmp_path / "res")
    threshold = robust["profiles"]["standard"]["threshold"]
    with pytest.raises(nab.NabError, match=r"outputs of several detectors \(another, robust\)"):
        nab.score_results(tiny, tmp_path / "res", threshold)
    picked = nab.score_results(tiny, tmp_path / "res", threshold, detector="robust")
    assert picked["detector"] == "robust" and picked["files"] == robust["files"]


def test_file_names_with_glob_characters_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    values = rng.normal(10.0, 1.0, 200)
    values[120] = 60.0
    folder = write_folder(tmp_path / "nab", {"c/a[1].csv": values}, {"c/a[1].csv": [_window(110, 139)]})
    report = nab.run_nab(folder, RobustChangeDetector, detector_name="robust", results_dir=tmp_path / "res")
    rescored = nab.score_results(folder, tmp_path / "res", report["profiles"]["standard"]["threshold"])
    assert rescored["detector"] == "robust" and rescored["files"] == report["files"]


def test_a_file_name_ending_in_another_does_not_read_as_a_second_detector(tmp_path: Path) -> None:
    """``det_a_x.csv`` is det's output for ``a_x.csv``, not det_a's for ``x.csv``."""
    rng = np.random.default_rng(3)
    series = {"c/x.csv": rng.normal(10.0, 1.0, 200), "c/a_x.csv": rng.normal(10.0, 1.0, 200)}
    folder = write_folder(tmp_path / "nab", series, {"c/x.csv": [_window(110, 139)], "c/a_x.csv": []})
    report = nab.run_nab(folder, RobustChangeDetector, detector_name="det", results_dir=tmp_path / "res")
    rescored = nab.score_results(folder, tmp_path / "res", report["profiles"]["standard"]["threshold"])
    assert rescored["detector"] == "det" and rescored["files"] == report["files"]


def test_read_results_rejects_mismatched_rows(tiny: Path, tmp_path: Path) -> None:
    nab_file = nab.load_corpus(tiny).file("catA/spiky.csv")
    path = tmp_path / "short.csv"
    pd.DataFrame({"timestamp": ["2020-01-01 00:00:00"], "anomaly_score": [0.1]}).to_csv(path, index=False)
    with pytest.raises(nab.NabError, match="one row per data row"):
        nab.read_results(path, nab_file)
    pd.DataFrame({"timestamp": ["2020-01-01 00:00:00"]}).to_csv(path, index=False)
    with pytest.raises(nab.NabError, match="anomaly_score"):
        nab.read_results(path)


def test_score_results_without_results_files(tiny: Path, tmp_path: Path) -> None:
    with pytest.raises(nab.NabError, match="no results files"):
        nab.score_results(tiny, tmp_path / "nothing", 0.5)


# --------------------------------------------------------------------------- broken folders


def test_missing_windows_file(tiny: Path) -> None:
    (tiny / "combined_windows.json").unlink()
    with pytest.raises(nab.NabError, match="combined_windows.json not found"):
        nab.load_corpus(tiny)


def test_nab_repository_layout_reads_labels_and_config(tiny: Path) -> None:
    """A checkout of NAB itself keeps the windows in labels/ and the profiles in config/."""
    expected = nab.load_corpus(tiny)
    (tiny / "labels").mkdir()
    (tiny / "combined_windows.json").rename(tiny / "labels" / "combined_windows.json")
    (tiny / "config").mkdir()
    profiles = {"standard": {"CostMatrix": {"tpWeight": 1.0, "fnWeight": 2.0, "fpWeight": 0.11}}}
    (tiny / "config" / "profiles.json").write_text(json.dumps(profiles))
    corpus = nab.load_corpus(tiny)
    assert [f.windows for f in corpus.files] == [f.windows for f in expected.files]
    assert corpus.profiles["standard"] != expected.profiles["standard"]  # read from config/
    (tiny / "combined_windows.json").write_text(json.dumps({"catA/spiky.csv": [], "catB/quiet.csv": []}))
    assert [f.windows for f in nab.load_corpus(tiny).files] == [(), ()]  # the top level comes first


def test_missing_data_folder(tmp_path: Path) -> None:
    with pytest.raises(nab.NabError, match="data/<category>"):
        nab.load_corpus(tmp_path)


def test_data_file_without_windows_entry_is_left_out_with_a_warning(
    tiny: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """As NAB's own labeller does; asked for by name, or with no labelled file at all, it is an error."""
    (tiny / "combined_windows.json").write_text(json.dumps({"catA/spiky.csv": []}))
    with caplog.at_level("WARNING", logger="aiops.nab"):
        corpus = nab.load_corpus(tiny)
    assert [f.name for f in corpus.files] == ["catA/spiky.csv"] and corpus.unlabelled == ("catB/quiet.csv",)
    assert "not scored: ['catB/quiet.csv']" in caplog.text
    with pytest.raises(nab.NabError, match=r"no entry for \['catB/quiet.csv'\]"):
        nab.load_corpus(tiny, files=["catB/quiet.csv"])
    (tiny / "combined_windows.json").write_text(json.dumps({}))
    with pytest.raises(nab.NabError, match="no entry for"):
        nab.load_corpus(tiny)


def test_hidden_files_are_neither_data_nor_results(tiny: Path, tmp_path: Path) -> None:
    (tiny / "data" / "catA" / "._spiky.csv").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    corpus = nab.load_corpus(tiny)
    assert [f.name for f in corpus.files] == ["catA/spiky.csv", "catB/quiet.csv"]
    assert corpus.unlabelled == ()  # not even an unlabelled data file
    report = nab.run_nab(tiny, RobustChangeDetector, detector_name="mine", results_dir=tmp_path / "res")
    (tmp_path / "res" / "catA" / "._mine_spiky.csv").write_bytes(b"\x00\x05\x16\x07")
    rescored = nab.score_results(tiny, tmp_path / "res", report["profiles"]["standard"]["threshold"])
    assert rescored["detector"] == "mine" and rescored["profiles"] == report["profiles"]


def test_windows_of_absent_files_are_ignored_with_a_warning(tiny: Path, caplog) -> None:
    windows = json.loads((tiny / "combined_windows.json").read_text())
    windows["catC/elsewhere.csv"] = [_window(10, 20)]
    (tiny / "combined_windows.json").write_text(json.dumps(windows))
    with caplog.at_level(logging.WARNING, logger=nab.logger.name):
        assert nab.load_corpus(tiny).n_windows == 1
    assert (
        "ignoring the windows of 1 file(s) absent from" in caplog.text and "catC/elsewhere.csv" in caplog.text
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("time,value\n2020-01-01 00:00:00,1\n", r"\['timestamp'\] missing"),
        ("timestamp,value\n2020-01-01 00:00:00,1\n2020-01-01 00:05:00,abc\n", "not numeric"),
        ("timestamp,value\n2020-01-01 00:00:00,1\n2020-01-01 00:05:00,\n", "missing or not numeric"),
        ("timestamp,value\nyesterday-ish,1\n", "unreadable timestamp"),
        # epoch seconds: pandas would read nanoseconds after 1970 and merge neighbouring rows
        ("timestamp,value\n1393632000,1\n1393632300,2\n", r"timestamps are numbers \(1393632000 first\)"),
        ("timestamp,value\n2020-01-01 00:05:00,1\n2020-01-01 00:00:00,2\n", "must not decrease"),
        ("timestamp,value\n", "no rows"),
    ],
)
def test_malformed_csv(tiny: Path, content: str, message: str) -> None:
    (tiny / "data" / "catB" / "quiet.csv").write_text(content)
    with pytest.raises(nab.NabError, match=message):
        nab.load_corpus(tiny)


@pytest.mark.parametrize(
    ("windows", "message"),
    [
        ([["2020-01-01 05:00:00", "2020-01-01 04:00:00"]], "ends before it starts"),
        ([[None, "2020-01-01 04:00:00"]], "lacks its start or its end"),
        ([["2020-01-01 01:00:00"]], "not a \\[start, end\\] pair"),
        (
            [["2020-01-01 01:00:00", "2020-01-01 03:00:00"], ["2020-01-01 02:00:00", "2020-01-01 04:00:00"]],
            "overlap",
        ),
        ([["2030-01-01 00:00:00", "2030-01-02 00:00:00"]], "contains no data row"),
    ],
)
def test_bad_windows(tiny: Path, windows: list, message: str) -> None:
    (tiny / "combined_windows.json").write_text(json.dumps({"catA/spiky.csv": windows, "catB/quiet.csv": []}))
    with pytest.raises(nab.NabError, match=message):
        nab.load_corpus(tiny)


def test_windows_file_not_json(tiny: Path) -> None:
    (tiny / "combined_windows.json").write_text("{not json")
    with pytest.raises(nab.NabError, match="not valid JSON"):
        nab.load_corpus(tiny)


def test_profiles_file_is_used_and_checked(tiny: Path) -> None:
    custom = {"strict": {"CostMatrix": {"tpWeight": 1.0, "fpWeight": 0.5, "fnWeight": 1.0, "tnWeight": 1.0}}}
    (tiny / "profiles.json").write_text(json.dumps(custom))
    assert dict(nab.load_corpus(tiny).profiles) == {"strict": nab.CostMatrix(1.0, 0.5, 1.0)}
    (tiny / "profiles.json").write_text(json.dumps({"strict": {"CostMatrix": {"tpWeight": 1.0}}}))
    with pytest.raises(nab.NabError, match="profile 'strict' needs numeric"):
        nab.load_corpus(tiny)


# --------------------------------------------------------------------------- runner


class SpyDetector:
    """Fires on every value above 30; records what fit() saw."""

    threshold = 0.5
    fitted_rows: list[int] = []

    def fit(self, values: np.ndarray, timestamps: np.ndarray) -> None:
        SpyDetector.fitted_rows.append(len(values))

    def score(self, values: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
        return (values > 30).astype(float)


def test_run_nab_report_has_the_exact_shape(tiny: Path) -> None:
    report = nab.run_nab(tiny, RobustChangeDetector, detector_name="robust")
    json.dumps(report, allow_nan=False)
    assert set(report["profiles"]) == set(PROFILES)
    for entry in report["profiles"].values():
        assert set(entry) == {"score", "threshold"}
        assert entry["threshold"] == RobustChangeDetector().threshold
    assert [f["file"] for f in report["files"]] == ["catA/spiky.csv", "catB/quiet.csv"]
    for entry in report["files"]:
        assert list(entry) == ["file", "score", "tp", "fp", "fn"]
    assert report["detector"] == "robust"
    assert report["categories"]["catB"]["standard"] is None  # no window: nothing to normalise


def test_run_nab_fits_on_probation_only_and_uses_one_threshold(tiny: Path) -> None:
    SpyDetector.fitted_rows = []
    report = nab.run_nab(tiny, SpyDetector, threshold=0.5)
    assert SpyDetector.fitted_rows == [30, 30]  # floor(0.15 * 200)
    assert {p["threshold"] for p in report["profiles"].values()} == {0.5}
    # The spike on row 120 of the 110..139 window is the only alarm: (139 - 120 + 1) / 30 rows.
    spiky = report["files"][0]
    assert (spiky["tp"], spiky["fp"]) == (1, 0)
    assert spiky["score"] == pytest.approx((2 / (1 + math.exp(-5 * 20 / 30)) - 1) / MAX_TP)


def test_run_nab_rejects_a_detector_with_wrong_output(tiny: Path) -> None:
    class Broken(SpyDetector):
        def score(self, values: np.ndarray, timestamps: np.ndarray) -> np.ndarray:
            return np.zeros(3)

    with pytest.raises(nab.NabError, match="one finite score per row"):
        nab.run_nab(tiny, Broken)


def test_run_nab_refuses_per_file_thresholds(tiny: Path) -> None:
    made = iter([0.5, 0.9])

    def factory() -> SpyDetector:
        detector = SpyDetector()
        detector.threshold = next(made)
        return detector

    with pytest.raises(nab.NabError, match="one threshold for every file"):
        nab.run_nab(tiny, factory)


# --------------------------------------------------------------------------- command line


def test_cli_benchmark_nab_runs_writes_and_rescores(tiny: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aiops.cli import app

    runner = CliRunner()
    out, res = tmp_path / "report.json", tmp_path / "res"
    result = runner.invoke(
        app,
        [
            "benchmark",
            "nab",
            "--data",
            str(tiny),
            "--output",
            str(out),
            "--results-out",
            str(res),
            "--detector",
            "robust_change",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert set(report["profiles"]) == set(PROFILES) and "standard" in result.output
    threshold = report["profiles"]["standard"]["threshold"]
    again = tmp_path / "again.json"
    result = runner.invoke(
        app,
        [
            "benchmark",
            "nab",
            "--data",
            str(tiny),
            "--output",
            str(again),
            "--scores-from",
            str(res),
            "--threshold",
            str(threshold),
        ],
    )
    assert result.exit_code == 0, result.output
    assert json.loads(again.read_text())["profiles"] == report["profiles"]
    # a data file without a results file is named, not dropped quietly
    (res / "catB" / "robust_change_quiet.csv").unlink()
    result = runner.invoke(
        app,
        ["benchmark", "nab", "--data", str(tiny), "--output", str(again)]
        + ["--scores-from", str(res), "--threshold", str(threshold)],
    )
    assert result.exit_code == 0, result.output
    assert "NOT SCORED (no results file): 1 file(s): catB/quiet.csv" in result.output
    assert json.loads(again.read_text())["missing"] == ["catB/quiet.csv"]


def test_cli_help_names_every_detector() -> None:
    from typer.testing import CliRunner

    from aiops.cli import app
    from aiops.detectors.streaming import STREAMING_DETECTORS

    text = " ".join(CliRunner().invoke(app, ["benchmark", "nab", "--help"]).output.split())
    assert all(name in text for name in STREAMING_DETECTORS)


def test_results_keep_fractions_of_a_second(tmp_path: Path) -> None:
    stamps = pd.date_range("2020-01-01", periods=40, freq="500ms")
    nab_file = nab.NabFile("c/half.csv", stamps.to_numpy(), np.arange(40.0), ())
    path = nab.write_results(tmp_path, "d", nab_file, np.zeros(40))
    assert nab.read_results(path, nab_file)["timestamp"].iloc[1] == pd.Timestamp("2020-01-01 00:00:00.5")


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--detector", "nope"], "unknown detector 'nope'"),
        (["--scores-from", "x"], "needs --threshold"),
        (["--threshold", "0.5"], "applies to --scores-from only"),
        (["--scores-from", "x", "--threshold", "nan"], "--threshold must be a finite number"),
    ],
)
def test_cli_benchmark_nab_rejects_bad_options(tiny: Path, tmp_path: Path, extra: list, message: str) -> None:
    from typer.testing import CliRunner

    from aiops.cli import app

    result = CliRunner().invoke(
        app, ["benchmark", "nab", "--data", str(tiny), "--output", str(tmp_path / "o.json"), *extra]
    )
    assert result.exit_code == 2 and message in result.output


def test_cli_benchmark_refuses_a_folder_as_output_before_running(tiny: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aiops.cli import app

    for command in (["nab", "--data", str(tiny)], ["nezha", "--data", str(tmp_path)]):
        result = CliRunner().invoke(app, ["benchmark", *command, "--output", str(tmp_path)])
        assert result.exit_code == 2 and "is a folder; name the JSON file to write" in result.output
    # a path under a file, for any of the outputs: refused before the run, not after it
    blocker = tmp_path / "afile"
    blocker.write_text("")
    output = ["--output", str(tmp_path / "r.json")]
    for command, message in (
        (["nab", "--data", str(tiny), "--output", str(blocker / "x.json")], "afile is a file, not a folder"),
        (["nab", "--data", str(tiny), *output, "--results-out", str(blocker)], "is a file; name a folder"),
        (["nezha", "--data", str(tmp_path), *output, "--alarms-out", str(blocker / "a.csv")], "not a folder"),
    ):
        result = CliRunner().invoke(app, ["benchmark", *command])
        assert result.exit_code == 2 and message in result.output, result.output
        assert not (tmp_path / "r.json").exists()


def test_cli_table_shows_categories_under_the_profile_of_the_files(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aiops.cli import app

    values = np.random.default_rng(3).normal(10.0, 1.0, 200)
    values[120] = 60.0
    strict = {"strict": {"CostMatrix": {"tpWeight": 1.0, "fpWeight": 0.5, "fnWeight": 2.0}}}
    folder = write_folder(tmp_path / "nab", {"c/f.csv": values}, {"c/f.csv": [_window(110, 139)]}, strict)
    out = tmp_path / "o.json"
    result = CliRunner().invoke(app, ["benchmark", "nab", "--data", str(folder), "--output", str(out)])
    assert result.exit_code == 0, result.output
    score = json.loads(out.read_text())["categories"]["c"]["strict"]
    assert "strict, c " in result.output and f"{score:.1f}" in result.output and "n/a" not in result.output


def test_cli_benchmark_nab_broken_folder(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from aiops.cli import app

    result = CliRunner().invoke(
        app, ["benchmark", "nab", "--data", str(tmp_path), "--output", str(tmp_path / "o.json")]
    )
    assert result.exit_code == 2 and "a NAB folder holds data/<category>/<name>.csv" in result.output


def test_cli_benchmark_nab_on_a_folder_without_windows(tmp_path: Path) -> None:
    """Like NAB's artificialNoAnomaly alone: no score is defined (perfect = null), the rest is."""
    from typer.testing import CliRunner

    from aiops.cli import app

    folder = tmp_path / "nab"
    (folder / "data" / "quiet").mkdir(parents=True)
    stamps = pd.date_range("2015-01-01", periods=300, freq="5min").strftime("%Y-%m-%d %H:%M:%S")
    values = np.random.default_rng(0).normal(size=300)
    pd.DataFrame({"timestamp": stamps, "value": values}).to_csv(folder / "data/quiet/flat.csv", index=False)
    (folder / "combined_windows.json").write_text(json.dumps({"quiet/flat.csv": []}))
    out = tmp_path / "o.json"
    result = CliRunner().invoke(app, ["benchmark", "nab", "--data", str(folder), "--output", str(out)])
    assert result.exit_code == 0, result.output
    report = json.loads(out.read_text())
    assert report["profiles"]["standard"]["score"] is None and "n/a" in result.output
    assert len(report["files"]) == 1
