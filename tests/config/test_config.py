"""Config system: YAML + dotted overrides, closed sections, errors that name key, value and what is allowed."""

from __future__ import annotations

import pytest
import yaml
from _paths import JOBS

from armada_ray.config import ArmadaConfig, ConfigError, apply_overrides, flatten, load_config, parse_override


def test_overrides_parse_numbers_booleans_lists_and_split_on_first_equals():
    assert parse_override("loss.alpha=0.3") == (["loss", "alpha"], 0.3)
    assert parse_override("train.epochs=3") == (["train", "epochs"], 3)
    assert parse_override("resume=true") == (["resume"], True)
    assert parse_override("student.lora.target_modules=[q_proj,k_proj]")[1] == ["q_proj", "k_proj"]
    assert parse_override("teacher.prompt_template=a=b {text}")[1] == "a=b {text}"
    with pytest.raises(ConfigError, match="expected key=value"):
        parse_override("--alpha")


def test_overrides_apply_on_yaml_without_mutating_it():
    base = {"loss": {"alpha": 0.5, "beta": 1.0}}
    out = apply_overrides(base, ["loss.alpha=0.2", "train.epochs=1"])
    assert out == {"loss": {"alpha": 0.2, "beta": 1.0}, "train": {"epochs": 1}}
    assert base["loss"]["alpha"] == 0.5


def test_every_shipped_job_config_validates():
    # recursive: every config we ship is checked (runtime_env.yaml is Ray's runtime env, not an armada config)
    files = sorted(f for f in JOBS.rglob("*.yaml") if f.name != "runtime_env.yaml")
    assert files, "no job configs found"
    for f in files:
        cfg = load_config(f)
        assert isinstance(cfg, ArmadaConfig), f


def test_misspelled_key_suggests_the_right_one():
    with pytest.raises(ConfigError) as e:
        load_config(JOBS / "demo.yaml", ["loss.alpah=0.3"])
    line = e.value.problems[0]
    assert "loss.alpah" in line and "did you mean loss.alpha" in line and "0.3" in line


def test_every_problem_is_reported_together_with_value_and_allowed():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["loss.alpha=1.5", "train.zero_stage=7", "teacher.kind=clip", "loss.manifold=l1"])
    text = "\n".join(e.value.problems)
    assert "loss.alpha=1.5" in text and "less than or equal to 1" in text
    assert "train.zero_stage=7" in text and "0, 1, 2 or 3" in text
    assert "teacher.kind" in text and "'clip'" in text
    assert "loss.manifold='l1'" in text and "cosine" in text


def test_discriminated_teacher_union_and_its_unknown_keys():
    cfg = load_config(None, ["teacher.kind=diffusion", "teacher.steps=5"])
    assert cfg.teacher.kind == "diffusion" and cfg.teacher.steps == 5
    with pytest.raises(ConfigError, match=r"teacher.endpiont.*did you mean teacher.endpoint"):
        load_config(None, ["teacher.kind=http", "teacher.endpiont=http://x"])


def test_search_space_domains_are_checked():
    with pytest.raises(ConfigError, match="low < high"):
        load_config(None, ["tune.search_space={loss.alpha: {type: uniform, low: 1, high: 0}}"])


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("loss: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_name_defaults_to_file_stem_and_paths_derive_from_work_dir(tmp_path):
    f = tmp_path / "myjob.yaml"
    f.write_text(yaml.safe_dump({"paths": {"work_dir": str(tmp_path / "w")}}))
    cfg = load_config(f)
    assert cfg.name == "myjob" and cfg.experiment == "myjob"
    assert cfg.cache_root == (tmp_path / "w" / "cache").resolve()
    assert cfg.tracking_uri == f"sqlite:///{(tmp_path / 'w' / 'mlflow.db').resolve()}"


def test_flatten_has_no_secret_values():
    cfg = load_config(None, ["teacher.kind=http", "teacher.api_key_env=MY_KEY"])
    flat = flatten(cfg)
    assert flat["teacher.api_key_env"] == "MY_KEY"  # the variable's name, never its value
    assert flat["loss.alpha"] == 0.5


def test_relative_paths_are_made_absolute_once_on_load_and_stay_so_in_another_cwd(tmp_path, monkeypatch):
    """Issue 13: a Ray worker resolved ./armada_runs against its own working directory (Ray's artifacts folder)."""
    from armada_ray.config import ArmadaConfig

    monkeypatch.chdir(tmp_path)
    cfg = load_config(None, ["cache.dir=./c", "task.data_dir=data", "eval.checkpoint=ck"])
    assert cfg.paths.work_dir == tmp_path / "armada_runs" and cfg.paths.work_dir.is_absolute()
    assert cfg.cache.dir == tmp_path / "c" and cfg.task.data_dir == tmp_path / "data"
    assert cfg.eval.checkpoint == str(tmp_path / "ck")  # a string: it may also be a storage URI
    assert cfg.tracking_uri == f"sqlite:///{tmp_path / 'armada_runs' / 'mlflow.db'}"
    # what the worker receives (the dumped config) validates to the same folders in any working directory
    other = tmp_path / "elsewhere"
    other.mkdir()
    monkeypatch.chdir(other)
    again = ArmadaConfig.model_validate(cfg.model_dump(mode="json"))
    assert again.work_dir == cfg.work_dir and again.cache_root == tmp_path / "c"


def test_a_key_inside_the_endpoint_url_is_never_saved(tmp_path):
    from armada_ray.config import save_config

    cfg = load_config(None, ["teacher.endpoint=http://user:sk-SECRET-123@127.0.0.1:9/v1", f"paths.work_dir={tmp_path}"])
    text = save_config(cfg, tmp_path).read_text()
    assert "sk-SECRET-123" not in text and "http://user:***@127.0.0.1:9/v1" in text
    assert cfg.teacher.endpoint.endswith("sk-SECRET-123@127.0.0.1:9/v1")  # the live config still reaches the API


@pytest.mark.parametrize("override, needle", [
    ("loss.beta=.inf", "config error: loss.beta=inf: Input should be a finite number"),
    ("train.lr=inf", "config error: train.lr='inf': Input should be a finite number"),
    ("scaling.cpus_per_worker=nan", "scaling.cpus_per_worker='nan': Input should be a finite number"),
    ("train.epochs=true", "config error: train.epochs=true (a boolean, not a number): Input should be a valid integer"),
    ("student.freeze_layers_below=3", "config error: student: student.freeze_layers_below applies to full "
                                      "fine-tuning only"),
])
def test_values_that_must_be_refused_on_load(override, needle):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert needle in str(err.value)


@pytest.mark.parametrize("content, needle", [
    (b"loss:\n  alpha: 0.3\nloss:\n  beta: 1\n", "key 'loss' appears twice in one mapping (lines 1 and 3)"),
    (b"", "is empty; omit --config to run on the defaults"),
    (b"\x89PNG\r\n\x1a\n\x00\xff", "is not UTF-8 text"),
    (b"loss: [1, 2\n", "not valid YAML (expected ',' or ']', but got '<stream end>' at line 2, column 1)"),
])
def test_config_files_that_are_not_configs_are_named_in_one_line(tmp_path, content, needle):
    path = tmp_path / "c.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert needle in str(err.value) and len(err.value.problems) == 1 and "\n" not in err.value.problems[0]
    with pytest.raises(ConfigError, match="is a directory; give a YAML file"):
        load_config(tmp_path)


def test_a_local_run_asking_for_more_cpus_than_the_machine_has_is_refused(monkeypatch):
    """Issue 13: scaling.num_workers=1000 on 2 cores printed "0.0 available" and then hung until killed."""
    from armada_ray.plan import check_cluster, machine_resources
    from armada_ray.resources import cluster_view

    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    here = cluster_view(load_config(None, []))  # no RAY_ADDRESS, no cluster_spec: this machine
    assert here["source"] == machine_resources()["source"]
    check = check_cluster(load_config(None, ["scaling.num_workers=1000"]), "train", here)
    assert check.status == "FAIL" and "scaling.num_workers=1000" in check.detail and "this machine" in check.detail
    assert check_cluster(load_config(None, []), "train", here).status == "ok"


def test_endpoint_must_be_a_url_and_its_key_never_echoes():
    with pytest.raises(ConfigError, match="'not-a-url' is not an http\\(s\\) URL with a host"):
        load_config(None, ["teacher.endpoint=not-a-url"])
    for bad in (["teacher.endpoint=ftp://u:sk-SECRET-9@h/v1"], ["teacher.endpointt=http://u:sk-SECRET-9@h/v1"]):
        with pytest.raises(ConfigError) as err:
            load_config(None, bad)
        assert "sk-SECRET-9" not in str(err.value) and "u:***@h" in str(err.value)
    with pytest.raises(ConfigError, match="give the key one way"):
        load_config(None, ["teacher.endpoint=http://u:sk-SECRET-9@h/v1", "teacher.api_key_env=MY_KEY"])
