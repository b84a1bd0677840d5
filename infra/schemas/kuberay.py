"""KubeRay manifests checked against the RayService and RayJob CRD schemas.

    python infra/schemas/kuberay.py validate infra/kuberay/*.yaml      # make lint runs this
    python infra/schemas/kuberay.py extract CRD.yaml > infra/schemas/kuberay/KIND_VERSION.json

`kubernetes-validate` knows the built-in kinds only; KubeRay's custom resources are
checked here against the OpenAPI v3 schema of their CustomResourceDefinition (vendored in
infra/schemas/kuberay/, see its README). Validation is strict: a field the schema does
not name is an error (the API server would silently drop it), as with
`kubernetes-validate --strict`. Every document in every file must be of a vendored kind.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import jsonschema
import yaml

SCHEMAS = Path(__file__).resolve().parent / "kuberay"


def extract(crd_file: Path) -> dict[str, Any]:
    """The OpenAPI v3 schema of a CustomResourceDefinition's storage version, with its kind and group."""
    crd = yaml.safe_load(crd_file.read_text())
    kind = crd["spec"]["names"]["kind"]
    return {"kind": kind, "group": crd["spec"]["group"],
            "versions": {v["name"]: v["schema"]["openAPIV3Schema"] for v in crd["spec"]["versions"] if v.get("storage")}}


def strict(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists its properties and allows no others."""
    if isinstance(schema, dict):
        out = {k: strict(v) for k, v in schema.items()}
        if "properties" in out and "additionalProperties" not in out and not out.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
        return out
    if isinstance(schema, list):
        return [strict(v) for v in schema]
    return schema


def load_schemas() -> dict[tuple[str, str], dict[str, Any]]:
    """(apiVersion, kind) -> strict JSON schema, for every vendored CRD schema file."""
    schemas = {}
    for path in sorted(SCHEMAS.glob("*.json")):
        crd = json.loads(path.read_text())
        for version, schema in crd["versions"].items():
            schemas[(f"{crd['group']}/{version}", crd["kind"])] = strict(schema)
    return schemas


def problems(path: Path, schemas: dict[tuple[str, str], dict[str, Any]]) -> list[str]:
    """Every schema violation in one manifest file, as `file: kind/name: field: message` lines."""
    found = []
    for doc in yaml.safe_load_all(path.read_text()):
        if not doc:
            continue
        key = (doc.get("apiVersion", ""), doc.get("kind", ""))
        name = f"{key[1]}/{(doc.get('metadata') or {}).get('name', '?')}"
        if key not in schemas:
            found.append(f"{path}: {name}: no vendored schema for apiVersion {key[0]!r} kind {key[1]!r}")
            continue
        validator = jsonschema.Draft7Validator(schemas[key])
        for error in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path)):
            field = ".".join(str(p) for p in error.absolute_path) or "(top)"
            found.append(f"{path}: {name}: {field}: {error.message[:300]}")
    return found


def main(argv: list[str]) -> int:
    if len(argv) >= 2 and argv[0] == "extract":
        print(json.dumps(extract(Path(argv[1])), separators=(",", ":"), sort_keys=True))
        return 0
    if len(argv) >= 2 and argv[0] == "validate":
        schemas = load_schemas()
        found = [line for file in argv[1:] for line in problems(Path(file), schemas)]
        for line in found:
            print(line, file=sys.stderr)
        if not found:
            print(f"{len(argv) - 1} KubeRay manifest file(s) valid against {', '.join(sorted(k for _, k in schemas))}")
        return 1 if found else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
