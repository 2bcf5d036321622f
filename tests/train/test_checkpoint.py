"""The checkpoint store (armada_ray/train/checkpoint.py): one layout, listed and read through pyarrow.fs, so a local
folder and a storage URI behave the same. URIs here are ``file://`` (pyarrow's local filesystem through the URI
code path); an object store cannot run on this machine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from _paths import JOBS

from armada_ray.config import ConfigError, load_config
from armada_ray.train import checkpoint as ckpt


def _fake_run(root: Path) -> None:
    """A run's Ray Train folder as Ray leaves it: two checkpoints with metrics, one still being written."""
    for epoch, dev in ((1, 0.75), (2, 0.5)):  # the best is not the latest
        d = root / "train" / f"checkpoint_00000{epoch - 1}"
        d.mkdir(parents=True)
        (d / "metrics.json").write_text(json.dumps({"epoch": epoch, "dev_metric": dev}))
        (d / "state.json").write_text(json.dumps({"epoch": epoch}))
        (d / "deepspeed" / ckpt.CKPT_TAG).mkdir(parents=True)
        (d / "deepspeed" / ckpt.CKPT_TAG / "shard.pt").write_bytes(b"x" * 10)
    (root / "train" / "checkpoint_000002").mkdir()  # no metrics.json yet: not listed
    (root / "train" / "notes.txt").write_text("not a checkpoint")


@pytest.mark.parametrize("as_uri", [False, True])
def test_listing_and_reading_are_the_same_for_a_folder_and_a_uri(tmp_path, as_uri):
    _fake_run(tmp_path / "ray")
    storage = f"file://{tmp_path}/ray" if as_uri else str(tmp_path / "ray")
    found = ckpt.list_checkpoints(storage)
    assert [c.epoch for c in found] == [1, 2]
    assert all(c.location.startswith(storage) for c in found)
    assert found[0].location == ckpt.join(storage, "train", "checkpoint_000000")
    assert ckpt.read_json(found[1].location, "state.json") == {"epoch": 2}
    assert ckpt.read_json(found[1].location, "task.json") is None
    assert ckpt.exists(found[1].location) and not ckpt.exists(ckpt.join(storage, "nope"))
    # the best is the highest dev_metric (what Ray Train's CheckpointConfig keeps), not the latest
    best = ckpt.best_of(found)
    assert best is not None and (best.epoch, best.dev_metric) == (1, 0.75)
    assert ckpt.list_checkpoints(ckpt.join(storage, "missing")) == []


def test_a_uri_checkpoint_is_copied_once_to_a_local_folder(tmp_path):
    _fake_run(tmp_path / "ray")
    uri = f"file://{tmp_path}/ray/train/checkpoint_000001"
    local = ckpt.local_checkpoint(uri, tmp_path / "copies")
    assert local.is_dir() and local.is_relative_to(tmp_path / "copies") and local.name == "checkpoint_000001"
    assert (local / "deepspeed" / ckpt.CKPT_TAG / "shard.pt").read_bytes() == b"x" * 10
    assert not list((tmp_path / "copies").rglob("*.partial"))
    (local / "marker").write_text("kept")  # a second call reuses the copy
    assert ckpt.local_checkpoint(uri, tmp_path / "copies") == local and (local / "marker").exists()
    plain = tmp_path / "ray" / "train" / "checkpoint_000001"
    assert ckpt.local_checkpoint(str(plain)) == plain  # a local folder is used where it is


def test_paths_storage_defaults_to_the_work_dir_and_keeps_uris(tmp_path):
    cfg = load_config(JOBS / "demo.yaml", [f"paths.work_dir={tmp_path}", "run_name=r1"])
    assert ckpt.run_storage(cfg) == str(cfg.run_dir / "ray")  # the layout every earlier run used
    cfg = load_config(JOBS / "demo.yaml", [f"paths.work_dir={tmp_path}", "run_name=sweep/trial-1",
                                           "paths.storage=s3://bucket/team/"])
    assert ckpt.run_storage(cfg) == f"s3://bucket/team/{cfg.experiment}/sweep/trial-1/ray"
    assert ckpt.run_name_of(ckpt.run_storage(cfg) + "/train/checkpoint_000003") == "trial-1"
    with pytest.raises(ConfigError, match="paths.storage"):
        load_config(JOBS / "demo.yaml", ["paths.storage=s3://"])
