"""The one place that names the pipeline image every component runs in.

The image is built from the repository's ``Containerfile`` (the project and its
locked dependencies installed). Release builds pin it by digest; set
``AIOPS_PIPELINE_IMAGE`` when compiling to use another build, e.g.
``quay.io/org/aiops-pipeline@sha256:...``.
"""

import os

DEFAULT_PIPELINE_IMAGE = "quay.io/aiops-selfheal/aiops-pipeline:0.1.0"
PIPELINE_IMAGE = os.environ.get("AIOPS_PIPELINE_IMAGE", DEFAULT_PIPELINE_IMAGE)
