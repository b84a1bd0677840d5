"""Peak memory of `textworker run` on a generated 2 GB JSONL file with the demo pipeline.

    .venv/bin/python benchmarks/memory_2gb.py [--gigabytes 2] [--normal 2000] [--keep]

The file holds `--normal` short documents (product reviews and messages, every stage of
pipelines/demo.yaml runs on them) between 2 MB lines that are over the demo source's
`max_chars` (1,000,000): those are read, refused at the source boundary (`too_large`) and
stored as dead letters with a clipped payload, so the run reads every byte of the file
without spending hours in the models. What it shows: the source streams (a line at a
time), and nothing in the run grows with the input.

Prints one JSON line: date, CPU model and ISA flags, file size, seconds, peak RSS of the
`textworker run` process (ru_maxrss from wait4), and the run's counts.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
REVIEWS = [
    "The green curry was fragrant and the staff were lovely; we will be back next week.",
    "Battery died after two days and support never answered my emails. Avoid.",
    "Can you call me when you get a sec? Nothing urgent, just about Saturday.",
    "URGENT! You have won a 900 prize. Claim now by calling 09061701461, T&C apply.",
    "The plot drags in the middle but the final act is worth the wait.",
]


def write_jsonl(path: Path, total_bytes: int, normal: int, big_line_bytes: int = 2 * 1024 * 1024) -> dict[str, int]:
    """`normal` short documents spread between lines of `big_line_bytes` until the file has `total_bytes`."""
    big_lines = max(1, (total_bytes - normal * 120) // big_line_bytes)
    every = max(1, normal // big_lines) if big_lines else normal
    filler = "word " * ((big_line_bytes - 40) // 5)
    written = {"big": 0, "normal": 0}
    with path.open("w", encoding="utf-8") as handle:
        for index in range(big_lines):
            handle.write(json.dumps({"id": f"big-{index:06d}", "text": filler}) + "\n")
            written["big"] += 1
            for _ in range(every if written["normal"] < normal else 0):
                n = written["normal"]
                handle.write(json.dumps({"id": f"doc-{n:06d}", "text": REVIEWS[n % len(REVIEWS)] + f" (#{n})"}) + "\n")
                written["normal"] += 1
        while written["normal"] < normal:
            n = written["normal"]
            handle.write(json.dumps({"id": f"doc-{n:06d}", "text": REVIEWS[n % len(REVIEWS)] + f" (#{n})"}) + "\n")
            written["normal"] += 1
    return written


def peak_rss_run(pipeline: str, data: Path, database_url: str, extra_env: dict[str, str] | None = None,
                 nice: int = 0) -> tuple[int, int, float, str]:
    """Run `textworker run` on `data`; returns (exit code, peak RSS in bytes, seconds, the tail of its output)."""
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1", **(extra_env or {})}
    command = [sys.executable, "-m", "worker.cli", "run", pipeline, "--input", str(data), "--database-url", database_url,
               "--quiet", "--json", "--log-level", "WARNING"]
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT,
                                   preexec_fn=(lambda: os.nice(nice)) if nice else None)
        _, status, usage = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        tail = out.read().decode("utf-8", "replace")[-4000:]
    return process.returncode, usage.ru_maxrss * 1024, time.perf_counter() - started, tail


def cpu() -> dict[str, str]:
    info = {"model": platform.processor() or "unknown", "flags": ""}
    try:
        text = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return info
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Model name":
            info["model"] = value.strip()
        if key.strip() == "Flags":
            wanted = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "amx_bf16", "amx_tile")
            info["flags"] = " ".join(f for f in value.split() if f in wanted)
    return info


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gigabytes", type=float, default=2.0)
    parser.add_argument("--normal", type=int, default=2000, help="short documents every stage runs on")
    parser.add_argument("--pipeline", default=str(REPO / "pipelines" / "demo.yaml"))
    parser.add_argument("--dir", default=None, help="where the file and the SQLite database go (default: a temporary dir)")
    parser.add_argument("--nice", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the generated file")
    args = parser.parse_args()

    workdir = Path(args.dir or tempfile.mkdtemp(prefix="tw-mem-"))
    workdir.mkdir(parents=True, exist_ok=True)
    data = workdir / "big.jsonl"
    counts = write_jsonl(data, int(args.gigabytes * 1024**3), args.normal)
    size = data.stat().st_size
    database_url = f"sqlite:///{workdir / 'memory.db'}"
    code, peak, seconds, tail = peak_rss_run(args.pipeline, data, database_url, nice=args.nice)
    summary: dict[str, object] = {}
    try:
        summary = json.loads(tail[tail.index("{"):])
    except ValueError:
        pass
    print(json.dumps({
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "cpu": cpu(), "cores": os.cpu_count(),
        "file_bytes": size, "lines": counts, "exit_code": code, "seconds": round(seconds, 1),
        "peak_rss_mib": round(peak / 1024**2, 1), "docs": summary.get("docs"), "dead_letters": summary.get("dead_letters"),
    }))
    if not args.keep:
        data.unlink()
    return 0 if code == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
