from typing import NamedTuple

from kfp import dsl
from kfp.dsl import Dataset, Input, Markdown, Output

from components.image import PIPELINE_IMAGE


@dsl.component(base_image=PIPELINE_IMAGE, install_kfp_package=False)
def validate_telemetry(
    telemetry: Input[Dataset],
    report: Output[Markdown],
) -> NamedTuple("DataSummary", rows=int, entities=int, labelled_windows=int, dataset_hash=str):
    """Stop the pipeline before training when the telemetry breaks the canonical schema."""
    from collections import namedtuple

    from aiops.telemetry import Telemetry

    bundle = Telemetry.load(telemetry.path).validate()
    metrics = bundle.metrics
    digest = bundle.lineage_hash()
    with open(report.path, "w") as fh:
        fh.write(
            "## Telemetry\n\n"
            f"| | |\n|---|---|\n| rows | {len(metrics)} |\n| entities | {bundle.n_entities} |\n"
            f"| from | {metrics['timestamp'].min()} |\n| to | {metrics['timestamp'].max()} |\n"
            f"| labelled windows | {len(bundle.labels)} |\n| events | {len(bundle.events)} |\n"
            f"| log lines | {len(bundle.logs)} |\n| content hash | `{digest[:16]}` |\n"
        )
    summary = namedtuple("DataSummary", ["rows", "entities", "labelled_windows", "dataset_hash"])
    return summary(len(metrics), bundle.n_entities, len(bundle.labels), digest)
