"""Live figures for the dashboard: this process's metrics and those of the workers it is told about.

`textworker dashboard --metrics-url http://worker:9400/metrics` (repeatable) scrapes
each worker's `/metrics` when the Live tab asks (2 s timeout each, redirects not
followed; the dashboard's token is sent as the bearer token only to targets on the
dashboard's own host, see `gets_token`), parses the text format with prometheus_client's parser and
sums it up per stage: documents in/out/failed, latency p50/p95 from the histogram
buckets (as PromQL's `histogram_quantile` does), tokens/s, padding waste, model
version, consumer lag per partition, dead letters by reason, GPU memory.
"""

from __future__ import annotations

import ipaddress
import math
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Sequence
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from worker.observability import metrics

FETCH_TIMEOUT_S = 2.0
MAX_EXPOSITION_BYTES = 16 * 1024 * 1024
LOOPBACK = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


def histogram_quantile(q: float, buckets: Sequence[tuple[float, float]]) -> float | None:
    """The q-quantile of a cumulative histogram [(upper bound, count)], linearly interpolated in its bucket."""
    ordered = sorted(buckets)
    if not ordered or ordered[-1][1] <= 0:
        return None
    rank = q * ordered[-1][1]
    lower_bound, lower_count = 0.0, 0.0
    for bound, count in ordered:
        if count >= rank:
            if math.isinf(bound):
                return lower_bound
            if count == lower_count:
                return bound
            return lower_bound + (bound - lower_bound) * (rank - lower_count) / (count - lower_count)
        lower_bound, lower_count = bound, count
    return ordered[-1][0]


def summarise(text: str) -> dict[str, Any]:
    """Per-stage and per-partition figures from one exposition."""
    stages: dict[tuple[str, str], dict[str, Any]] = {}
    buckets: dict[tuple[str, str], list[tuple[float, float]]] = {}
    lag: list[dict[str, Any]] = []
    dead: list[dict[str, Any]] = []
    gpu: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    simple = {
        "textworker_stage_documents_in_total": "docs_in", "textworker_stage_documents_out_total": "docs_out",
        "textworker_stage_documents_failed_total": "failed", "textworker_stage_documents_skipped_total": "skipped",
        "textworker_stage_tokens_total": "tokens", "textworker_stage_padded_tokens_total": "padded_tokens",
        "textworker_stage_tokens_per_second": "tokens_per_s", "textworker_stage_padding_waste_ratio": "padding_waste",
        "textworker_stage_gpu_memory_bytes": "gpu_memory_bytes", "textworker_stage_batch_seconds_count": "calls",
        "textworker_stage_batch_seconds_sum": "seconds",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = sample.labels
            key = (labels.get("pipeline", ""), labels.get("stage", ""))
            if sample.name in simple:
                stages.setdefault(key, {})[simple[sample.name]] = sample.value
            elif sample.name == "textworker_stage_batch_seconds_bucket":
                buckets.setdefault(key, []).append((float(labels["le"]), sample.value))
            elif sample.name == "textworker_model_info" and sample.value:
                stages.setdefault(key, {})["model_version"] = labels.get("model_version")
            elif sample.name == "textworker_consumer_lag":
                lag.append({**{k: labels.get(k) for k in ("pipeline", "group", "topic", "partition")}, "lag": sample.value})
            elif sample.name == "textworker_dead_letters_total":
                dead.append({**{k: labels.get(k) for k in ("pipeline", "stage", "reason")}, "count": sample.value})
            elif sample.name.startswith("textworker_gpu_memory_"):
                gpu.append({"device": labels.get("device"), "what": sample.name.removeprefix("textworker_gpu_memory_"), "bytes": sample.value})
            elif sample.name == "textworker_run_active":
                runs.append({"pipeline": labels.get("pipeline"), "active": bool(sample.value)})
    for key, series in buckets.items():
        for q in (0.5, 0.95):
            value = histogram_quantile(q, series)
            stages.setdefault(key, {})[f"latency_p{round(q * 100)}_ms"] = round(value * 1000, 2) if value is not None else None
    rows = [{"pipeline": p, "stage": s, **values} for (p, s), values in sorted(stages.items()) if s]
    return {"stages": rows, "lag": lag, "dead_letters": dead, "gpu": gpu, "runs": runs}


class _NoRedirects(urllib.request.HTTPRedirectHandler):
    """A redirect is an error: following it would carry the Authorization header to wherever it points."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> None:
        raise urllib.error.HTTPError(req.full_url, code, f"redirect to {newurl[:100]} not followed", headers, fp)


_OPENER = urllib.request.build_opener(_NoRedirects)


def gets_token(url: str, own_hosts: frozenset[str]) -> bool:
    """The dashboard's token goes only to a target on this dashboard's own host: a loopback address
    or a name in `own_hosts` (the names the dashboard answers to: loopback names and --allowed-host)."""
    host = (urllib.parse.urlsplit(url).hostname or "").lower().rstrip(".")
    if host in own_hosts:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def fetch(url: str, token: str | None, own_hosts: frozenset[str] = LOOPBACK) -> str:
    """GET one target's exposition: http(s) only, 2 s timeout, no redirects, the token only for our own host."""
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("only http:// and https:// metrics URLs are read")
    send_token = token is not None and gets_token(url, own_hosts)
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if send_token else {})
    with _OPENER.open(request, timeout=FETCH_TIMEOUT_S) as response:
        return str(response.read(MAX_EXPOSITION_BYTES).decode("utf-8", "replace"))


def snapshot(targets: Iterable[str], token: str | None, own_hosts: frozenset[str] = LOOPBACK) -> list[dict[str, Any]]:
    """One entry per source: this process first, then each target (with its error, if unreachable)."""
    out = [{"source": "this process", "error": None, **summarise(metrics.render().decode("utf-8"))}]
    for url in targets:
        try:
            out.append({"source": url, "error": None, **summarise(fetch(url, token, own_hosts))})
        except (OSError, urllib.error.URLError, ValueError) as exc:
            out.append({"source": url, "error": str(getattr(exc, "reason", exc))[:200], "stages": [], "lag": [], "dead_letters": [], "gpu": [], "runs": []})
    return out
