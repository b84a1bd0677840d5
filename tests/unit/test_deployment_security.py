"""Deployment and configuration security: the compose stack and KubeRay manifests as written,
app_builder's refusal, passwords hidden in printed URLs, the Kafka security schema, the
safetensors-only rule on every load path, and registry champions outside their family."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import ValidationError

from schemas.pipeline import KafkaSource
from worker.config import hide_password
from worker.errors import TextworkerError

REPO = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- compose


def _compose() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "infra" / "compose.yaml").read_text())
    return data


def test_compose_publishes_nothing_on_all_interfaces_and_requires_a_token() -> None:
    services = _compose()["services"]
    published = {name: service.get("ports", []) for name, service in services.items()}
    assert published["postgres"] and published["serve"]
    for name, ports in published.items():
        for port in ports:
            assert str(port).startswith("127.0.0.1:"), (name, port)
    assert services["postgres"]["environment"]["POSTGRES_PASSWORD"]  # a password, hence loopback only
    token = services["serve"]["environment"]["TEXTWORKER_TOKEN"]
    assert token.startswith("${TEXTWORKER_TOKEN:?")  # compose refuses to start without one


def test_the_compose_serve_command_starts_with_the_compose_token(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the serve container runs gets past the CLI's checks with the stack's environment, and not without the token."""
    from worker.cli import build_parser
    from worker.commands.serve import serve_settings
    from worker.config import load_pipeline

    service = _compose()["services"]["serve"]
    args = build_parser().parse_args(service["command"])
    spec = load_pipeline(REPO / args.pipeline)
    monkeypatch.setenv("TEXTWORKER_DATABASE_URL", service["environment"]["TEXTWORKER_DATABASE_URL"])
    monkeypatch.delenv("TEXTWORKER_TOKEN", raising=False)
    with pytest.raises(TextworkerError, match="refusing to listen on 0.0.0.0 without a token"):
        serve_settings(args, spec)
    monkeypatch.setenv("TEXTWORKER_TOKEN", "compose-token")
    settings = serve_settings(args, spec)
    assert settings.token is not None and settings.token.get_secret_value() == "compose-token"
    assert "serve" in settings.allowed_hosts and args.host == "0.0.0.0"
    assert "compose-token" not in repr(settings)


# --------------------------------------------------------------------------- KubeRay


def _manifest(name: str) -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load((REPO / "infra" / "kuberay" / name).read_text())
    return data


def _containers(cluster: dict[str, Any]) -> list[dict[str, Any]]:
    groups = [cluster["headGroupSpec"], *cluster.get("workerGroupSpecs", [])]
    return [c for group in groups for c in group["template"]["spec"]["containers"]]


def test_the_rayservice_serves_off_loopback_only_with_a_token_from_a_secret() -> None:
    service = _manifest("rayservice.yaml")
    serve_config = yaml.safe_load(service["spec"]["serveConfigV2"])
    assert serve_config["http_options"]["host"] == "0.0.0.0"  # hence the token
    containers = _containers(service["spec"]["rayClusterConfig"])
    for container in containers:
        env = {e["name"]: e for e in container["env"]}
        assert env["TEXTWORKER_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "textworker-token", "key": "token"}, container["name"]
    (app,) = serve_config["applications"]
    assert "token" not in app["args"]  # never in the manifest itself
    assert "textworker-serve-svc" in app["args"]["allowed_hosts"]


@pytest.mark.parametrize("name", ["rayservice.yaml", "rayjob.yaml", "finetune-rayjob.yaml"])
def test_the_ray_dashboard_needs_ray_token_auth(name: str) -> None:
    manifest = _manifest(name)
    cluster = manifest["spec"].get("rayClusterConfig") or manifest["spec"]["rayClusterSpec"]
    assert cluster["authOptions"]["mode"] == "token"


def test_app_builder_refuses_to_serve_off_loopback_without_a_token() -> None:
    """Where Serve's HTTP address is not known to be loopback (here: no Ray at all), no token means no application."""
    code = ("from worker.serving.app import app_builder\n"
            "app_builder({'pipeline': 'pipelines/demo.yaml', 'store': False})\n")
    env = {k: v for k, v in os.environ.items() if k not in ("TEXTWORKER_TOKEN", "RAY_ADDRESS")}
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0
    assert "refusing to listen on an unknown Serve HTTP address without a token" in done.stderr, done.stderr[-2000:]


# --------------------------------------------------------------------------- secrets in URLs


@pytest.mark.parametrize(("url", "shown"), [
    ("postgresql://postgres:textworker@postgres:5432/textworker", "postgresql://postgres:***@postgres:5432/textworker"),
    ("postgresql+psycopg://u:p%40ss@h/db", "postgresql+psycopg://u:***@h/db"),
    ("postgresql://u:p@ss@h/db", "postgresql://u:***@h/db"),
    ("postgresql://u:pa/ss word@h/db", "postgresql://u:***@h/db"),
    ("sqlite:///results.db", "sqlite:///results.db"),
    ("postgresql://u@h/db", "postgresql://u@h/db"),
])
def test_database_urls_are_shown_without_their_password(url: str, shown: str) -> None:
    assert hide_password(url) == shown


def test_serve_prints_the_database_url_without_its_password() -> None:
    from worker.serving.settings import ServeSettings

    source = (REPO / "worker" / "commands" / "serve.py").read_text()
    assert "hide_password(settings.database_url)" in source and "{settings.database_url}" not in source
    settings = ServeSettings(database_url="postgresql://u:pw-4c1d@db/textworker")
    assert "pw-4c1d" not in repr(settings) and "pw-4c1d" not in str(settings)


def test_a_bad_database_url_never_echoes_its_password() -> None:
    from worker.errors import SinkError
    from worker.sinks.sql import make_engine

    with pytest.raises(SinkError) as caught:
        make_engine("postgresql://u:pw-99e1@db:notaport/x")
    assert "pw-99e1" not in str(caught.value) and "pw-99e1" not in repr(caught.value)


def test_an_unwritable_sqlite_path_is_one_clear_line() -> None:
    """An SQLite path nobody can create (root included: procfs refuses new files; a file where a directory
    should be) gives exit 2 and one error line, no traceback; `sqlite:////unwritable/x.db` too when not root."""
    from worker.errors import SinkError
    from worker.sinks.sql import make_engine

    urls = ["sqlite:////proc/unwritable/x.db", "sqlite:////etc/hostname/x.db"]
    if os.geteuid() != 0:
        urls.append("sqlite:////unwritable/x.db")
    for url in urls:
        with pytest.raises(SinkError, match=f"cannot write the SQLite database {url.removeprefix('sqlite:///')}: "):
            make_engine(url)
    sample = REPO / "worker" / "seed" / "sample_docs.jsonl"
    done = subprocess.run([sys.executable, "-m", "worker.cli", "run", "pipelines/demo.yaml", "--input", str(sample),
                           "--database-url", urls[0], "--quiet"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert done.stderr.startswith("error: TW401 cannot write the SQLite database /proc/unwritable/x.db"), done.stderr[-1000:]


# --------------------------------------------------------------------------- Kafka security


def _kafka(**fields: Any) -> KafkaSource:
    return KafkaSource.model_validate({"bootstrap_servers": "b:9092", "topics": ["t"], "group": "g", **fields})


def test_sasl_settings_need_a_sasl_protocol() -> None:
    with pytest.raises(ValidationError, match="use SASL_SSL"):
        _kafka(security={"sasl_mechanism": "PLAIN", "sasl_username": "u", "sasl_password_env": "PW"})
    with pytest.raises(ValidationError, match="use SASL_SSL"):
        _kafka(security={"protocol": "SSL", "sasl_username": "u"})
    with pytest.raises(ValidationError, match="needs `sasl_mechanism`"):
        _kafka(security={"protocol": "SASL_SSL"})
    ok = _kafka(security={"protocol": "SASL_SSL", "sasl_mechanism": "SCRAM-SHA-512", "sasl_username": "u", "sasl_password_env": "PW"})
    assert ok.security.protocol == "SASL_SSL"


@pytest.mark.parametrize("key", ["security_protocol", "ssl_check_hostname", "sasl_plain_password", "ssl_context",
                                 "bootstrap_servers", "SASL_MECHANISM", "ssl_anything_new"])
def test_client_options_cannot_override_security(key: str) -> None:
    with pytest.raises(ValidationError, match="client_options may not set"):
        _kafka(client_options={key: "PLAINTEXT"})
    assert _kafka(client_options={"fetch_min_bytes": 1}).client_options == {"fetch_min_bytes": 1}


# --------------------------------------------------------------------------- safetensors only


WEIGHT_FREE = ("Tokenizer", "Config", "GenerationConfig")


def _from_pretrained_calls() -> list[tuple[str, int, str, bool]]:
    """(file, line, class, passes use_safetensors=True) for every `X.from_pretrained(...)` in worker/."""
    found = []
    for path in sorted((REPO / "worker").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "from_pretrained":
                owner = ast.unparse(node.func.value)
                safe = any(k.arg == "use_safetensors" and isinstance(k.value, ast.Constant) and k.value.value is True
                           for k in node.keywords)
                found.append((str(path.relative_to(REPO)), node.lineno, owner, safe))
    return found


def test_every_weight_load_asks_for_safetensors() -> None:
    calls = _from_pretrained_calls()
    assert any("translation.py" in c[0] for c in calls)  # the translation paths are among them
    loader = [c for c in calls if c[0] == "worker/models/loading.py"]
    assert loader, "the shared loader's calls"
    unsafe = [c for c in calls if c[0] != "worker/models/loading.py" and not c[2].endswith(WEIGHT_FREE) and not c[3]]
    assert unsafe == []


def test_the_shared_loader_forces_safetensors_and_no_remote_code(tmp_path: Path) -> None:
    """A checkpoint with only pickle weights (pytorch_model.bin) is refused, even when a caller asks otherwise."""
    import torch
    import transformers

    from worker.errors import ModelFormatError
    from worker.models import loading

    config = transformers.BertConfig(vocab_size=32, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=8)
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(tmp_path)
    for weights in tmp_path.glob("*.safetensors"):
        weights.unlink()
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")  # what an old or hostile checkpoint ships: pickle
    ref = loading.resolve(str(tmp_path))
    with pytest.raises(ModelFormatError, match="only safetensors"):
        loading.load_pretrained(transformers.AutoModelForSequenceClassification, ref, use_safetensors=False, trust_remote_code=True)


# --------------------------------------------------------------------------- registry artifact paths


def test_a_registry_champion_outside_its_family_is_not_loaded(tmp_path: Path) -> None:
    from worker.engine.swap import ChampionLookup, LookupFailed
    from worker.lifecycle.registry import ModelRegistry

    family = tmp_path / "models" / "spam"
    inside, outside = family / "v2", tmp_path / "elsewhere" / "spam-v9"
    for directory in (family / "v1", inside, outside):
        directory.mkdir(parents=True)
        (directory / "config.json").write_text(json.dumps({"model_type": "bert"}))
    url = f"sqlite:///{tmp_path / 'registry.db'}"
    registry = ModelRegistry.open(url)
    for version, path in (("v2", inside), ("v9", outside)):
        registry.register(name="spam", version=version, stage="spam", task="spam", artifact_path=path)
    registry.promote("spam", "v2", "test")
    lookup = ChampionLookup(family.resolve(), url)
    champion = lookup.champion()
    assert champion is not None and champion.location == str(inside.resolve())
    registry.promote("spam", "v9", "a row pointing outside the family")
    with pytest.raises(LookupFailed, match="outside the family directory"):
        lookup.champion()
    lookup.close()
    registry.close()
