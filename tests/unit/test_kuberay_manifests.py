"""The KubeRay manifests against the vendored RayService/RayJob CRD schemas (infra/schemas/kuberay.py)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("kuberay_schemas", REPO / "infra" / "schemas" / "kuberay.py")
assert _spec is not None and _spec.loader is not None
kuberay = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kuberay)


def test_every_kuberay_manifest_is_valid() -> None:
    schemas = kuberay.load_schemas()
    assert {kind for _, kind in schemas} == {"RayService", "RayJob"}
    manifests = sorted((REPO / "infra" / "kuberay").glob("*.yaml"))
    assert manifests
    assert [line for path in manifests for line in kuberay.problems(path, schemas)] == []


def test_unknown_fields_wrong_types_and_unknown_kinds_are_reported(tmp_path: Path) -> None:
    text = (REPO / "infra" / "kuberay" / "rayservice.yaml").read_text()
    assert "    rayVersion:" in text and "replicas: 1\n" in text
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("    rayVersion:", "    rayVersoin:", 1).replace("replicas: 1\n", 'replicas: "one"\n', 1)
                   + "---\napiVersion: ray.io/v1\nkind: RayCluster\nmetadata: {name: c}\n")
    found = kuberay.problems(bad, kuberay.load_schemas())
    assert any("spec.rayClusterConfig" in line and "'rayVersoin' was unexpected" in line for line in found), found
    assert any("workerGroupSpecs.0.replicas" in line and "not of type 'integer'" in line for line in found), found
    assert any("RayCluster/c: no vendored schema" in line for line in found), found


def test_the_rayservice_serve_config_and_image_paths() -> None:
    """The embedded Serve config parses as Ray Serve's schema with textworker's ServeArgs, and every
    /app/pipelines/... file a manifest names is one the image's starter project (`textworker init /app`) has."""
    import re

    import yaml
    from ray.serve.schema import ServeDeploySchema

    from worker.scaffold import STARTER_PIPELINES
    from worker.serving.settings import ServeArgs

    service = yaml.safe_load((REPO / "infra" / "kuberay" / "rayservice.yaml").read_text())
    config = ServeDeploySchema.model_validate(yaml.safe_load(service["spec"]["serveConfigV2"]))
    (app,) = config.applications
    assert app.import_path == "worker.serving.app:app_builder"
    assert ServeArgs.model_validate(app.args).pipeline == "/app/pipelines/gpu.yaml"

    named = {m for path in [*(REPO / "infra").glob("*/*.yaml"), REPO / "infra" / "compose.yaml"]
             for m in re.findall(r"(?:/app/)?pipelines/([a-z_]+\.yaml)", path.read_text())}
    assert named and named <= set(STARTER_PIPELINES), named - set(STARTER_PIPELINES)
