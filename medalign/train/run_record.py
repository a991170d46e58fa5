"""``RUN/run.json``: what a training run was, for the people who read it later and for the model card.

Written by rank 0 when training starts and again when it ends (``status``: running, finished,
preempted, failed), atomically; a resumed run appends a segment. It holds the command line, the
versions, the medalign git commit when run from a checkout, the dataset's fingerprint and summary
(studies and volumes per split, positives per finding, where the labels came from, scanners), the
preset, world size and global batch, steps, wall time, volumes/s and the validation history. No
study ids, report text or patient data.
"""

from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from collections import Counter
from importlib import metadata
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L

from medalign.io.atomic import atomic_write_json
from medalign.io.fingerprint import file_sha256
from medalign.prep.manifest import MANIFEST, Manifest
from medalign.train.validation import ValidationHistory

RUN_RECORD = "run.json"
_PACKAGES = ("torch", "lightning", "monai", "transformers", "numpy", "pydicom", "nibabel")


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def environment() -> dict[str, Any]:
    """medalign's version and git commit, Python's and the main libraries' versions, the CUDA build."""
    import torch

    import medalign

    versions = {"medalign": medalign.__version__, "python": platform.python_version()}
    for name in _PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return {"versions": versions, "cuda": torch.version.cuda, "git_commit": git_commit()}


def git_commit() -> str | None:
    """The commit of the medalign source tree this runs from (``+dirty`` when it has local edits), or
    ``None`` for an installed wheel or where git is unavailable."""
    import medalign

    root = Path(medalign.__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "-C", str(root), "diff", "--quiet", "HEAD", "--", "medalign"], capture_output=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return head.stdout.strip() + ("+dirty" if dirty.returncode == 1 else "")


def label_source(dataset: Path) -> str:
    """Where a dataset's finding labels came from, as its ``prep_config.yaml`` and ``prep.log`` say."""
    from medalign.config import read_yaml

    prep = Path(dataset) / "prep_config.yaml"
    vocabulary = read_yaml(prep).get("vocab", "?") if prep.is_file() else "?"
    given = ""
    log = Path(dataset) / "prep.log"
    if log.is_file():
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            if line.startswith("given labels:"):
                given = line.removeprefix("given labels:").strip()
    parsed = f"parsed from the report text by medalign's labeler (vocabulary {vocabulary}: negation, uncertainty, sizes)"
    return f"{parsed}; a given labels file wins where it has a value ({given})" if given else parsed


def dataset_summary(manifest: Manifest, dataset: Path, uncertain: str) -> dict[str, Any]:
    """Counts a model card needs about the training data, per split; no ids, no text."""
    studies = manifest.studies()
    split_of = studies.columns["split"]
    summary: dict[str, Any] = {
        "path": str(Path(dataset).resolve()),
        "manifest_sha256": file_sha256(Path(dataset) / MANIFEST),
        "studies": dict(Counter(split_of)),
        "volumes": dict(Counter(manifest.columns["split"])),
        "patients": None,  # the manifest keeps no patient key: studies of one patient share a split
        "labels": label_source(dataset),
        "uncertain_labels_count_as": uncertain,
    }
    truth = studies.truth(studies.findings, uncertain)
    for split in ("train", "val", "test"):
        rows = [i for i, s in enumerate(split_of) if s == split]
        if rows:
            summary.setdefault("positives", {})[split] = {name: int((truth[rows, k] == 1).sum()) for k, name in enumerate(studies.findings)}
    scanners = Counter(m or "unknown" for m in studies.columns.get("manufacturer", [""] * len(studies)))
    summary["scanners"] = dict(scanners.most_common())
    return summary


def read_run_record(run: Path) -> dict[str, Any]:
    """``RUN/run.json`` as a dict (empty when there is none or it is unreadable)."""
    path = Path(run) / RUN_RECORD
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


class RunRecord(L.Callback):
    """Keeps ``RUN/run.json`` (rank 0): ``static()``'s facts at the start (asked of rank 0 only: versions,
    git, the dataset's hash and counts), a segment per ``fit`` (steps,
    wall time, volumes/s, how it ended), the validation history and the best validation metrics.
    ``stopped_by()`` names the signal that preempted the segment, if one did."""

    def __init__(self, run: Path, static: Callable[[], dict[str, Any]], per_device_batch: int, history: ValidationHistory,
                 stopped_by: Callable[[], str | None] = lambda: None, command: list[str] | None = None) -> None:
        self.path = Path(run) / RUN_RECORD
        self.static = static
        self.command = command or _command_line()
        self.per_device_batch = per_device_batch
        self.global_batch = per_device_batch
        self.history = history
        self.stopped_by = stopped_by
        self.record: dict[str, Any] = {}
        self._t0 = 0.0
        self._start_step = 0
        self._earlier_history: list[dict] = []

    def on_train_start(self, trainer, pl_module) -> None:
        if not trainer.is_global_zero:
            return
        self._t0, self._start_step = time.monotonic(), trainer.global_step
        self.global_batch = self.per_device_batch * trainer.world_size * trainer.accumulate_grad_batches
        earlier = read_run_record(self.path.parent)
        self._earlier_history = [h for h in earlier.get("validation", {}).get("history", []) if h["step"] <= trainer.global_step]
        self.record = {**earlier, **self.static(), "status": "running", "world_size": trainer.world_size,
                       "global_batch": self.global_batch}
        self.record.setdefault("created", _now())
        self.record["segments"] = earlier.get("segments", []) + [{
            "started": _now(), "from_step": trainer.global_step, "world_size": trainer.world_size,
            "command": self.command, "host": platform.node()}]
        self._write()

    def on_train_end(self, trainer, pl_module) -> None:
        self._end(trainer, "preempted" if self.stopped_by() else "finished")

    def on_exception(self, trainer, pl_module, exception: BaseException) -> None:
        self._end(trainer, "interrupted" if isinstance(exception, KeyboardInterrupt) else "failed",
                  f"{exception.__class__.__name__}: {str(exception).splitlines()[0][:200] if str(exception) else ''}")

    def _end(self, trainer, status: str, error: str | None = None) -> None:
        if not trainer.is_global_zero or not self.record:
            return
        wall = time.monotonic() - self._t0
        steps = trainer.global_step - self._start_step
        segment = self.record["segments"][-1]
        segment.update({"ended": _now(), "to_step": trainer.global_step, "wall_s": round(wall, 1), "global_batch": self.global_batch,
                        "volumes": steps * self.global_batch,
                        "volumes_per_s": round(steps * self.global_batch / wall, 2) if wall > 0 else None})
        if self.stopped_by():
            segment["stopped_by"] = self.stopped_by()
        if error:
            segment["error"] = error
        segments = self.record["segments"]
        total_wall = sum(s.get("wall_s") or 0 for s in segments)
        total_volumes = sum(s.get("volumes") or 0 for s in segments)
        self.record.update({
            "status": status, "steps_done": trainer.global_step, "wall_s": round(total_wall, 1),
            "volumes_per_s": round(total_volumes / total_wall, 2) if total_wall > 0 else None,
        })
        history = self._earlier_history + self.history.entries
        if history:
            best = max(history, key=lambda h: h.get("val/macro_auroc", float("-inf")))
            self.record.setdefault("validation", {}).update({"history": history, "best": best})
        self._write()

    def _write(self) -> None:
        atomic_write_json(self.path, self.record)


def _command_line() -> list[str]:
    """This process's command line, the program's own name shortened to ``medalign`` when it is medalign."""
    argv = list(sys.argv)
    if argv and (argv[0].endswith("main.py") or argv[0].endswith("medalign")):
        argv[0] = "medalign"
    return argv
