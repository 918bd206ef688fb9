"""Typed params: ``params.yaml`` is read here once, validated, and passed down.

Unknown keys, wrong types and out-of-range values raise :class:`ConfigError`
naming the key path (``<family>.train.lr: must be > 0``). Nothing else in
the package reads params.yaml.

This module holds the sections every family shares and the loader. Each task family
declares its own section's schema (``tasks/<family>/params.py``, the family's
``params_model``); :func:`params_model` builds the whole file's model from the family
registry. Every family has the same sections (``synth``, ``data``, ``augment``,
``model``, ``train``, ``evaluate``, ``register``) so that ``dvc.yaml`` can declare each
stage's params once for all families (a ``foreach``); what is inside a section is the
family's own. A family's keys have no code default: ``params.yaml`` is their one home.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, create_model, field_validator,
                      model_validator)

from visionflow.config_errors import (KeyPathError, booleans_taken_as_numbers, describe_errors, error_message,
                                      key_path, unknown_choice)

__all__ = ["ConfigError", "KeyPathError", "unknown_choice"]  # re-exported for the families' params


class ConfigError(ValueError):
    """A params file that cannot be used; the message names the file and key path."""


class Strict(BaseModel):
    """Base for every params section: unknown keys are errors, values are checked on assignment.

    Floats must be finite everywhere (``lr: .inf`` is a typo, not a setting).
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)


# --- shared sections ----------------------------------------------------------------------


def _devices(value: Any) -> int | list[int] | str:
    if value == "auto" or (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        return value
    if isinstance(value, list) and value and all(isinstance(v, int) and v >= 0 for v in value):
        return value
    raise ValueError(f"must be 'auto', a device count >= 1 or a list of device ids (got {value!r})")


class TrainerParams(Strict):
    """Lightning ``Trainer`` settings shared by every family (``trainer:``)."""

    accelerator: Literal["auto", "cpu", "gpu", "cuda", "mps"] = "auto"
    devices: Annotated[Any, BeforeValidator(_devices)] = "auto"  # a count, a list of ids, or "auto"
    num_nodes: int = Field(1, ge=1)
    strategy: str = "auto"
    # auto: 32-true on a CPU, bf16-mixed on CUDA (visionflow.runtime says what each value means)
    precision: Literal["auto", "32-true", "16-mixed", "bf16-mixed", "64-true"] = "auto"
    deterministic: Literal["auto", True, False] = "auto"  # auto: exact on a CPU, never raises on CUDA
    num_workers: Literal["auto"] | Annotated[int, Field(ge=0)] = "auto"  # data loader processes
    progress_bar: bool = True


class TrackingParams(Strict):
    """MLflow (``tracking:``). ``MLFLOW_TRACKING_URI`` in the environment wins over ``uri``."""

    uri: str | None = None  # None: sqlite:///<project>/mlflow.db with artifacts in mlartifacts/


class DatasetSource(Strict):
    """One real dataset to fetch (``acquire.datasets.<name>``)."""

    url: str | None = None  # http(s):// or file://
    path: str | None = None  # a local folder or archive, relative to the project
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    format: Literal["coco", "image_folder", "middlebury", "kitti"] = "coco"  # the files' layout (visionflow.data)

    @model_validator(mode="after")
    def _one_location(self) -> "DatasetSource":
        if (self.url is None) == (self.path is None):
            raise ValueError("give exactly one of url or path")
        if self.url is not None:
            if not self.url.startswith(("http://", "https://", "file://")):
                raise ValueError(f"url must be http(s):// or file://, got {self.url!r}")
            if self.sha256 is None:
                raise ValueError("sha256 is required for a url")
        return self


class AcquireParams(Strict):
    retries: int = Field(3, ge=0)
    timeout_s: float = Field(60.0, gt=0)
    datasets: dict[str, DatasetSource] = Field(default_factory=dict)

    @field_validator("datasets")
    @classmethod
    def _safe_names(cls, datasets: dict[str, DatasetSource]) -> dict[str, DatasetSource]:
        for name in datasets:
            if not name.replace("-", "").replace("_", "").isalnum():
                raise ValueError(f"dataset name {name!r} may hold only letters, digits, - and _")
        return datasets


class TransformSpec(Strict):
    """One albumentations transform: its class name and keyword arguments."""

    name: str
    p: float = Field(1.0, ge=0, le=1)
    kwargs: dict[str, Any] = Field(default_factory=dict)


# The sections below are parts of every family's section: like the family's own keys, their
# keys have no code default (params.yaml holds each family's values).


class DataParams(Strict):
    """Where a family's images come from: its synthetic set or an acquired dataset's name."""

    source: str


class EvaluateParams(Strict):
    overlays: int = Field(ge=0, le=64)
    batch_size: int = Field(ge=1)
    onnx_tolerance: float = Field(gt=0)  # export parity: ONNX metric within this relative difference


class RegisterParams(Strict):
    model_name: str = Field(min_length=1)
    alias: str


class OptimParams(Strict):
    epochs: int = Field(ge=1)
    batch_size: int = Field(ge=1)
    lr: float = Field(gt=0)
    weight_decay: float = Field(ge=0)
    schedule: Literal["constant", "onecycle", "cosine"]
    seed: int
    resume: bool  # continue an interrupted run with the same params from its last checkpoint


def positive_list(values: list[int]) -> list[int]:
    """For a field validator: every entry of a list of counts or sizes >= 1."""
    if any(v < 1 for v in values):
        raise ValueError("every entry must be >= 1")
    return values


def positive_lists(*fields: str) -> Any:
    """A field validator for a schema: every entry of each list in ``fields`` >= 1
    (``_positive = positive_lists("channels", "blocks")``)."""
    return field_validator(*fields)(classmethod(lambda cls, values: positive_list(values)))


def check_ranges(section: BaseModel, ordered: tuple[tuple[str, str], ...] = (),
                 required_splits: tuple[str, ...] = ()) -> None:
    """For a model validator: ``low <= high`` for each ``(low, high)`` pair of keys, and the
    ``splits`` mapping holds ``required_splits``; the error names the keys."""
    for low, high in ordered:
        if getattr(section, low) > getattr(section, high):
            raise ValueError(f"{low} must be <= {high}")
    if any(split not in section.splits for split in required_splits):
        raise ValueError(f"splits needs at least {' and '.join(required_splits)}")


# --- the whole file -----------------------------------------------------------------------


class Params(Strict):
    """The shared keys; :func:`params_model` adds one optional field per registered family."""

    tasks: list[str] = Field(min_length=1)
    trainer: TrainerParams = Field(default_factory=TrainerParams)
    tracking: TrackingParams = Field(default_factory=TrackingParams)
    acquire: AcquireParams = Field(default_factory=AcquireParams)
    # Families whose training starts from a pretrained backbone: family -> a backbone file or a
    # checkpoint holding a U-Net encoder, e.g. {<family>: models/<other family>/best.ckpt}.
    pretrained: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _enabled_tasks_configured(self) -> "Params":
        from visionflow.tasks import task_names

        families = task_names()
        for index, task in enumerate(self.tasks):
            if task not in families:
                raise KeyPathError(("tasks", index), unknown_choice(task, families, "task family"))
            if getattr(self, task) is None:
                raise KeyPathError((task,), "enabled in tasks but has no section")
        for task, source in self.pretrained.items():
            if task not in self.tasks:
                raise KeyPathError(("pretrained", task), unknown_choice(task, self.tasks, "enabled task family"))
            if not source or Path(source).is_absolute() or ".." in Path(source).parts:
                raise KeyPathError(("pretrained", task), f"must be a path inside the project, got {source!r}")
            if Path(source).parts[:2] == ("models", task):
                raise KeyPathError(("pretrained", task), f"{source} is {task}'s own output: a cycle")
        return self

    def task(self, name: str) -> Any:
        """The params section of an enabled task family (its ``params_model``)."""
        if name not in self.tasks:
            raise ConfigError(f"task {name!r} is not enabled; tasks: {', '.join(self.tasks)}")
        return getattr(self, name)


def params_model() -> type[Params]:
    """:class:`Params` with one optional section per registered family, typed by its ``params_model``."""
    from visionflow.tasks import task_names

    return _params_model(tuple(task_names()))


@functools.cache
def _params_model(families: tuple[str, ...]) -> type[Params]:
    from visionflow.tasks import get_task

    sections: dict[str, Any] = {name: (get_task(name).params_model | None, None) for name in families}
    return create_model("Params", __base__=Params, __module__=__name__, **sections)


def parse_params(raw: Any, source: str = "params.yaml") -> Params:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: must be a mapping of keys to values")
    model = params_model()
    try:
        params = model.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(describe_errors(source, exc, model)) from None
    coerced = booleans_taken_as_numbers(raw, params.model_dump(by_alias=True))
    if coerced:
        raise ConfigError(error_message(source, [f"{key_path(loc)}: must be a number, not a boolean"
                                                 for loc in coerced]))
    return params


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate a params file; errors name the file and the key path."""
    return parse_params(_read_yaml(path), str(path))


def _check_unique_keys(node: yaml.Node, path: str, loc: tuple = ()) -> None:
    """Refuse a mapping that repeats a key: YAML loaders keep the last, DVC calls the file corrupt."""
    if isinstance(node, yaml.MappingNode):
        seen: dict[Any, int] = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key != "<<":
                if key in seen:
                    raise ConfigError(f"{path}: line {line}: duplicate key {key_path((*loc, key))} "
                                      f"(first at line {seen[key]})")
                seen[key] = line
            _check_unique_keys(value_node, path, (*loc, key))
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            _check_unique_keys(item, path, (*loc, i))


def _read_yaml(path: str | Path) -> Any:
    path = Path(path)
    try:
        text = path.read_text()
        _check_unique_keys(yaml.compose(text, Loader=yaml.SafeLoader), str(path))
        return yaml.safe_load(text)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {' '.join(str(exc).split())}") from None


def read_yaml_mapping(path: str | Path) -> dict:
    """A YAML file whose top level is a mapping; errors name the file."""
    data = _read_yaml(path)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of params keys at the top level")
    return data


def profile_overrides(params_path: str | Path, profile_path: str | Path) -> dict[str, Any]:
    """The leaf keys a profile (``params.gpu.yaml``) sets, as ``{"a.b.c": value}``.

    Every key must already exist in ``params_path`` (a typo would otherwise be a new key that
    nothing reads), and the merged params must validate; errors name the profile and the key.
    Lists are leaves: a profile replaces a list whole.
    """
    base, overlay = read_yaml_mapping(params_path), read_yaml_mapping(profile_path)
    flat: dict[str, Any] = {}

    def walk(node: dict, target: Any, prefix: str) -> None:
        for key, value in node.items():
            path = f"{prefix}{key}"
            if not isinstance(target, dict) or key not in target:
                raise ConfigError(f"{profile_path}: {path}: not a key of {params_path}")
            if isinstance(value, dict) and isinstance(target[key], dict):
                walk(value, target[key], path + ".")
            else:
                flat[path] = value

    walk(overlay, base, "")
    parse_params(merge_overrides(base, flat), f"{params_path} + {profile_path}")
    return flat


def merge_overrides(params: dict, overrides: dict[str, Any]) -> dict:
    """A copy of raw ``params`` with dotted ``overrides`` set."""
    merged = copy.deepcopy(params)
    for dotted, value in overrides.items():
        *parents, leaf = dotted.split(".")
        node = merged
        for key in parents:
            node = node[key]
        node[leaf] = value
    return merged


def params_hash(section: Any) -> str:
    """A short, stable hash of a params section (for tags and resume keys)."""
    data = section.model_dump(mode="json") if isinstance(section, BaseModel) else section
    blob = json.dumps(data, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:12]
