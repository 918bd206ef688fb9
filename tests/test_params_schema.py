"""params.yaml is the one home of defaults: the schema holds none that could disagree with it.

A family's keys have no code default, so a key missing from params.yaml is an error naming
it. A shared section (``trainer``, ``tracking``, ...) may keep a default only where it
equals params.yaml's value. Models reached through a list or a dict (a transform, an
acquired dataset) are items: their defaults are per item (a transform's ``p: 1``), and
params.yaml has no single value for them.
"""

from __future__ import annotations

import copy
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel, TypeAdapter

from conftest import REPO
from visionflow.config import ConfigError, params_model, parse_params
from visionflow.tasks import get_task, task_names

PARAMS = yaml.safe_load((REPO / "params.yaml").read_text())


def _models_in(annotation: Any) -> tuple[list[type[BaseModel]], list[type[BaseModel]]]:
    """(models a field holds directly, models it holds as list or dict items)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation], []
    direct, items = [], []
    origin_args = get_args(annotation)
    is_container = getattr(annotation, "__origin__", None) in (list, dict, tuple)
    for arg in origin_args:
        d, i = _models_in(arg)
        direct += [] if is_container else d
        items += d + i if is_container else i
    return direct, items


def _walk(model: type[BaseModel], node: Any, path: str, found: list[tuple[str, str]],
          seen: set[type[BaseModel]], item: bool = False) -> None:
    """Append (key path, problem) for every default that disagrees with ``node`` (params.yaml there)."""
    seen.add(model)
    for name, field in model.model_fields.items():
        key = field.alias or name
        where = f"{path}.{key}" if path else key
        present = isinstance(node, dict) and key in node
        family_section = not path and key in task_names()  # absent: the family is not configured
        if not field.is_required() and not item and not family_section:
            if not present:
                found.append((where, "has a code default but no key in params.yaml"))
            else:
                adapter = TypeAdapter(field.annotation)
                default = adapter.dump_python(field.get_default(call_default_factory=True), mode="json")
                in_file = adapter.dump_python(adapter.validate_python(node[key]), mode="json")
                if default != in_file:
                    found.append((where, f"code default {default!r} != params.yaml {in_file!r}"))
        direct, items = _models_in(field.annotation)
        for inner in direct:
            _walk(inner, node.get(key) if present else None, where, found, seen, item)
        for inner in items:
            _walk(inner, None, f"{where}[]", found, seen, item=True)


def test_every_code_default_equals_params_yaml():
    found: list[tuple[str, str]] = []
    seen: set[type[BaseModel]] = set()
    _walk(params_model(), PARAMS, "", found, seen)
    assert not found, "\n".join(f"{path}: {problem}" for path, problem in found)
    # the walk reached every family's schema, nested sections included
    assert {get_task(name).params_model for name in task_names()} <= seen
    assert len(seen) > 40


@pytest.mark.parametrize("family", task_names())
def test_a_family_section_has_no_code_default(family):
    """Every key of a family's schema is required (list and dict items aside)."""
    found: list[tuple[str, str]] = []
    _walk(get_task(family).params_model, {}, family, found, set())
    assert all(problem == "has a code default but no key in params.yaml" for _, problem in found)
    assert not found, "\n".join(path for path, _ in found)


def _leaf_paths(node: Any, path: tuple[str, ...]) -> list[tuple[str, ...]]:
    if isinstance(node, dict) and node:
        return [leaf for key, value in node.items() for leaf in _leaf_paths(value, (*path, key))]
    return [path]


FAMILY_KEYS = [path for family in PARAMS["tasks"] for path in _leaf_paths(PARAMS[family], (family,))
               # dicts whose keys are data (splits, class weights, sigmas by name), not schema keys
               if not set(path) & {"splits", "weights", "texture_weights", "sigmas", "kwargs"}]


def test_every_family_key_is_checked():
    assert len(FAMILY_KEYS) > 250
    assert ("stereo", "train", "loss", "beta") in FAMILY_KEYS


@pytest.mark.parametrize("path", FAMILY_KEYS, ids=".".join)
def test_a_missing_family_key_is_an_error_naming_it(path):
    raw = copy.deepcopy(PARAMS)
    node = raw
    for key in path[:-1]:
        node = node[key]
    del node[path[-1]]
    with pytest.raises(ConfigError, match=rf"{'.'.join(path)}: required key is missing"):
        parse_params(raw)


def test_missing_stereo_beta_reads_as_the_issue_says():
    raw = copy.deepcopy(PARAMS)
    del raw["stereo"]["train"]["loss"]["beta"]
    with pytest.raises(ConfigError) as caught:
        parse_params(raw)
    assert str(caught.value) == "params.yaml: stereo.train.loss.beta: required key is missing"


def test_keys_that_once_lived_only_in_code_are_in_params_yaml():
    """Their values are the code defaults in effect before params.yaml held them."""
    params = parse_params(PARAMS)
    assert params.segmentation.synth.crowding == 0.0
    assert params.selfsup.synth.crowding == 0.0
    assert params.stereo.train.self_supervised.batch_size is None  # train.batch_size


def test_gpu_profile_still_validates():
    from visionflow.config import profile_overrides

    assert profile_overrides(REPO / "params.yaml", REPO / "params.gpu.yaml")


# --- checkpoints: plain hyperparameters in, typed sections out, one upgrade function per family ---


def _saved_checkpoint(path, family_name: str, edit=None):
    """A checkpoint of a freshly built tiny module, its hyperparameters passed through ``edit``."""
    from types import SimpleNamespace

    import torch

    from conftest import tiny_params_dict
    from visionflow.models.checkpoints import TASK_KEY

    section = parse_params(tiny_params_dict()).task(family_name)
    data = SimpleNamespace(class_names=["circle", "square"], image_size=64, val_ground_truth=None,
                           category_ids=[3, 7])
    module = get_task(family_name).module(section, data)
    hparams = copy.deepcopy(dict(module.hparams))
    if edit:
        edit(hparams)
    torch.save({"state_dict": module.state_dict(), "hyper_parameters": hparams, TASK_KEY: family_name}, path)
    return module, section


@pytest.mark.parametrize("family", ["stereo", "detection", "instance_segmentation"])
def test_checkpoint_hyperparameters_are_plain_and_rebuild_the_typed_sections(family, tmp_path):
    module, section = _saved_checkpoint(tmp_path / "m.ckpt", family)
    for value in dict(module.hparams).values():  # what torch.load(weights_only=True) can read back
        assert not isinstance(value, BaseModel)
    loaded = get_task(family).load_module(tmp_path / "m.ckpt")
    assert loaded.optim == section.train
    if family != "stereo":
        assert loaded.model_params == section.model


def test_an_old_stereo_checkpoint_is_upgraded_with_the_behaviour_it_was_trained_with(tmp_path):
    def drop_later_keys(hparams):
        del hparams["model"]["argmin_radius"]
        for key in ("beta", "distribution_weight", "distribution_spread"):
            del hparams["optim"]["loss"][key]

    _saved_checkpoint(tmp_path / "old.ckpt", "stereo", drop_later_keys)
    module = get_task("stereo").load_module(tmp_path / "old.ckpt")
    assert module.optim.loss.beta == 1.0 and module.optim.loss.distribution_weight == 0.0
    assert module.net.argmin_radius is None


def test_a_checkpoint_missing_a_key_no_upgrade_knows_names_it(tmp_path):
    from visionflow.models.checkpoints import CheckpointError

    _saved_checkpoint(tmp_path / "odd.ckpt", "stereo", lambda h: h["optim"]["loss"].pop("scale_weights"))
    with pytest.raises(CheckpointError, match=r"optim: loss\.scale_weights: required key is missing"):
        get_task("stereo").load_module(tmp_path / "odd.ckpt")


def test_an_old_detection_checkpoint_is_upgraded(tmp_path):
    _saved_checkpoint(tmp_path / "old.ckpt", "detection", lambda h: h["optim"].pop("grad_clip"))
    assert get_task("detection").load_module(tmp_path / "old.ckpt").optim.grad_clip is None


def test_instance_segmentation_and_box_outputs_do_not_import_centernet():
    """Editing models/centernet.py must concern the detection family only."""
    import ast

    for name in ("mask_rcnn.py", "detector_outputs.py"):
        tree = ast.parse((REPO / "src" / "visionflow" / "models" / name).read_text())
        imported = {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
        assert "visionflow.models.centernet" not in imported and "visionflow.models.detectors" not in imported
