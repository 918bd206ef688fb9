"""dvc.yaml is generated (visionflow.dag): current, exact code deps, cross-family inputs declared."""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import BIN, REPO, merge, write_project_params
from visionflow import dag
from visionflow.config import load_params, parse_params
from visionflow.tasks import task_names

CENTERNET = "src/visionflow/models/centernet.py"


def project_params(**overrides: dict):
    return parse_params(merge(yaml.safe_load((REPO / "params.yaml").read_text()), overrides))


@pytest.fixture(scope="module")
def all_families() -> dict[str, dict[str, dict]]:
    """The rendered stages for every family, with pose's boxes from ground truth and from detection."""
    tasks = task_names()
    return {boxes: dag.stages(project_params(tasks=tasks, pose={"evaluate": {"boxes": boxes}}))
            for boxes in ("ground_truth", "detection")}


def test_the_committed_dvc_yaml_is_what_visionflow_dag_writes():
    assert dag.difference(REPO, load_params(REPO / "params.yaml")) is None


def test_dag_check_names_what_differs_and_the_command(tmp_path, capsys):
    from visionflow.cli import main

    params = tmp_path / "params.yaml"
    params.write_text((REPO / "params.yaml").read_text())
    argv = ["--params", str(params), "dag"]
    assert main([*argv, "--check"]) == 2
    assert capsys.readouterr().err.strip() == f"visionflow: {tmp_path / 'dvc.yaml'}: missing; run `visionflow dag`"
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["written"] is True
    assert main([*argv, "--check"]) == 0 and json.loads(capsys.readouterr().out) == {"dvc.yaml": "up to date"}
    assert main(argv) == 0 and json.loads(capsys.readouterr().out)["written"] is False

    raw = yaml.safe_load(params.read_text())
    raw["tasks"] = [task for task in raw["tasks"] if task != "stereo"]
    params.write_text(yaml.safe_dump(raw, sort_keys=False))
    capsys.readouterr()
    assert main([*argv, "--check"]) == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "stages not in the pipeline: synthesize-stereo" in error
    assert error.endswith("run `visionflow dag`")


def test_stages_are_named_stage_dash_family_and_each_has_its_command(all_families):
    stages = all_families["ground_truth"]
    assert stages["train-pose"]["cmd"] == "visionflow train --task pose"
    assert stages["evaluate-instance_segmentation"]["cmd"] == "visionflow evaluate --task instance_segmentation"
    assert stages["acquire"]["cmd"] == "visionflow acquire --no-progress"
    assert set(stages) == {"acquire", "report"} | {f"{stage}-{task}" for task in task_names()
                                                   for stage in ("synthesize", "augment", "train", "evaluate",
                                                                 "register")}


def test_the_report_comes_after_every_family_and_reads_their_outputs(all_families):
    report = all_families["ground_truth"]["report"]
    assert report["cmd"] == "visionflow report" and report["outs"] == ["reports/index.html"]
    for task in task_names():
        assert {f"metrics/{task}.json", f"models/{task}/registered.json",
                f"src/visionflow/tasks/{task}/__init__.py"} <= set(report["deps"])


def test_outs_keep_their_cache_flags_and_plot_axes(all_families):
    train = all_families["ground_truth"]["train-stereo"]
    assert train["outs"] == ["models/stereo/best.ckpt", "models/stereo/last.ckpt",
                             {"models/stereo/train.json": {"cache": False}}, "reports/stereo/curves.png"]
    assert train["plots"] == [{"plots/stereo/train.csv": {"cache": False, "x": "epoch"}}]
    assert all_families["ground_truth"]["synthesize-pose"]["outs"] == [
        "data/synthetic/pose", {"data/synthetic/pose.json": {"cache": False}}]


def test_imports_anywhere_in_a_file_count_but_not_type_checking_ones():
    source = ("from typing import TYPE_CHECKING\n"
              "from visionflow import paths, viz\n"
              "if TYPE_CHECKING:\n    from visionflow.models import unet\n"
              "def lazy():\n    from visionflow.models.centernet import CenterNet\n"
              "    import visionflow.data.synth.shapes\n")
    where = dag.PACKAGE_ROOT / "stages" / "example.py"
    found = {p.relative_to(dag.PACKAGE_ROOT).as_posix() for p in dag.imported_files(ast.parse(source), where)}
    assert found == {"__init__.py", "paths.py", "viz.py", "models/__init__.py", "models/centernet.py",
                     "data/__init__.py", "data/synth/__init__.py", "data/synth/shapes.py"}


def test_a_lazily_imported_module_is_in_the_closure(all_families):
    # stages/train.py imports visionflow.training inside run(): only the train stages run it.
    for family in task_names():
        assert "src/visionflow/training.py" in all_families["ground_truth"][f"train-{family}"]["deps"]
        assert "src/visionflow/training.py" not in all_families["ground_truth"][f"evaluate-{family}"]["deps"]


def test_glue_modules_are_not_deps_except_where_a_stage_names_one(all_families):
    for name, body in all_families["detection"].items():
        glue = {dep for dep in body["deps"] if dep.removeprefix("src/visionflow/") in dag.GLUE}
        assert glue == ({"src/visionflow/tracking.py"} if name.startswith("register-") else set()), name


def test_synthesize_depends_on_the_generator_not_the_model(all_families):
    stages = all_families["ground_truth"]
    assert "src/visionflow/data/synth/stereo.py" in stages["synthesize-stereo"]["deps"]
    assert "src/visionflow/data/synth/figures_coco.py" in stages["synthesize-pose"]["deps"]
    for family in task_names():
        assert not [dep for dep in stages[f"synthesize-{family}"]["deps"]
                    if dep.startswith("src/visionflow/models/") and dep != "src/visionflow/models/__init__.py"]
        assert "src/visionflow/data/synth/stereo.py" not in stages[f"train-{family}"]["deps"]


@pytest.mark.parametrize("boxes", ["ground_truth", "detection"])
def test_centernet_is_a_dep_of_detection_stages_only(all_families, boxes):
    """Editing models/centernet.py reruns detection (and pose's evaluate when it crops detected
    boxes, since it runs the detector), nothing of stereo, segmentation, selfsup or pose's training."""
    stages = all_families[boxes]
    users = {name for name, body in stages.items() if CENTERNET in body["deps"]}
    expected = {f"{stage}-detection" for stage in ("augment", "train", "evaluate", "register")}
    assert users == expected | ({"evaluate-pose"} if boxes == "detection" else set())


def test_pose_evaluate_depends_on_the_detection_model_only_with_detected_boxes(all_families):
    with_detector, without = all_families["detection"], all_families["ground_truth"]
    assert "models/detection/best.ckpt" in with_detector["evaluate-pose"]["deps"]
    assert "src/visionflow/tasks/detection/__init__.py" in with_detector["evaluate-pose"]["deps"]
    for name in ("train-pose", "register-pose"):
        assert "models/detection/best.ckpt" not in with_detector[name]["deps"]
    assert not [name for name, body in without.items()
                if "models/detection/best.ckpt" in body["deps"] and not name.endswith("-detection")]


def test_a_pretrained_family_gets_a_stage_reading_the_backbone_file():
    stages = dag.stages(project_params(pretrained={"segmentation": "models/selfsup/best.ckpt"}))
    pretrained = stages["pretrained-segmentation"]
    assert pretrained["cmd"] == "visionflow pretrained --task segmentation"
    assert pretrained["deps"][-1] == "models/selfsup/best.ckpt" and pretrained["params"] == ["pretrained"]
    assert pretrained["outs"] == ["pretrained/segmentation/backbone.pt"]
    assert "src/visionflow/models/backbones.py" in pretrained["deps"]
    assert "pretrained/segmentation/backbone.pt" in stages["train-segmentation"]["deps"]
    assert not any(dep.startswith("pretrained/") for dep in stages["train-detection"]["deps"])
    assert list(stages).index("pretrained-segmentation") < list(stages).index("train-segmentation")


def test_no_family_is_named_in_the_dag_code_or_the_flow():
    for path in (dag.PACKAGE_ROOT / "dag.py", *sorted((REPO / "pipelines").glob("*.py"))):
        named = [family for family in task_names() if re.search(rf"(?<![\w]){family}(?![\w])", path.read_text())]
        assert named == [], path


def test_dvc_puts_pose_evaluate_after_detection_training_when_it_crops_detected_boxes(tiny_project, project_env):
    """DVC's own graph of the generated dvc.yaml, in a temp repo (so `dvc status` marks
    evaluate-pose changed when models/detection/best.ckpt changes)."""
    from conftest import tiny_params_dict

    write_project_params(tiny_project, tiny_params_dict(tasks=["detection", "pose"],
                                                        pose={"evaluate": {"boxes": "detection"}}))
    code = ("import json; from dvc.repo import Repo\n"
            "g = Repo('.').index.graph\n"
            "print(json.dumps({s.addressing: sorted(d.addressing for d in g.successors(s)) for s in g}))")
    out = subprocess.run([str(BIN / "python"), "-c", code], cwd=tiny_project, env=project_env,
                         capture_output=True, text=True, check=True)
    graph = json.loads(out.stdout.strip().splitlines()[-1])
    assert graph["evaluate-pose"] == ["acquire", "synthesize-pose", "train-detection", "train-pose"]
    assert "train-detection" not in graph["train-pose"]


def test_dvc_status_after_editing_centernet_or_retraining_detection(tmp_path, project_env):
    """A temp DVC repo with the package copied in, every stage's outputs faked and committed
    (nothing trained): editing models/centernet.py leaves stereo, segmentation and pose's
    training up to date; a new detection model changes pose's evaluate."""
    from conftest import tiny_params_dict

    project = tmp_path / "project"
    shutil.copytree(REPO / "src" / "visionflow", project / "src" / "visionflow",
                    ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "pretrained", project / "pretrained")
    write_project_params(project, tiny_params_dict(tasks=["segmentation", "detection", "pose", "stereo"],
                                                   pose={"evaluate": {"boxes": "detection"}}))
    for body in yaml.safe_load((project / "dvc.yaml").read_text())["stages"].values():
        for entry in body.get("outs", []) + body.get("metrics", []) + body.get("plots", []):
            path = project / (entry if isinstance(entry, str) else next(iter(entry)))
            if path.suffix:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text("fake output\n")
            else:
                path.mkdir(parents=True, exist_ok=True)
                (path / "fake.txt").write_text("fake output\n")

    def dvc(*args: str) -> str:
        result = subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=project_env, capture_output=True,
                                text=True)
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    for command in (["git", "init", "-q"], [str(BIN / "dvc"), "init", "-q"]):
        subprocess.run(command, cwd=project, env=project_env, check=True, capture_output=True)
    dvc("commit", "-f", "-q")
    assert json.loads(dvc("status", "--json")) == {}

    with (project / CENTERNET).open("a") as file:
        file.write("# edited\n")
    changed = set(json.loads(dvc("status", "--json")))
    assert changed == {f"{stage}-detection" for stage in ("augment", "train", "evaluate", "register")} \
        | {"evaluate-pose"}
    (project / CENTERNET).write_text((REPO / CENTERNET).read_text())

    (project / "models" / "detection" / "best.ckpt").write_text("retrained\n")  # train-detection's out
    assert set(json.loads(dvc("status", "--json"))) == {"train-detection", "evaluate-detection",
                                                        "register-detection", "evaluate-pose"}


def test_plain_dvc_repro_refuses_a_dvc_yaml_made_for_other_params(tiny_project, project_env):
    """``tasks`` changed in params.yaml without `visionflow dag`: the first stage `dvc repro`
    runs stops with one line naming the stale dvc.yaml and the fix, and writes nothing."""
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["tasks"] = ["segmentation", "stereo"]  # dvc.yaml still has segmentation's stages only
    (tiny_project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    repro = subprocess.run([str(BIN / "dvc"), "repro", "synthesize-segmentation"], cwd=tiny_project,
                           env=project_env, capture_output=True, text=True, timeout=300)
    assert repro.returncode != 0
    message = [line for line in repro.stderr.splitlines() if line.startswith("visionflow: ")]
    assert len(message) == 1, repro.stderr
    assert "dvc.yaml: out of date" in message[0] and "stages missing: synthesize-stereo" in message[0]
    assert "`visionflow dag`" in message[0] and "`make repro`" in message[0]
    assert not (tiny_project / "data" / "synthetic" / "segmentation").exists()

    regenerated = subprocess.run([str(BIN / "visionflow"), "dag"], cwd=tiny_project, env=project_env,
                                 capture_output=True, text=True, timeout=120)
    assert regenerated.returncode == 0, regenerated.stderr
    repro = subprocess.run([str(BIN / "dvc"), "repro", "synthesize-segmentation"], cwd=tiny_project,
                           env=project_env, capture_output=True, text=True, timeout=300)
    assert repro.returncode == 0, repro.stderr[-3000:]
    assert (tiny_project / "data" / "synthetic" / "segmentation").is_dir()
