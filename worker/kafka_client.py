"""Settings every Kafka client of a pipeline shares (servers, protocol version, TLS/SASL): sources and sinks use them."""

from __future__ import annotations

import os
from typing import Any

from schemas.pipeline import KafkaSource
from worker.errors import TextworkerError


def api_version(version: tuple[int, ...] | None) -> tuple[int, ...] | None:
    """The version as kafka-python names it: (2, 5, 0) -> (2, 5), the key of its version table."""
    if version is None:
        return None
    from kafka.protocol.broker_version_data import BROKER_API_VERSIONS

    trimmed = tuple(version)
    while len(trimmed) > 2 and trimmed[-1] == 0 and trimmed not in BROKER_API_VERSIONS:
        trimmed = trimmed[:-1]
    return trimmed


def client_config(spec: KafkaSource) -> dict[str, Any]:
    """Settings every kafka-python client of this source shares: servers, version, security."""
    sec = spec.security
    config: dict[str, Any] = {
        "bootstrap_servers": [s.strip() for s in spec.bootstrap_servers.split(",") if s.strip()],
        "api_version": api_version(spec.api_version),
        "security_protocol": sec.protocol,
        "ssl_check_hostname": sec.ssl_check_hostname,
        "ssl_cafile": sec.ssl_cafile, "ssl_certfile": sec.ssl_certfile, "ssl_keyfile": sec.ssl_keyfile,
    }
    if sec.sasl_mechanism:
        config.update(sasl_mechanism=sec.sasl_mechanism, sasl_plain_username=sec.sasl_username,
                      sasl_plain_password=_password(sec.sasl_password_env))
    return config


def _password(env_name: str | None) -> str | None:
    if env_name is None:
        return None
    if env_name not in os.environ:
        raise TextworkerError(f"the SASL password variable `{env_name}` is not set", hint=f"export {env_name}=...")
    return os.environ[env_name]
