"""A do-nothing ``kserve.Model`` that returns its input: the floor the predictor's latency is compared to.

``python -m serving.baseline --port P`` serves it as ``echo`` on the same server setup as the
predictor (KServe's REST server, one process, same logging), so the difference between the two
is the predictor's own work. Import it through :func:`serving.server.import_kserve`.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from serving.server import DEFAULT_HOST, import_kserve, run_model_server


def echo_model(name: str = "echo") -> Any:
    """A ready model whose v1 answer is ``{"predictions": instances}`` and whose v2 outputs are its inputs."""
    import_kserve()
    from kserve import InferOutput, InferRequest, InferResponse, Model

    class EchoModel(Model):
        def __init__(self) -> None:
            super().__init__(name)
            self.ready = True

        def predict(self, payload: Any, headers: dict[str, str] | None = None) -> Any:
            if isinstance(payload, InferRequest):
                outputs = [
                    InferOutput(name=i.name, shape=list(i.shape), datatype=i.datatype, data=i.data)
                    for i in payload.inputs
                ]
                return InferResponse(payload.id or "echo", name, infer_outputs=outputs)
            return {"predictions": payload.get("instances", [])}

    return EchoModel()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m serving.baseline --port P [--name echo] [--host 127.0.0.1]``."""
    parser = argparse.ArgumentParser(prog="python -m serving.baseline", description=__doc__)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--name", default="echo")
    parser.add_argument("--host", default=DEFAULT_HOST)
    args = parser.parse_args(argv)
    run_model_server([echo_model(args.name)], args.port, args.host)
    return 0


if __name__ == "__main__":
    sys.exit(main())
