"""Params: errors name the key path; dvc.yaml declares exactly what the stages read."""

from __future__ import annotations

import re

import pytest
import yaml

from conftest import REPO, tiny_params_dict
from visionflow.config import ConfigError, load_params, parse_params
from visionflow.stages import TASK_STAGES, stage_params
from visionflow.tasks import task_names

TASK_FAMILIES = tuple(task_names())


def error_for(**overrides) -> str:
    with pytest.raises(ConfigError) as caught:
        parse_params(tiny_params_dict(**overrides))
    return str(caught.value)


def test_the_project_params_load():
    params = load_params(REPO / "params.yaml")
    assert params.tasks[0] == "segmentation" and set(params.tasks) <= set(TASK_FAMILIES)
    assert {"pose", "stereo", "selfsup"} <= set(params.tasks)
    assert params.segmentation.registry.model_name == "visionflow-segmentation"


@pytest.mark.parametrize("overrides, expected", [
    ({"segmentation": {"train": {"lr": -1}}}, "segmentation.train.lr: must be > 0"),
    ({"segmentation": {"train": {"epochs": "many"}}}, "segmentation.train.epochs: input should be a valid integer"),
    ({"segmentation": {"train": {"lrate": 0.1}}}, "segmentation.train.lrate: unknown key 'lrate' (did you mean 'lr'?)"),
    ({"segmentation": {"modle": {}}}, "segmentation.modle: unknown key 'modle' (did you mean 'model'?)"),
    ({"trainer": {"devices": "two"}}, "trainer.devices: must be 'auto', a device count"),
    ({"segmentation": {"synth": {"classes": ["circle", "hexagn"]}}}, "segmentation.synth.classes: unknown shape 'hexagn'"),
    ({"segmentation": {"synth": {"min_objects": 5, "max_objects": 2}}}, "segmentation.synth: min_objects must be <= max_objects"),
    ({"segmentation": {"augment": [{"name": "HorizontalFlip", "prob": 0.5}]}}, "segmentation.augment[0].prob: unknown key"),
    ({"acquire": {"datasets": {"real": {"url": "https://example.com/x.tar.gz"}}}}, "acquire.datasets.real: sha256 is required for a url"),
    ({"tasks": ["segmentaton"]}, "tasks[0]: unknown task family 'segmentaton' (did you mean 'segmentation'?)"),
    ({"segmentation": {"train": {"lr": float("inf")}}}, "segmentation.train.lr: input should be a finite number"),
    ({"segmentation": {"train": {"lr": float("nan")}}}, "segmentation.train.lr: input should be a finite number"),
    ({"stereo": {"augment": {"scale": [0.5, float("inf")]}}}, "stereo.augment.scale[1]: input should be a finite"),
    ({"segmentation": {"train": {"epochs": True}}}, "segmentation.train.epochs: must be a number, not a boolean"),
    ({"segmentation": {"train": {"lr": True}}}, "segmentation.train.lr: must be a number, not a boolean"),
    ({"selfsup": {"evaluate": {"label_fractions": [True, 1.0]}}},
     "selfsup.evaluate.label_fractions: must be a number, not a boolean"),
])
def test_bad_values_name_the_key(overrides, expected):
    assert expected in error_for(**overrides)


def test_every_error_is_reported_at_once():
    message = error_for(segmentation={"train": {"lr": 0, "batch_size": 0}})
    assert "segmentation.train.lr" in message and "segmentation.train.batch_size" in message


def test_one_error_is_one_line_naming_the_file():
    with pytest.raises(ConfigError) as caught:
        parse_params(tiny_params_dict(segmentation={"train": {"lr": 0}}), "params.yaml")
    assert str(caught.value) == "params.yaml: segmentation.train.lr: must be > 0.0 (got 0)"


def test_booleans_stay_valid_where_booleans_belong():
    params = parse_params(tiny_params_dict(trainer={"deterministic": True, "progress_bar": False}))
    assert params.trainer.deterministic is True and params.trainer.progress_bar is False


def test_a_duplicate_key_names_the_file_key_and_line(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("tasks: [segmentation]\nsegmentation:\n  train:\n    epochs: 1\n    lr: 0.1\n    epochs: 2\n")
    with pytest.raises(ConfigError) as caught:
        load_params(path)
    assert str(caught.value) == f"{path}: line 6: duplicate key segmentation.train.epochs (first at line 4)"


def test_unreadable_and_non_yaml_files_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.yaml: cannot read"):
        load_params(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tasks: [segmentation\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_params(bad)


def _lookup(tree: dict, dotted: str) -> object:
    node = tree
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"{dotted} missing from params.yaml"
        node = node[part]
    return node


def _dvc_stages() -> dict[str, dict]:
    return yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]


def test_dvc_yaml_declares_exactly_the_params_each_stage_reads():
    """dvc.yaml is generated (tests/test_dag.py checks it is current); its params keys are
    visionflow.stages.STAGE_PARAMS's, and each names a key of params.yaml."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    expected = {"acquire", "report"} | {f"{stage}-{task}" for task in params["tasks"] for stage in TASK_STAGES} \
        | {f"pretrained-{task}" for task in params["pretrained"]}
    stages = _dvc_stages()
    assert set(stages) == expected
    for name, body in stages.items():
        stage, _, task = name.partition("-")
        assert body["params"] == stage_params(stage, task or None), name
        for key in body["params"]:
            _lookup(params, key)


def test_dvc_yaml_paths_match_the_code():
    from visionflow.paths import RAW_DIR, TaskPaths

    dvc_text = (REPO / "dvc.yaml").read_text()
    for task in yaml.safe_load((REPO / "params.yaml").read_text())["tasks"]:
        paths = TaskPaths(task)
        for path in (paths.synthetic, paths.synthetic_manifest, paths.augment_preview, paths.augment_check,
                     paths.best_checkpoint, paths.last_checkpoint, paths.train_summary, paths.train_curves_csv,
                     paths.train_curves_png, paths.metrics, paths.eval_plots, paths.eval_reports,
                     paths.registered, paths.onnx_dir, RAW_DIR):
            assert re.search(rf"- {re.escape(path.as_posix())}(:|$)", dvc_text, re.MULTILINE), path


def test_dvc_yaml_code_deps_are_files_of_the_package():
    for name, body in _dvc_stages().items():
        code = [dep for dep in body["deps"] if dep.startswith("src/")]
        assert code and f"src/visionflow/stages/{name.partition('-')[0]}.py" in code, name
        assert all((REPO / dep).is_file() for dep in code), name


def test_the_gpu_profile_names_only_existing_keys_and_validates():
    from visionflow.config import profile_overrides

    flat = profile_overrides(REPO / "params.yaml", REPO / "params.gpu.yaml")
    assert flat["trainer.deterministic"] is False and flat["stereo.train.epochs"] == 16
    assert "detection.synth.splits.train" in flat and "detection.synth.splits.test" not in flat  # tests compare


@pytest.mark.parametrize("profile, error", [
    ("segmentation:\n  trian: {epochs: 3}\n", "segmentation.trian: not a key of"),
    ("segmentation:\n  train: {epochs: 0}\n", "segmentation.train.epochs: must be >= 1"),
    ("- a list\n", "expected a mapping"),
])
def test_a_bad_profile_is_an_error_naming_the_key(tmp_path, profile, error):
    from visionflow.config import ConfigError, profile_overrides

    (tmp_path / "p.yaml").write_text(profile)
    with pytest.raises(ConfigError, match=error):
        profile_overrides(REPO / "params.yaml", tmp_path / "p.yaml")


def test_profile_prints_dvc_exp_run_flags(capsys):
    from visionflow.cli import main

    assert main(["--params", str(REPO / "params.yaml"), "profile", str(REPO / "params.gpu.yaml")]) == 0
    flags = capsys.readouterr().out.split()
    assert flags[0] == "-S" and "stereo.synth.splits.train=4000" in flags and len(flags) % 2 == 0
