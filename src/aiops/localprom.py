"""A real Prometheus on 127.0.0.1 holding given telemetry, via ``promtool`` backfill.

Used by the integration tests and by ``aiops demo prometheus``: telemetry is exported as
OpenMetrics (:mod:`aiops.openmetrics`), turned into TSDB blocks with ``promtool tsdb
create-blocks-from openmetrics`` and served by Debian's ``prometheus`` with no scrape targets.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from aiops.openmetrics import write_openmetrics
from aiops.telemetry import Telemetry

SCRAPE = "30s"  # two scrapes per 1-minute step, so rate(x[1m]) has two samples on any Prometheus


class LocalPrometheusError(RuntimeError):
    """Prometheus or promtool is missing, the backfill failed, or the server did not start."""


def binaries() -> tuple[str, str]:
    """Paths of ``prometheus`` and ``promtool``.

    Raises:
        LocalPrometheusError: When either is missing.
    """
    prometheus, promtool = shutil.which("prometheus"), shutil.which("promtool")
    if prometheus is None or promtool is None:
        raise LocalPrometheusError(
            "prometheus/promtool not found; install Debian's package: apt-get install -y prometheus"
        )
    return prometheus, promtool


def free_port() -> int:
    """An unused TCP port on 127.0.0.1."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def backfill(telemetry: Telemetry, workdir: Path, scrape_interval: str = SCRAPE) -> Path:
    """Write ``telemetry`` as TSDB blocks under ``workdir/data``; return that folder."""
    _, promtool = binaries()
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "data"
    if data.exists() and any(data.iterdir()):
        # promtool adds blocks to what is there: the server would hold the old telemetry too.
        raise LocalPrometheusError(
            f"{data} already holds a TSDB; backfill into an empty workdir (or delete {data})"
        )
    exposition = write_openmetrics(telemetry, workdir / "metrics.om", scrape_interval=scrape_interval)
    result = subprocess.run(
        [promtool, "tsdb", "create-blocks-from", "openmetrics", "-q", str(exposition), str(data)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise LocalPrometheusError(f"promtool backfill failed:\n{result.stderr[-3000:]}")
    return data


def _wait_ready(url: str, process: subprocess.Popen, log: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            tail = log.read_text()[-3000:]
            raise LocalPrometheusError(f"prometheus exited with {process.returncode}:\n{tail}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/-/ready", timeout=1) as response:
            if response.status == 200:
                return
        time.sleep(0.2)
    raise LocalPrometheusError(f"prometheus not ready after {timeout_s}s:\n{log.read_text()[-3000:]}")


@contextlib.contextmanager
def serve(
    data: Path,
    workdir: Path,
    lookback: str = SCRAPE,
    timeout_s: float = 30.0,
    scrape_targets: dict[str, list[str]] | None = None,
    scrape_interval: str = "30s",
) -> Iterator[str]:
    """Run Prometheus over the TSDB in ``data``; yield its URL; stop it on exit.

    Args:
        data: TSDB folder (backfilled blocks, or empty for a scraping Prometheus).
        workdir: Folder for the config and the log.
        lookback: ``--query.lookback-delta``.
        timeout_s: How long to wait for readiness.
        scrape_targets: Job name -> ``host:port`` targets to scrape (``None``: scrape nothing,
            serve only the backfilled data).
        scrape_interval: Scrape interval of those jobs.
    """
    prometheus, _ = binaries()
    config = workdir / "prometheus.yml"
    lines = [f"global:\n  scrape_interval: {scrape_interval}\n"]
    if scrape_targets:
        lines.append("scrape_configs:\n")
        for job, targets in scrape_targets.items():
            lines.append(f"  - job_name: {job}\n    static_configs:\n      - targets: {list(targets)}\n")
    config.write_text("".join(lines))
    url = f"http://127.0.0.1:{free_port()}"
    log = workdir / "prometheus.log"
    with log.open("w") as out:
        process = subprocess.Popen(
            [
                prometheus,
                f"--config.file={config}",
                f"--storage.tsdb.path={data}",
                f"--web.listen-address={url.removeprefix('http://')}",
                # The data may be months old: keep it whatever the wall clock says.
                "--storage.tsdb.retention.time=100y",
                # Backfilled blocks carry no staleness markers, so the default 5-minute lookback
                # would stretch every gauge five minutes past a pod's end or into a gap. A real
                # Prometheus marks vanished series stale; one scrape interval mimics that.
                f"--query.lookback-delta={lookback}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(url, process, log, timeout_s)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@contextlib.contextmanager
def local_prometheus(telemetry: Telemetry, workdir: Path) -> Iterator[str]:
    """Backfill ``telemetry`` into a fresh Prometheus on 127.0.0.1 and yield its URL."""
    with serve(backfill(telemetry, workdir), workdir) as url:
        yield url
