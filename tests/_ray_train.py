"""What tests read of Ray Train's own storage (shared by the kill tests of tests/faults and tests/test_cluster.py)."""

from __future__ import annotations

import json
from pathlib import Path


def registered_epochs(train_dir: Path) -> list[int]:
    """Epochs whose checkpoint Ray Train's controller has registered in ``train_dir`` (the Ray Train run folder,
    ``<run_dir>/ray/<trainer name>``), read from its checkpoint manager snapshot. A checkpoint a worker reported
    but the controller has not yet polled dies with the worker, so a kill test waits for this."""
    snap = train_dir / "checkpoint_manager_snapshot.json"
    try:
        results = json.loads(snap.read_text()).get("checkpoint_results") or []
    except (OSError, ValueError):
        return []
    return sorted(int(r["metrics"]["epoch"]) for r in results if "epoch" in (r.get("metrics") or {}))
