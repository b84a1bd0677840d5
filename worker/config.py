"""Read a pipeline file: YAML -> environment interpolation -> validated `PipelineSpec`.

Every problem is reported at once, each with its field path and source line, so a
user fixes a file in one pass. Interpolation supports `${VAR}`, `${VAR:-default}`
(default used when VAR is unset or empty) and `$${...}` for a literal `${...}`.
"""

from __future__ import annotations

import importlib
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from schemas.pipeline import SINK_SPECS, SOURCE_SPECS, STAGE_SPECS, PipelineSpec
from worker.errors import PipelineFileError, Problem

_VAR = re.compile(r"\$(\$?)\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")

Path_ = tuple[str | int, ...]


def _node_lines(node: yaml.Node, path: Path_, lines: dict[Path_, int]) -> None:
    lines[path] = node.start_mark.line + 1
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            lines[(*path, key)] = key_node.start_mark.line + 1
            _node_lines(value_node, (*path, key), lines)
            lines[(*path, key)] = key_node.start_mark.line + 1
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            _node_lines(item, (*path, index), lines)


def interpolate(
    value: Any, env: Mapping[str, str], path: Path_ = (), problems: list[tuple[Path_, str]] | None = None
) -> Any:
    """Replace `${VAR}` references in every string of a parsed YAML document."""
    problems = problems if problems is not None else []
    if isinstance(value, dict):
        return {k: interpolate(v, env, (*path, k), problems) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env, (*path, i), problems) for i, v in enumerate(value)]
    if not isinstance(value, str):
        return value

    def replace(match: re.Match[str]) -> str:
        escaped, name, default = match.groups()
        if escaped:
            return match.group(0)[1:]
        found = env.get(name)
        if found:
            return found
        if default is not None:
            return default
        if found is not None:
            return found
        problems.append((path, f"environment variable `{name}` is not set and has no default"))
        return ""

    return _VAR.sub(replace, value)


def _line_for(loc: Path_, lines: dict[Path_, int]) -> int | None:
    probe = tuple(loc)
    while probe:
        if probe in lines:
            return lines[probe]
        probe = probe[:-1]
    return lines.get(())


def _clean_loc(loc: tuple[Any, ...]) -> Path_:
    """Drop pydantic's union tags (`stages.0.classify.labels` -> `stages.0.labels`): the registered type names."""
    tags = set(STAGE_SPECS) | set(SOURCE_SPECS) | set(SINK_SPECS)
    return tuple(part for part in loc if not (isinstance(part, str) and part in tags))


def _format_path(loc: Path_) -> str:
    text = ""
    for part in loc:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "<file>"


def _condition_stages(cond: Any) -> set[str]:
    if not isinstance(cond, dict):
        return set()
    found = {cond["stage"]} if isinstance(cond.get("stage"), str) else set()
    for key in ("all", "any"):
        for child in cond.get(key) or []:
            found |= _condition_stages(child)
    return found | _condition_stages(cond.get("not"))


def _cross_check(data: dict[str, Any]) -> list[tuple[Path_, str]]:
    """Stage-name checks pydantic skips when other fields already failed."""
    problems: list[tuple[Path_, str]] = []
    seen: set[str] = set()
    stages = data.get("stages")
    for index, stage in enumerate(stages if isinstance(stages, list) else []):
        if not isinstance(stage, dict):
            continue
        name = stage.get("name")
        if name in seen:
            problems.append((("stages", index, "name"), f"duplicate stage name `{name}`"))
        unknown = _condition_stages(stage.get("when")) - seen
        if unknown:
            problems.append((("stages", index, "when"), f"`when` reads {sorted(unknown)}, which is not an earlier stage"))
        if isinstance(name, str):
            seen.add(name)
    return problems


def load_stage_plugins() -> None:
    """Import the stage-type registry, so every plug-in's spec class is part of the pipeline schema.

    Loaded by name, like an entry point: the registry sits above this module's layer.
    """
    importlib.import_module("worker.stages")


def parse_pipeline(text: str, filename: str = "<pipeline>", env: Mapping[str, str] | None = None) -> PipelineSpec:
    """Validate pipeline text; raise `PipelineFileError` listing every problem."""
    env = os.environ if env is None else env
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        raise PipelineFileError(filename, [Problem("<file>", f"not valid YAML: {exc}", line)]) from exc
    if not isinstance(data, dict):
        raise PipelineFileError(filename, [Problem("<file>", "the file must hold a mapping (key: value)", 1)])
    lines: dict[Path_, int] = {}
    if root is not None:
        _node_lines(root, (), lines)
    env_problems: list[tuple[Path_, str]] = []
    data = interpolate(data, env, (), env_problems)
    problems = [Problem(_format_path(p), msg, _line_for(p, lines)) for p, msg in env_problems]
    load_stage_plugins()
    try:
        spec = PipelineSpec.model_validate(data)
    except ValidationError as exc:
        cross = _cross_check(data)
        for path, msg in cross:
            problems.append(Problem(_format_path(path), msg, _line_for(path, lines)))
        for error in exc.errors():
            loc = _clean_loc(error["loc"])
            message = error["msg"].removeprefix("Value error, ")
            if not loc and any(msg in message for _, msg in cross):
                continue
            if error["type"] == "extra_forbidden":
                message = "unknown field (check its spelling and indentation)"
            problems.append(Problem(_format_path(loc), message, _line_for(loc, lines)))
        raise PipelineFileError(filename, problems) from None
    if problems:
        raise PipelineFileError(filename, problems)
    return spec


_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*):(?P<password>.*)@")  # up to the last @


def hide_password(url: str | None) -> str:
    """A database URL fit to print or log: `postgresql://user:***@host/db`; other URLs unchanged.

    Uses SQLAlchemy's own rendering when the URL parses, and a pattern on anything else,
    so even a malformed URL never shows its password.
    """
    if not url:
        return ""
    try:
        from sqlalchemy.engine import make_url

        shown = make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a SQLAlchemy URL: the pattern below still hides a password
        shown = url
    return _URL_PASSWORD.sub(lambda m: f"{m['head']}:***@", shown)


def load_pipeline(path: str | Path, env: Mapping[str, str] | None = None) -> PipelineSpec:
    """Read and validate a pipeline file from disk."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise PipelineFileError(str(path), [Problem("<file>", f"cannot read the file: {exc}")]) from exc
    return parse_pipeline(text, str(path), env)
