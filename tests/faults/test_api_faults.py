"""Teacher API faults that `benchmarks/faults.py` met, each reproduced on its own (issue 13).

- The dimension probe (the first request of `armada embed`, before Ray) meeting one transient bad reply.
- A quarantined row whose prompt holds a Unicode line separator, read back through ``TeacherCache.quarantined``.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
from _paths import ROOT

sys.path.insert(0, str(ROOT))

from armada_ray.cache import TeacherCache  # noqa: E402
from benchmarks.fault_cases import SMALL_EMBED, Server, armada_child, child_env  # noqa: E402


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_one_bad_reply_to_the_probe_does_not_stop_the_job(tmp_path: Path) -> None:
    # fault_seed 1: the first draw (0.134) is below malformed_rate, the next three are not
    server = Server(["server.malformed_rate=0.2", "server.fault_seed=1"]).ready()
    ray_tmp = Path(tempfile.mkdtemp(prefix="afp", dir="/tmp"))
    try:
        out = armada_child(["embed", f"paths.work_dir={tmp_path}", *SMALL_EMBED, f"teacher.endpoint={server.url}"],
                           child_env(RAY_TMPDIR=str(ray_tmp)), timeout=200)
        stats = server.stats()
    finally:
        server.stop()
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert stats["injected_malformed"] >= 1
    assert out.returncode == 0, out.stderr[-1500:]


@pytest.mark.parametrize("sep", ["\x85", "\u2028"])
def test_a_quarantined_row_with_a_line_separator_is_read_back(tmp_path: Path, sep: str) -> None:
    cache = TeacherCache(tmp_path, {"kind": "test", "v": 1}, 4, "float32")
    prompt = f"thank you! i absolutely will _{sep}_"
    cache.quarantine([{"key": cache.key_for(prompt), "prompt": prompt, "reason": "malformed_reply: not JSON"},
                      {"key": cache.key_for("plain"), "prompt": "plain", "reason": "non_finite"}])
    on_disk = [json.loads(ln) for ln in (cache.path / "quarantine.jsonl").read_text("utf-8").split("\n") if ln]
    assert len(on_disk) == 2  # the file itself holds both records
    assert [q["key"] for q in cache.quarantined()] == [q["key"] for q in on_disk]


def test_a_quarantined_row_is_asked_again_by_the_next_run_not_lost(tmp_path: Path) -> None:
    """What makes a quarantined row recoverable: it is not in the cache, so the next `armada embed` sends it."""
    cache = TeacherCache(tmp_path, {"kind": "test", "v": 1}, 4, "float32")
    cache.write_shard([cache.key_for("good")], np.ones((1, 4), np.float32))
    cache.quarantine([{"key": cache.key_for("bad"), "prompt": "bad", "reason": "non_finite"}])
    again = TeacherCache(tmp_path, {"kind": "test", "v": 1}, 4, "float32")
    assert again.missing([again.key_for("good"), again.key_for("bad")]) == [again.key_for("bad")]
