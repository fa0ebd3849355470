"""The canary rollout end to end on this machine: real model servers, a real Prometheus, MLflow.

Roll-back path: the canary's score calibration is broken (it calls far more rows anomalous),
which the alarm-rate check catches; the champion alias stays where it was. The promote path runs
inside the retraining pipeline's test (tests/pipelines/test_retraining.py), with a genuinely
retrained model; the decision rules themselves are unit-tested in tests/unit/test_canary.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from aiops.canary import CanaryPolicy
from aiops.model import DetectorBundle
from aiops.publish import Lineage, publish_detector
from aiops.registry import alias_version, mlflow_client
from serving.rollout import ROLLOUT_EXPERIMENT, run_local_rollout
from tests.conftest import need_binary

pytestmark = [pytest.mark.integration, pytest.mark.slow]
MODEL = "rollout-model"
POLICY = CanaryPolicy(min_requests=60, min_rows=400)


def _publish(folder, trained, labels, uri):
    return publish_detector(
        folder,
        trained.split.test,
        labels,
        tracking_uri=uri,
        experiment="rollout-tests",
        model_name=MODEL,
        lineage=Lineage(dataset_hash="t", data_rows=1, source="synthetic", seed=0),
    ).registration.version


def test_canary_rolls_back_a_miscalibrated_model_and_keeps_the_champion(trained, small_telemetry, tmp_path):
    need_binary("prometheus", "prometheus")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    labels = small_telemetry.labels
    assert _publish(trained.bundle_dir, trained, labels, uri) == "1"  # champion
    traffic = trained.split.test

    broken = DetectorBundle.load(trained.bundle_dir)
    # A calibration bug: every member's reference scores and alarm threshold shrunk, so every row
    # looks rarer than it is (under any combine rule: "any" measures a member's surprise in units
    # of its threshold's, so a shrunk reference alone mostly cancels out).
    broken.detector.reference = {k: np.sort(v) * 0.2 for k, v in broken.detector.reference.items()}
    broken.detector.member_thresholds = {k: v * 0.2 for k, v in broken.detector.member_thresholds.items()}
    folder = broken.save(tmp_path / "broken")
    assert _publish(folder, trained, labels, uri) == "2"
    bad = run_local_rollout(MODEL, "2", traffic, uri, tmp_path / "r", requests=240, policy=POLICY)
    assert not bad.promoted
    assert any("far more alarms" in r for r in bad.reasons), bad.reasons
    sent = bad.evidence["requests_sent"]
    assert sent["canary"] > 40 and sent["stable"] > sent["canary"]  # 30% of the traffic went to the canary
    # the verdict read every request: Prometheus had scraped both arms after the last one
    assert (bad.evidence["stable"]["requests"], bad.evidence["canary"]["requests"]) == (
        sent["stable"],
        sent["canary"],
    )
    assert alias_version(MODEL, "champion", uri) == "1", "a rolled-back canary leaves the champion alone"

    client = mlflow_client(uri)
    assert client.get_model_version(MODEL, "2").tags["rollout.decision"] == "rolled_back"
    [run] = client.search_runs([client.get_experiment_by_name(ROLLOUT_EXPERIMENT).experiment_id])
    assert run.data.tags["decision"] == "rolled_back"
    assert "canary_evidence.json" in {a.path for a in client.list_artifacts(run.info.run_id)}
