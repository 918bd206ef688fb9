"""MLflow: where runs go, how they are tagged, and the model registry's champion alias.

The only module that imports mlflow. One experiment per task family
(``visionflow-<task>``); each stage run is tagged with the git commit, the DVC
stage and a hash of the params the stage reads. Evaluate and register runs are
children of the train run that made the model, so the MLflow UI shows them
nested under it.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from visionflow.config import TrackingParams, params_hash
from visionflow.paths import MLFLOW_ARTIFACTS, MLFLOW_DB

TAG_TASK = "visionflow.task"
TAG_STAGE = "visionflow.stage"
TAG_DVC_STAGE = "visionflow.dvc_stage"
TAG_PARAMS_HASH = "visionflow.params_hash"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_METRIC_PREFIX = "visionflow.metric."


def tracking_uri(params: TrackingParams, root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri``, else a SQLite file in the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.uri or f"sqlite:///{(root / MLFLOW_DB).resolve()}"


def git_commit(root: Path) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True,
                             timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return out.stdout.strip() if out.returncode == 0 else "unknown"


def experiment_name(task: str) -> str:
    return f"visionflow-{task}"


def use_experiment(task: str, params: TrackingParams, root: Path) -> str:
    """Point mlflow at the tracking store and return the family's experiment id (created once).

    With the embedded SQLite store, artifacts go to ``<root>/mlartifacts/<task>``
    whatever the cwd, since MLflow fixes an experiment's artifact location at
    creation.
    """
    import mlflow

    uri = tracking_uri(params, root)
    mlflow.set_tracking_uri(uri)
    name = experiment_name(task)
    experiment = mlflow.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    location = (root / MLFLOW_ARTIFACTS / task).resolve().as_uri() if uri.startswith("sqlite:") else None
    try:
        return mlflow.create_experiment(name, artifact_location=location)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel stage
        return mlflow.get_experiment_by_name(name).experiment_id


@dataclass(frozen=True)
class StageRun:
    """What a stage tells MLflow about itself."""

    task: str
    stage: str
    params: Any  # the params section(s) the stage reads: a pydantic model or a dict of them

    @property
    def dvc_stage(self) -> str:
        return f"{self.stage}@{self.task}" if self.stage != "acquire" else "acquire"


def flatten(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested params as ``a.b.c`` keys (MLflow params are flat)."""
    flat: dict[str, Any] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten(value, f"{name}."))
        else:
            flat[name] = value
    return flat


def _dump(params: Any) -> dict:
    if hasattr(params, "model_dump"):
        return params.model_dump(mode="json", by_alias=True)
    return {k: _dump(v) if hasattr(v, "model_dump") else v for k, v in params.items()}


@contextmanager
def stage_run(run: StageRun, tracking: TrackingParams, root: Path, parent_run_id: str | None = None,
              resume_run_id: str | None = None) -> Iterator[Any]:
    """An active MLflow run for one stage, tagged and with its params logged.

    ``resume_run_id`` continues an earlier run (a resumed training); a
    ``parent_run_id`` that the store does not know (a fresh database) is dropped.
    """
    import mlflow

    experiment_id = use_experiment(run.task, tracking, root)
    if parent_run_id is not None and not _run_exists(parent_run_id):
        parent_run_id = None
    if resume_run_id is not None and not _run_exists(resume_run_id):
        resume_run_id = None
    flat = flatten(_dump(run.params))
    tags = {
        TAG_TASK: run.task,
        TAG_STAGE: run.stage,
        TAG_DVC_STAGE: run.dvc_stage,
        TAG_PARAMS_HASH: params_hash(flat),
        TAG_GIT_COMMIT: git_commit(root),
    }
    with mlflow.start_run(run_id=resume_run_id, experiment_id=None if resume_run_id else experiment_id,
                          run_name=None if resume_run_id else run.stage,
                          parent_run_id=parent_run_id, tags=tags, log_system_metrics=False) as active:
        if resume_run_id is None:
            mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})
        yield active


def _run_exists(run_id: str) -> bool:
    import mlflow

    try:
        mlflow.get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def log_metrics(metrics: Mapping[str, Any], step: int | None = None, prefix: str = "") -> None:
    """Log the numeric leaves of a (nested) metrics dict; names are sanitised for MLflow."""
    import math

    import mlflow

    flat = {f"{prefix}{k}".replace("@", "_at_"): float(v) for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}
    if flat:
        mlflow.log_metrics(flat, step=step)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Tag the active run (values as strings)."""
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    import mlflow

    for path in paths:
        if path.is_file():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


@dataclass(frozen=True)
class Registration:
    model_name: str
    version: str
    model_uri: str
    metric_name: str
    metric: float
    champion_version: str
    previous_champion_version: str | None
    previous_champion_metric: float | None
    alias: str
    alias_moved: bool

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def register_model(model_uri: str, model_name: str, metric_name: str, metric: float, alias: str,
                   higher_is_better: bool = True) -> Registration:
    """Register ``model_uri`` as a new version; move ``alias`` to it only if it beats the holder.

    The metric is stored on the version as a tag, so the comparison needs
    nothing but the registry. A tie keeps the current champion.
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    version = mlflow.register_model(model_uri, model_name)
    client.set_model_version_tag(model_name, version.version, TAG_METRIC_PREFIX + metric_name, str(metric))
    try:
        champion = client.get_model_version_by_alias(model_name, alias)
    except mlflow.exceptions.MlflowException:
        champion = None
    previous_metric = None
    if champion is not None:
        tag = champion.tags.get(TAG_METRIC_PREFIX + metric_name)
        previous_metric = float(tag) if tag is not None else None
    beats = previous_metric is None or (metric > previous_metric if higher_is_better else metric < previous_metric)
    if beats:
        client.set_registered_model_alias(model_name, alias, version.version)
    return Registration(
        model_name=model_name, version=str(version.version), model_uri=model_uri,
        metric_name=metric_name, metric=metric,
        champion_version=str(version.version) if beats else str(champion.version),
        previous_champion_version=str(champion.version) if champion is not None else None,
        previous_champion_metric=previous_metric, alias=alias, alias_moved=beats)


def log_pytorch_model(exported: Any, name: str) -> str:
    """Log an :class:`~visionflow.tasks.base.ExportedModel` to the active run; return its URI.

    The signature has -1 for batch and free spatial dims, so the logged model
    accepts any batch size and image size the network does.
    """
    import mlflow
    import numpy as np
    import torch
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), exported.input_shape)]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), exported.output_shape)]))
    torch_version = torch.__version__.split("+")[0]  # local tags like +cu130 are not on PyPI
    info = mlflow.pytorch.log_model(exported.module, name=name, signature=signature,
                                    input_example=exported.example,
                                    pip_requirements=[f"torch=={torch_version}"],
                                    serialization_format=exported.serialization_format)
    return info.model_uri
