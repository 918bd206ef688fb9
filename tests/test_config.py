"""Params: errors name the key path; dvc.yaml declares exactly what the stages read."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest
import yaml

from conftest import REPO, tiny_params_dict
from visionflow.config import ConfigError, load_params, parse_params
from visionflow.stages import STAGE_PARAMS, TASK_STAGES, stage_params
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


def test_dvc_yaml_declares_exactly_the_params_each_stage_reads():
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    assert set(dvc) == {"acquire", "pretrained", *TASK_STAGES}
    for stage, definition in dvc.items():
        body = definition.get("do", definition)
        declared = [key.replace("${item}", "{task}") for key in body["params"]]
        assert tuple(declared) == STAGE_PARAMS[stage], stage
        for task in params["tasks"] if "foreach" in definition else [None]:
            for key in stage_params(stage, task):
                _lookup(params, key)


def test_dvc_yaml_paths_match_the_code():
    from visionflow.paths import RAW_DIR, TaskPaths

    dvc_text = (REPO / "dvc.yaml").read_text()
    paths = TaskPaths("${item}")
    for path in (paths.synthetic, paths.synthetic_manifest, paths.augment_preview, paths.augment_check,
                 paths.best_checkpoint,
                 paths.last_checkpoint, paths.train_summary, paths.train_curves_csv,
                 paths.train_curves_png, paths.metrics, paths.eval_plots, paths.eval_reports,
                 paths.registered, paths.pretrained_dir, RAW_DIR):
        assert re.search(rf"- {re.escape(path.as_posix())}(:|$)", dvc_text, re.MULTILINE), path


# Imported by every stage but not shaping any output: a change to them reruns nothing.
GLUE_MODULES = {"__init__.py", "env.py", "config.py", "paths.py", "tracking.py", "cli.py",
                "tasks/__init__.py"}
PACKAGE_ROOT = REPO / "src" / "visionflow"


def _visionflow_imports(source: Path | ast.AST, skip_functions: tuple[str, ...] = ()) -> set[Path]:
    """Files of ``visionflow`` that a file (or one function's AST) imports, including imports
    inside functions, except inside functions named in ``skip_functions``."""
    tree = ast.parse(source.read_text()) if isinstance(source, Path) else source
    skipped = {id(inner) for node in ast.walk(tree)
               if isinstance(node, ast.FunctionDef) and node.name in skip_functions
               for inner in ast.walk(node)}
    found = set()
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else []
        if isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        for name in names:
            if not name.startswith("visionflow"):
                continue
            base = PACKAGE_ROOT.parent / name.replace(".", "/")
            for candidate in (base.with_suffix(".py"), base / "__init__.py"):
                if candidate.is_file():
                    found.add(candidate)
    return found


def _reach(start: set[Path], skip_functions: tuple[str, ...] = ()) -> set[Path]:
    """``start`` and every visionflow file they import, transitively (glue modules not followed)."""
    reached, todo = set(), list(start)
    while todo:
        path = todo.pop()
        if path not in reached:
            reached.add(path)
            if path.relative_to(PACKAGE_ROOT).as_posix() not in GLUE_MODULES:
                todo += _visionflow_imports(path, skip_functions)
    return reached


def _code_deps(stage: str, task: str) -> list[Path]:
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    deps = stages[stage]["do"]["deps"] if "do" in stages[stage] else stages[stage]["deps"]
    return [REPO / dep.replace("${item}", task) for dep in deps if dep.startswith("src/")]


def _uncovered(reached: set[Path], deps: list[Path]) -> list[str]:
    return [path.relative_to(PACKAGE_ROOT).as_posix() for path in sorted(reached)
            if path.relative_to(PACKAGE_ROOT).as_posix() not in GLUE_MODULES
            and not any(path == dep or dep in path.parents for dep in deps)]


def _train_reach(task: str) -> set[Path]:
    # A family's synthesize() runs in the synthesize stage; training sees the generator's
    # work only through the dataset's manifest, a data dep.
    return _reach({*(PACKAGE_ROOT / "tasks" / task).glob("*.py"), PACKAGE_ROOT / "training.py"},
                  skip_functions=("synthesize",))


@pytest.mark.parametrize("task", TASK_FAMILIES)
def test_train_code_deps_cover_everything_the_family_imports(task):
    """Editing any module a family's code reaches must rerun its training."""
    assert _uncovered(_train_reach(task), _code_deps("train", task)) == []


@pytest.mark.parametrize("task", TASK_FAMILIES)
def test_synthesize_code_deps_cover_the_generator(task):
    """Editing the family's generator, or the code it writes files with, reruns synthesize."""
    import inspect

    from visionflow.tasks import get_task

    synthesize = type(get_task(task)).synthesize
    defined_in = Path(inspect.getfile(synthesize)).resolve()  # its other methods are not followed
    generator = _reach(_visionflow_imports(ast.parse(inspect.cleandoc("\n" + inspect.getsource(synthesize)))))
    assert _uncovered({defined_in, *generator}, _code_deps("synthesize", task)) == []


@pytest.mark.parametrize("stage", ["acquire", "pretrained", *TASK_STAGES])
def test_stage_code_deps_cover_the_stage_module(stage):
    """``stages/<stage>.py`` writes what the stage leaves behind (the synthetic manifest, the
    metrics file, the registration record), so editing it, or what it imports, reruns the stage."""
    module = PACKAGE_ROOT / "stages" / f"{stage}.py"
    for task in TASK_FAMILIES if stage in TASK_STAGES else [""]:
        deps = _code_deps(stage, task)
        assert module in deps, (stage, task)
        assert _uncovered(_reach({module}), deps) == [], (stage, task)


def test_acquire_code_deps_cover_what_it_imports():
    assert _uncovered(_reach({PACKAGE_ROOT / "data" / "acquire.py"}), _code_deps("acquire", "")) == []


def test_shared_code_deps_hold_no_single_family_module():
    """A module only one family uses lives in that family's package, so editing it reruns only
    that family's stages; what every family depends on is used by two families at least, or
    by a family and the acquire stage (the Middlebury/KITTI readers in data/)."""
    users: dict[Path, set[str]] = {}
    for task in TASK_FAMILIES:
        for path in _train_reach(task):
            users.setdefault(path, set()).add(task)
    for path in _reach({PACKAGE_ROOT / "data" / "acquire.py"}):
        users.setdefault(path, set()).add("acquire")
    shared_deps = [dep for stage in ("augment", "train", "evaluate", "register")
                   for dep in _code_deps(stage, "${item}") if "${item}" not in dep.as_posix()]
    single = {path.relative_to(PACKAGE_ROOT).as_posix(): sorted(names) for path, names in users.items()
              if len(names) == 1 and any(path == dep or dep in path.parents for dep in shared_deps)}
    assert single == {}


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
