"""Running the paper's reference code (``../shared/refbench``, a measuring stick: run it, never copy
from it) through ``benchmarks/reference_run.sh`` and reading the timing log it writes."""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

REFBENCH = Path(__file__).resolve().parents[2] / "shared" / "refbench"


def require_refbench() -> None:
    if not REFBENCH.is_dir():
        raise SystemExit(f"--reference needs the reference code at {REFBENCH}")


def run_reference(block: str, task: str, flags: list[str]) -> tuple[list[dict[str, Any]], str]:
    """Train the reference on its config ``block`` and ``task`` with extra dreamer.py ``flags``,
    evaluations shortened to 2 episodes. Returns its timing log's records and the tail of its
    output (for an error message)."""
    with tempfile.TemporaryDirectory() as out:
        command = [
            "bash",
            str(Path(__file__).with_name("reference_run.sh")),
            block,
            *flags,
            "--eval_episode_num",
            "2",
            "--test_episode_num",
            "2",
        ]
        result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "OUT": out, "TASK": task})
        log = Path(out) / "timing.jsonl"
        records = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return records, f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
