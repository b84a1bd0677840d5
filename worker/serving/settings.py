"""Settings of a served pipeline: request limits, cross-request batching, storage, placement.

Picklable and cheap: the driver builds them once and every replica receives a copy.
`ServeArgs` adds the pipeline file, for application builders that start from a path
(a RayService `serveConfigV2` entry passes these as its `args`).
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, SecretStr


class ServeSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    max_concurrent: int = Field(default=32, ge=1, description="Requests on /v1/documents in progress at once; 429 beyond.")
    max_documents: int = Field(default=256, ge=1, description="Documents per request; 413 beyond.")
    max_body_bytes: int = Field(default=8 * 1024 * 1024, ge=1024, description="Request body size; 413 beyond.")
    max_chars: int | None = Field(
        default=None, gt=0, description="Longer documents get a per-document too_large error; None: the pipeline source's max_chars."
    )
    database_url: str | None = Field(
        default=None, repr=False, description="Write every served document and result here; None: do not store (not in the repr: it may hold a password)."
    )
    batch_calls: int = Field(default=16, ge=1, description="Most calls (requests) one stage replica batches together.")
    batch_wait_ms: float = Field(default=10.0, ge=0, description="How long a stage replica waits for more calls to batch.")
    retry_after_s: int = Field(default=1, ge=0, description="Retry-After sent with 429 and 503.")
    token: SecretStr | None = Field(
        default=None, description="Bearer token for every route but the health probes; None: $TEXTWORKER_TOKEN in the ingress replica, else open."
    )
    allowed_hosts: tuple[str, ...] = Field(
        default=(), description="Host names the server answers to besides loopback names and IP literals (DNS-rebinding guard); "
        "`*` turns the check off. $TEXTWORKER_ALLOWED_HOSTS (comma-separated) adds more.",
    )
    ingress_cpus: float = Field(default=0.1, gt=0, description="CPUs the HTTP ingress replica asks for.")
    fit_to_cluster: bool = Field(
        default=True,
        description="Scale CPU requests down, and move GPU stages to CPU, when the cluster as it is now cannot hold them. "
        "Turn off on clusters that add nodes on demand (a KubeRay autoscaling GPU group).",
    )


class ServeArgs(ServeSettings):
    """`ServeSettings` plus the pipeline file; `database_url` unset means the pipeline's sink, `none` means no storage."""

    pipeline: str = Field(min_length=1, description="Path of the pipeline file, as the replicas see it.")
    store: bool = Field(default=True, description="False: answer requests without writing to SQL.")
