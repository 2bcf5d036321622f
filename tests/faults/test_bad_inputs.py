"""Every bad input a clear answer (issue 13): the table of ``benchmarks/fault_cases.py`` through the real CLI.

Each :data:`REFUSALS` case is one malformed config file, value, override or data file handed to
:func:`armada_ray.cli.main` in this process (stdout/stderr captured at the file descriptors). It must exit 2
with at most three lines on stderr that name the key or file at fault, print no traceback, echo no secret, and
refuse before Ray starts: ``ensure_ray`` is replaced by a function that raises, and ``ray.is_initialized()``
is checked after every case. Each :data:`BAD_ROWS` case is one bad row among good ones in a ``task.name=files``
file: the load goes on and the row is written, with file, row, field and reason, to
``<work_dir>/skipped/<task>.jsonl`` (the ``load_task`` + ``write_skipped`` calls ``armada embed`` and
``armada train`` make; the CLI would start Ray). Cases with a known defect are ``xfail(strict=True)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from _paths import ROOT

sys.path.insert(0, str(ROOT))

from benchmarks.fault_cases import (  # noqa: E402
    BAD_ROWS,
    REFUSALS,
    call_cli,
    judge_refusal,
    ray_started,
    run_bad_row,
)


def _params(cases: list) -> list:
    return [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.defect)] if c.defect else [])
            for c in cases]


@pytest.fixture(autouse=True)
def _local_run(monkeypatch):
    # a run on this machine (the machine-size check applies); no variable a case relies on being unset
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("ARMADA_FAULTS_NO_SUCH_VAR", raising=False)


def test_the_table_holds_at_least_40_distinct_inputs(ray_at_start: bool) -> None:
    ids = [c.id for c in REFUSALS + BAD_ROWS]
    assert len(ids) == len(set(ids)) and len(ids) >= 40
    assert len({c.what for c in REFUSALS + BAD_ROWS}) == len(ids)


@pytest.fixture(scope="module")
def ray_at_start() -> bool:
    """Whether another test of this session had started Ray in this process before these ran."""
    return ray_started()


@pytest.mark.parametrize("case", _params(REFUSALS))
def test_refused_clearly_before_ray(case, tmp_path: Path, capfd, ray_at_start: bool) -> None:
    rc = call_cli(case.argv(tmp_path))  # ensure_ray raises inside: a case that reaches Ray exits 1 at once
    out, err = capfd.readouterr()
    outcome = judge_refusal(case, rc, out, err, ray_before=ray_at_start)
    assert outcome.clear, f"{case.what}: {outcome.problems}\n--- stderr:\n{err[-2000:]}"


@pytest.mark.parametrize("case", _params(BAD_ROWS))
def test_bad_row_is_skipped_with_file_row_field_and_reason(case, tmp_path: Path) -> None:
    outcome = run_bad_row(case, tmp_path)
    assert outcome.clear, f"{case.what}: {outcome.problems}"


def test_nothing_here_started_ray(ray_at_start: bool) -> None:
    assert ray_started() == ray_at_start
