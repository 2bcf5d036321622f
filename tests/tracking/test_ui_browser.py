"""`armada ui` in a real browser: a sweep's parent run folds its trials, and a trial's plot renders.

Drives headless Debian Chromium through the ``playwright`` package (no browser download). A machine
without ``/usr/bin/chromium`` gets it from apt when the test runs as root (CI machines start bare);
otherwise the test fails under ``CI=true`` and is skipped elsewhere, naming the command to run.
Screenshots land in ``tests/_output/<test name>/`` (gitignored).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _net import free_port

from armada_ray.config import load_config
from armada_ray.plots import plot_dev_curves
from armada_ray.tracking import RunTracker, standard_tags, start_sweep_parent
from armada_ray.tracking.tags import EXPERIMENT_KIND_TAG
from armada_ray.tracking.ui import TRAINING_VIEW, port_in_use
from armada_ray.tune import sweep_markdown

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run",
]
TRIALS = ("trial-alpha-0.3", "trial-alpha-0.7")
BASELINE = "baseline"

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]


def _install_chromium() -> str:
    """Try ``apt-get install -y chromium``; returns why it could not, or '' on success."""
    if not hasattr(os, "geteuid") or os.geteuid() != 0:
        return "not running as root"
    if shutil.which("apt-get") is None:
        return "apt-get not found"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", "chromium"]):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=900)
        if done.returncode != 0:
            return f"{' '.join(cmd)} exited {done.returncode}: {(done.stderr or done.stdout).strip()[-400:]}"
    return "" if CHROMIUM.exists() else f"apt installed chromium but {CHROMIUM} is missing"


@pytest.fixture(scope="module")
def chromium() -> Path:
    if not CHROMIUM.exists():
        why = _install_chromium()
        if why:
            message = (
                f"{CHROMIUM} is missing and could not be installed ({why}); run "
                "`sudo apt-get update && sudo apt-get install -y chromium` and re-run this test"
            )
            if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
                pytest.fail(message)
            pytest.skip(message)
    return CHROMIUM


def _wait_for_line(log: Path, prefix: str, proc: subprocess.Popen, timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        for line in log.read_text(errors="replace").splitlines():
            if line.startswith(prefix):
                return line[len(prefix):].strip()
        if proc.poll() is not None:
            pytest.fail(f"armada ui exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.5)
    pytest.fail(f"armada ui printed no {prefix!r} line within {timeout_s:.0f} s:\n{log.read_text()[-3000:]}")


def test_armada_ui_shows_the_sweep_with_its_trials(chromium: Path, tmp_path: Path, output_dir: Path) -> None:
    from playwright.sync_api import sync_playwright

    work = tmp_path / "work"
    overrides = [f"paths.work_dir={work}", "name=ui-demo", "teacher.kind=http", "teacher.stand_in=true"]
    cfg = load_config(None, overrides)
    cfg = cfg.model_copy(update={"run_name": "demo-sweep"})
    parent = start_sweep_parent(cfg, "demo-sweep")
    child_ids, trials = [], []
    for i, name in enumerate([*TRIALS, BASELINE]):
        trial = RunTracker.start(cfg, name, "trial", parent_run_id=parent.run_id, tags=standard_tags(cfg, "fp-ui"))
        curve = [0.4 + 0.1 * epoch + 0.05 * i for epoch in range(3)]
        for epoch, value in enumerate(curve):
            trial.log_metrics({"dev_metric": value}, step=epoch)
        trial.log_figure(plot_dev_curves({name: curve}), "plots/dev_curves.png")
        trial.end()
        child_ids.append(trial.run_id)
        trials.append({"run_name": f"demo-sweep/{name}", "params": {"loss.alpha": 0.3 + 0.4 * i},
                       "best_dev_metric": curve[-1], "aligner_dev_metric": 0.9, "dev_curve": curve})
    baseline = trials.pop()
    comparison = {"seeds": [42, 43], "arms": {
        "armada": {"dev_mean": 0.65, "test_mean": 0.82, "test_ci95": 0.04},
        "baseline": {"dev_mean": 0.6, "test_mean": 0.78, "test_ci95": 0.05}},
        "paired": {"gain_points": 4.0, "gain_ci95_low": -1.0, "gain_ci95_high": 9.0, "p_value": 0.2, "pairs": 2}}
    # the description run_tune writes, from the same function
    parent.set_description(sweep_markdown(cfg, trials, trials[1], baseline, comparison,
                                          {"probe_dev_metric": 0.906, "floor_dev_metric": 0.234}, "accuracy"))
    parent.end()

    port = free_port()
    log = tmp_path / "armada-ui.out"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "armada_ray.cli", "ui", "--port", str(port), *overrides],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    try:
        url = _wait_for_line(log, "MLflow UI:", proc, timeout_s=180)
        assert url == f"http://127.0.0.1:{port}"
        runs_url = f"{url}/#/experiments/{parent.experiment_id}/runs{TRAINING_VIEW}"
        assert f"experiment ui-demo: {runs_url}" in log.read_text()

        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
            try:
                page = browser.new_page(viewport={"width": 1400, "height": 900})
                page.goto(runs_url)
                parent_cell = page.locator('[role="gridcell"]').filter(
                    has=page.get_by_text("demo-sweep", exact=True)
                )
                parent_cell.wait_for(timeout=60_000)
                assert page.get_by_text(TRIALS[0], exact=True).count() == 0  # folded under the parent
                parent_cell.locator("button").first.click()  # the parent's "+" expander
                for name in (*TRIALS, BASELINE):  # the baseline and every trial under the parent
                    page.get_by_text(name, exact=True).wait_for(timeout=30_000)
                page.screenshot(path=str(output_dir / "sweep_runs.png"))

                # the parent's description holds the whole comparison as a table
                page.goto(parent.url.replace("http://127.0.0.1:5000", url))
                page.get_by_text("Teacher ceiling", exact=False).first.wait_for(timeout=60_000)
                assert page.get_by_text("Evaluations", exact=True).count() == 0  # the training view, not GenAI's
                more = page.get_by_text("Show more", exact=True)
                if more.count():
                    more.first.click()
                table = page.locator("table").filter(has_text="undistilled baseline")
                table.first.wait_for(timeout=30_000)
                assert table.first.locator("tr").count() == 4  # header + 2 trials + the baseline
                page.get_by_text("paired difference", exact=False).first.wait_for(timeout=30_000)
                page.screenshot(path=str(output_dir / "sweep_description.png"), full_page=True)

                # a trial's figure is served from the explicit <work_dir>/mlartifacts location
                page.goto(f"{url}/#/experiments/{parent.experiment_id}/runs/{child_ids[0]}/artifacts")
                page.get_by_text("plots", exact=True).first.click(timeout=60_000)
                page.get_by_text("dev_curves.png", exact=True).first.click(timeout=30_000)
                page.wait_for_function(
                    "() => [...document.images].some(i => i.complete && i.naturalWidth > 200)", timeout=30_000
                )
                page.screenshot(path=str(output_dir / "trial_artifacts.png"))
            finally:
                browser.close()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)  # what Ctrl-C does: run_ui stops its server and returns
        try:
            code = proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = proc.wait()
    from mlflow import MlflowClient

    # the experiment opens on its training runs, not MLflow 3's GenAI overview
    assert MlflowClient(cfg.tracking_uri).get_experiment(parent.experiment_id).tags[EXPERIMENT_KIND_TAG] == \
        "custom_model_development"
    output = log.read_text(errors="replace")
    assert code == 0, output[-3000:]
    assert "stopping the MLflow UI" in output
    assert not port_in_use("127.0.0.1", port), "the MLflow server outlived armada ui"
