"""One way to talk to the Kubernetes API for the event and log ingests: a client, paged lists, clear errors.

:class:`KubeClient` wraps the official ``kubernetes`` client. Every request
goes through :meth:`KubeClient.call`, which bounds it with a time-out, retries
what may be transient (HTTP 429 and 5xx, dropped connections, time-outs) with
exponential back-off, and turns everything else into a
:class:`KubernetesError` whose message names the API server and the call, e.g.
``Kubernetes API at https://api.ocp.example:6443 refused the credentials for
CoreV1Api.list_event_for_all_namespaces(limit=500)``.

:meth:`KubeClient.list_all` follows ``metadata.continue`` until the list is
exhausted. When a continue token has expired (HTTP 410, the API server
compacted the snapshot the paging started from, typically after 5 minutes) it
resumes from the fresh token the 410 answer carries, the API server's own
offer of an *inconsistent* continuation, and restarts from the first page
when there is none. Items are keyed by ``metadata.uid``, so a restart cannot
duplicate them. For events, which are read once for a time window, an
inconsistent list is the right trade: a restart would most likely expire
again for the same reason.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import urllib3
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException

_LOG = logging.getLogger(__name__)

_RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
_AUTH_STATUS = frozenset({401, 403})


class KubernetesError(RuntimeError):
    """Raised when the Kubernetes API cannot deliver what an ingest needs; names the server and the call.

    Attributes:
        status: The HTTP status of the answer, ``None`` when there was none (unreachable, time-out).
        details: The ``Status`` object the API server answered with, as a dict (empty when none).

    """

    def __init__(self, message: str, *, status: int | None = None, details: dict[str, Any] | None = None):
        super().__init__(message)
        self.status = status
        self.details = details or {}


def _status_details(exc: ApiException) -> dict[str, Any]:
    """The API server's ``Status`` body of an error answer, or ``{}`` when it is not JSON."""
    body = exc.body
    if isinstance(body, bytes):
        body = body.decode("utf-8", errors="replace")
    try:
        parsed = json.loads(body) if body else {}
    except ValueError:
        return {"message": str(body).strip()[:500]}
    return parsed if isinstance(parsed, dict) else {}


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:36] + "...'"


def describe_call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
    """Render an API call for an error message, e.g. ``CoreV1Api.read_namespaced_pod(name='a', ...)``."""
    owner = getattr(fn, "__self__", None)
    name = getattr(fn, "__name__", repr(fn))
    qualified = f"{type(owner).__name__}.{name}" if owner is not None else name
    shown = [_short(a) for a in args] + [
        f"{k.lstrip('_')}={_short(v)}" for k, v in kwargs.items() if k == "_continue" or not k.startswith("_")
    ]
    return f"{qualified}({', '.join(shown)})"


@dataclass
class KubeClient:
    """The official client plus time-outs, bounded retries and errors that name the server and the call.

    Attributes:
        api_client: A configured ``kubernetes.client.ApiClient`` (host, credentials, CA).
        timeout: Seconds to wait for each answer.
        attempts: Tries per request on HTTP 429/5xx, time-outs and connection failures.
        backoff_s: Wait after the first failed try; doubled after each further one (capped at 30 s).

    """

    api_client: k8s.ApiClient
    timeout: float = 30.0
    attempts: int = 3
    backoff_s: float = 0.5
    _apis: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError(f"attempts must be at least 1, got {self.attempts}")

    @classmethod
    def connect(
        cls,
        host: str | None = None,
        *,
        token: str | None = None,
        ca_bundle: str | Path | None = None,
        verify_ssl: bool = True,
        kubeconfig: str | Path | None = None,
        context: str | None = None,
        timeout: float = 30.0,
        attempts: int = 3,
        backoff_s: float = 0.5,
    ) -> KubeClient:
        """Build a client from an explicit server, the in-cluster service account, or a kubeconfig.

        Args:
            host: API server URL, e.g. ``https://api.ocp.example:6443``. When ``None``, the pod's
                service account is used inside a cluster, else ``kubeconfig`` (default ``~/.kube/config``).
            token: Bearer token sent with an explicit ``host`` (OpenShift: ``oc whoami -t``).
            ca_bundle: CA certificate file that verifies the server's TLS certificate.
            verify_ssl: Whether to verify the server's certificate at all.
            kubeconfig: Kubeconfig file to use when ``host`` is ``None``.
            context: Kubeconfig context (default: the current one).
            timeout: Seconds to wait for each answer.
            attempts: Tries per request on transient failures.
            backoff_s: First back-off between tries.

        Returns:
            The client; close it (or use it as a context manager) when done.

        Raises:
            KubernetesError: When no configuration can be found.

        """
        if host is not None:
            configuration = k8s.Configuration(host=host.rstrip("/"))
            if token:
                configuration.api_key = {"authorization": token}
                configuration.api_key_prefix = {"authorization": "Bearer"}
            configuration.verify_ssl = verify_ssl
            if ca_bundle is not None:
                configuration.ssl_ca_cert = str(ca_bundle)
            # Our own loop retries, with back-off; urllib3's immediate retries would only multiply it.
            configuration.retries = 0
            return cls(k8s.ApiClient(configuration), timeout, attempts, backoff_s)
        configuration = k8s.Configuration()
        try:
            if kubeconfig is None and context is None:
                try:
                    k8s_config.load_incluster_config(client_configuration=configuration)
                except k8s_config.ConfigException:  # not inside a pod: use the kubeconfig
                    configuration = k8s.Configuration()
                    k8s_config.load_kube_config(client_configuration=configuration)
            else:
                k8s_config.load_kube_config(
                    config_file=str(kubeconfig) if kubeconfig is not None else None,
                    context=context,
                    client_configuration=configuration,
                )
        except (k8s_config.ConfigException, OSError) as exc:
            raise KubernetesError(
                f"no Kubernetes configuration found ({exc}); pass host= and token=, run inside a pod "
                f"with a service account, or point kubeconfig= at a valid file"
            ) from exc
        configuration.retries = 0  # before the ApiClient builds its connection pool
        return cls(k8s.ApiClient(configuration), timeout, attempts, backoff_s)

    @property
    def host(self) -> str:
        """The API server URL every error message names."""
        return str(self.api_client.configuration.host)

    @property
    def core(self) -> Any:
        """``CoreV1Api`` on this client."""
        return self._api("core", k8s.CoreV1Api)

    @property
    def apps(self) -> Any:
        """``AppsV1Api`` on this client."""
        return self._api("apps", k8s.AppsV1Api)

    @property
    def batch(self) -> Any:
        """``BatchV1Api`` on this client."""
        return self._api("batch", k8s.BatchV1Api)

    def _api(self, name: str, factory: Callable[[k8s.ApiClient], Any]) -> Any:
        if name not in self._apis:
            self._apis[name] = factory(self.api_client)
        return self._apis[name]

    def close(self) -> None:
        """Release the connection pool."""
        self.api_client.close()

    def __enter__(self) -> KubeClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def call(self, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """Run one API call with the time-out, retrying what may be transient.

        Args:
            fn: A bound method of a ``kubernetes`` API class, e.g. ``client.core.read_namespaced_pod``.
            *args: Its positional arguments.
            **kwargs: Its keyword arguments.

        Returns:
            What ``fn`` returns.

        Raises:
            KubernetesError: On rejected credentials (401/403, with the fix), any other error
                answer (with ``status`` and the server's ``details``), TLS failures, or when every
                attempt failed to get an answer.

        """
        what = describe_call(fn, args, kwargs)
        where = f"Kubernetes API at {self.host}"
        last: Exception | None = None
        for attempt in range(1, self.attempts + 1):
            try:
                return fn(*args, _request_timeout=self.timeout, **kwargs)
            except ApiException as exc:
                details = _status_details(exc)
                message = str(details.get("message") or exc.reason or "").strip()
                status = int(exc.status) if exc.status else None
                if status == 401:
                    raise KubernetesError(
                        f"{where} refused the credentials for {what} (HTTP 401 Unauthorized: {message}); "
                        f"pass a valid bearer token (e.g. `oc whoami -t` or a service account token) or a "
                        f"kubeconfig whose user is still logged in",
                        status=status,
                        details=details,
                    ) from exc
                if status == 403:
                    raise KubernetesError(
                        f"{where} forbids {what} (HTTP 403 Forbidden: {message}); grant the user or service "
                        f"account the missing verb on that resource (a ClusterRole such as `view` covers "
                        f"events, pods, pods/log, replicasets, jobs)",
                        status=status,
                        details=details,
                    ) from exc
                if status is None or status not in _RETRY_STATUS:
                    raise KubernetesError(
                        f"{where} answered {what} with HTTP {status} {exc.reason}: {message}",
                        status=status,
                        details=details,
                    ) from exc
                last = KubernetesError(f"HTTP {status} {exc.reason}: {message}", status=status)
            except urllib3.exceptions.MaxRetryError as exc:
                reason = exc.reason if isinstance(exc.reason, Exception) else exc
                if isinstance(reason, urllib3.exceptions.SSLError):
                    raise KubernetesError(
                        f"TLS verification failed for {where} ({what}): {reason}; pass ca_bundle= the CA "
                        f"that signed the API server's certificate (the kubeconfig's "
                        f"certificate-authority-data)"
                    ) from exc
                last = reason
            except (urllib3.exceptions.HTTPError, OSError) as exc:  # time-outs, dropped connections
                last = exc
            if attempt < self.attempts:
                delay = min(self.backoff_s * 2 ** (attempt - 1), 30.0)
                _LOG.warning(
                    "attempt %d/%d failed for %s at %s: %s; retrying in %.1fs",
                    attempt,
                    self.attempts,
                    what,
                    self.host,
                    last,
                    delay,
                )
                time.sleep(delay)
        status = last.status if isinstance(last, KubernetesError) else None
        raise KubernetesError(
            f"cannot get an answer from {where} for {what} after {self.attempts} attempt(s): {last}; check "
            f"that the URL is right (`kubectl cluster-info`) and the server is reachable from here",
            status=status,
        ) from last

    def list_all(
        self, fn: Callable[..., Any], *, limit: int = 500, max_expired: int = 3, **kwargs: Any
    ) -> list[Any]:
        """Read a whole list page by page (``limit``/``continue``), surviving expired continue tokens.

        Args:
            fn: A ``list_*`` method, e.g. ``client.core.list_event_for_all_namespaces``.
            limit: Items per page.
            max_expired: How many HTTP 410 answers (expired continue tokens) to absorb before
                giving up.
            **kwargs: Further arguments of ``fn`` (``field_selector``, ``label_selector``, ...).

        Returns:
            Every item, in the server's order, each ``metadata.uid`` once (the last copy seen wins).

        Raises:
            KubernetesError: As :meth:`call`, and when the continue token expired more than
                ``max_expired`` times.

        """
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        items: dict[str, Any] = {}
        token: str | None = None
        expired = pages = 0
        while True:
            paging = {"limit": limit, **({"_continue": token} if token else {})}
            try:
                page = self.call(fn, **paging, **kwargs)
            except KubernetesError as exc:
                if exc.status != 410 or token is None:
                    raise
                expired += 1
                what = describe_call(fn, (), {"limit": limit, **kwargs})
                if expired > max_expired:
                    raise KubernetesError(
                        f"Kubernetes API at {self.host}: the continue token of {what} expired {expired} "
                        f"times (HTTP 410) after {pages} page(s); the list changes faster than it can be "
                        f"read, so raise limit (now {limit}) to need fewer pages",
                        status=410,
                        details=exc.details,
                    ) from exc
                fresh = (exc.details.get("metadata") or {}).get("continue")
                _LOG.warning(
                    "continue token of %s at %s expired after %d page(s) (HTTP 410); %s",
                    what,
                    self.host,
                    pages,
                    "resuming from the server's fresh token (inconsistent list)"
                    if fresh
                    else "restarting from the first page",
                )
                token = fresh or None
                continue
            pages += 1
            for item in page.items or []:
                meta = item.metadata
                uid = getattr(meta, "uid", None) or f"{getattr(meta, 'namespace', '')}/{meta.name}"
                items[uid] = item  # after a restart the newer copy of an item replaces the older
            token = page.metadata._continue if page.metadata is not None else None
            if not token:
                return list(items.values())
