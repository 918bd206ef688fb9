"""MLflow: where runs go, how they are tagged, and the model registry's champion alias.

The only module that imports mlflow (``tests/test_import_boundaries.py`` checks):
the stages, the training loop, the CLI and the Prefect flow reach MLflow through
the functions here. One experiment per task family (``visionflow-<family>``, the
name its registered model has too); each stage run is tagged with the git commit,
the DVC stage and a hash of the params the stage reads. A training's per-epoch
train and validation metrics reach its run through :func:`epoch_metrics_callback`
(a Lightning callback; Lightning is imported only when one is made, so stages that
never train do not load it). Evaluate and register runs are children of the train
run that made the model, so the MLflow UI shows them nested under it; the train
run itself carries the test metrics, and a registered version points at it.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

from visionflow.config import TrackingParams, params_hash
from visionflow.dag import stage_name
from visionflow.lineage import git_state
from visionflow.paths import MLFLOW_ARTIFACTS, MLFLOW_DB

TAG_TASK = "visionflow.task"
TAG_STAGE = "visionflow.stage"
TAG_DVC_STAGE = "visionflow.dvc_stage"
TAG_PARAMS_HASH = "visionflow.params_hash"
TAG_GIT_COMMIT = "mlflow.source.git.commit"
TAG_GIT_DIRTY = "visionflow.git_dirty"  # "true": the run's code had uncommitted changes
TAG_METRIC_PREFIX = "visionflow.metric."
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"  # MLflow 3's UI opens "custom_model_development" as model training
TAG_NOTE = "mlflow.note.content"  # the description the UI shows
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."  # a runs-table layout the UI opens with ?viewStateShareKey=
HEADLINE_VIEW = "headline"
DEFAULT_UI_URL = "http://127.0.0.1:5000"
TAG_WARNINGS = "visionflow.warnings"  # what the stage warned about, one per line


class _WarningCollector(logging.Handler):
    """Keeps the messages of visionflow's warnings in this process (one process per stage)."""

    def __init__(self) -> None:
        super().__init__(level=logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage().removeprefix("visionflow: warning: "))
        if not self._others_handle(record.name) and logging.lastResort is not None:
            logging.lastResort.handle(record)  # still on stderr, as with no handler at all

    def _others_handle(self, name: str) -> bool:
        logger: logging.Logger | None = logging.getLogger(name)
        while logger is not None:
            if any(handler is not self for handler in logger.handlers):
                return True
            logger = logger.parent if logger.propagate else None
        return False


STAGE_WARNINGS = _WarningCollector()
logging.getLogger("visionflow").addHandler(STAGE_WARNINGS)


def tracking_uri(params: TrackingParams, root: Path) -> str:
    """``MLFLOW_TRACKING_URI`` if set, else ``tracking.uri``, else a SQLite file in the project."""
    return os.environ.get("MLFLOW_TRACKING_URI") or params.uri or f"sqlite:///{(root / MLFLOW_DB).resolve()}"


def experiment_name(task: str) -> str:
    """``visionflow-instance-segmentation``: spelled like the family's registered model."""
    return f"visionflow-{task.replace('_', '-')}"


def ui_url() -> str:
    """Where the MLflow UI is served (``make ui``); ``VISIONFLOW_MLFLOW_UI`` overrides."""
    return os.environ.get("VISIONFLOW_MLFLOW_UI", DEFAULT_UI_URL).rstrip("/")


# MLflow 3's UI opens in its GenAI layout unless told (per browser, or by this query parameter).
MODEL_TRAINING_LAYOUT = "workflowType=machine_learning"


def run_link(experiment_id: str, run_id: str) -> str:
    return f"{ui_url()}/#/experiments/{experiment_id}/runs/{run_id}?{MODEL_TRAINING_LAYOUT}"


def headline_link(experiment_id: str) -> str:
    """The family's runs table with its test metrics as columns (see :func:`set_headline_view`)."""
    return f"{ui_url()}/#/experiments/{experiment_id}/runs?{MODEL_TRAINING_LAYOUT}&viewStateShareKey={HEADLINE_VIEW}"


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
    tags = {TAG_EXPERIMENT_KIND: "custom_model_development",
            TAG_NOTE: f"visionflow {task}: one train run per training, with its test metrics; "
                      f"synthesize, augment and pretrained runs beside it; evaluate and register nested under it."}
    try:
        experiment_id = mlflow.create_experiment(name, artifact_location=location, tags=tags)
    except mlflow.exceptions.MlflowException:  # created meanwhile by a parallel stage
        return mlflow.get_experiment_by_name(name).experiment_id
    _hide_empty_default_experiment()
    return experiment_id


def _hide_empty_default_experiment() -> None:
    """MLflow's store creates a ``Default`` experiment that visionflow never uses: delete it while empty."""
    import mlflow

    client = mlflow.MlflowClient()
    try:
        default = client.get_experiment("0")
        if default.lifecycle_stage == "active" and not client.search_runs(["0"], max_results=1):
            client.delete_experiment("0")
    except mlflow.exceptions.MlflowException:
        pass  # no such experiment, or a store that does not allow it


def create_store(params: TrackingParams, root: Path) -> None:
    """Create the tracking store (and run its migrations) now, in this process.

    Two processes creating a fresh SQLite store at once fail in its migrations,
    so an orchestrator that starts several stages together creates it first.
    """
    import mlflow

    mlflow.MlflowClient(tracking_uri(params, root)).search_experiments(max_results=1)


def use_store(params: TrackingParams, root: Path) -> None:
    """Point mlflow at the tracking store (no experiment chosen)."""
    import mlflow

    mlflow.set_tracking_uri(tracking_uri(params, root))


def run_experiment_id(run_id: str) -> str | None:
    """The experiment of a run in the store (None when the store does not know the run)."""
    import mlflow

    try:
        return mlflow.get_run(run_id).info.experiment_id
    except mlflow.exceptions.MlflowException:
        return None


@dataclass(frozen=True)
class StageRun:
    """What a stage tells MLflow about itself."""

    task: str
    stage: str
    params: Any  # the params section(s) the stage reads: a pydantic model or a dict of them

    @property
    def dvc_stage(self) -> str:
        return stage_name(self.stage, None if self.stage == "acquire" else self.task)


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
              resume_run_id: str | None = None, system_metrics: bool = False) -> Iterator[Any]:
    """An active MLflow run for one stage, tagged and with its params logged.

    Open it before the stage's work, so its duration is the work's.
    ``resume_run_id`` continues an earlier run (a resumed training); a
    ``parent_run_id`` that the store does not know (a fresh database, or outputs a teammate
    trained and ``dvc pull`` brought) is dropped, with a warning that names it.
    ``system_metrics``: sample CPU, memory (and GPU, with ``nvidia-ml-py``
    installed) every ``MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL`` seconds (10).
    """
    import mlflow

    experiment_id = use_experiment(run.task, tracking, root)
    if system_metrics:  # its start/stop notices and "Skip logging GPU metrics" are not news
        logging.getLogger("mlflow.system_metrics").setLevel(logging.WARNING)
    if parent_run_id is not None and not run_exists(parent_run_id):
        logging.getLogger("visionflow.tracking").warning(
            "visionflow: warning: MLflow run %s, the training run this %s belongs under, is not in this "
            "store (%s): it logs to a run of its own", parent_run_id, run.stage, mlflow.get_tracking_uri())
        parent_run_id = None
    if resume_run_id is not None and not run_exists(resume_run_id):
        resume_run_id = None
    flat = flatten(_dump(run.params))
    commit, dirty = git_state(root)
    tags = {
        TAG_TASK: run.task,
        TAG_STAGE: run.stage,
        TAG_DVC_STAGE: run.dvc_stage,
        TAG_PARAMS_HASH: params_hash(flat),
        TAG_GIT_COMMIT: commit,
        TAG_GIT_DIRTY: "unknown" if dirty is None else str(dirty).lower(),
    }
    with mlflow.start_run(run_id=resume_run_id, experiment_id=None if resume_run_id else experiment_id,
                          run_name=None if resume_run_id else run.stage,
                          parent_run_id=parent_run_id, tags=tags, log_system_metrics=system_metrics) as active:
        if resume_run_id is None:
            mlflow.log_params({k: str(v)[:6000] for k, v in flat.items()})
        try:
            yield active
        finally:
            if STAGE_WARNINGS.messages:  # e.g. a split without annotations: on the run, not only the log
                mlflow.set_tag(TAG_WARNINGS, "\n".join(STAGE_WARNINGS.messages)[:5000])


def run_exists(run_id: str) -> bool:
    """Whether the active MLflow store holds the run."""
    import mlflow

    try:
        mlflow.get_run(run_id)
        return True
    except mlflow.exceptions.MlflowException:
        return False


def metric_values(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """The finite numeric leaves of a (nested) metrics dict, named as MLflow shows them."""
    import math

    return {f"{prefix}{k}".replace("@", "_at_"): float(v) for k, v in flatten(metrics).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def run_tag(run_id: str, key: str) -> str | None:
    """A tag of a run in the store (None when the run or tag is missing)."""
    import mlflow

    try:
        return mlflow.get_run(run_id).data.tags.get(key)
    except mlflow.exceptions.MlflowException:
        return None


def log_metrics(metrics: Mapping[str, Any], step: int | None = None, prefix: str = "",
                run_id: str | None = None, model_id: str | None = None) -> None:
    """Log the numeric leaves of a (nested) metrics dict to the active run (or ``run_id``),
    linked to a logged model when ``model_id`` is given."""
    import mlflow

    flat = metric_values(metrics, prefix)
    if flat:
        mlflow.log_metrics(flat, step=step, run_id=run_id, model_id=model_id)


def epoch_metrics_callback() -> Any:
    """A Lightning callback that logs each epoch's train and validation metrics to the active run.

    After every training epoch (Lightning has run that epoch's validation by then), the
    trainer's ``callback_metrics`` go to the run as they are named (``train/loss``,
    ``val/mIoU``: MLflow's charts group metrics by those prefixes), at step = the epoch
    counted from 1. Only the global rank 0 logs; the callback keeps no state, so it adds
    nothing to checkpoints.
    """
    return _epoch_metrics_callback_class()()


@cache
def _epoch_metrics_callback_class() -> type:
    from lightning.pytorch.callbacks import Callback

    class EpochMetricsToMLflow(Callback):
        def on_train_epoch_end(self, trainer: Any, module: Any) -> None:
            if trainer.is_global_zero:
                metrics = {name: float(value) for name, value in sorted(trainer.callback_metrics.items())}
                log_metrics(metrics, step=trainer.current_epoch + 1)

    return EpochMetricsToMLflow


def load_pytorch_model(model_uri: str, params: TrackingParams | None, root: Path) -> Any:
    """The torch module logged at ``model_uri`` (``models:/<name>@champion``, ``runs:/...``).

    ``params``: the tracking store it is in; None leaves ``MLFLOW_TRACKING_URI`` or
    MLflow's default. A model in pickle format runs code from its file when loaded.
    """
    import mlflow

    if params is not None:
        mlflow.set_tracking_uri(tracking_uri(params, root))
    return mlflow.pytorch.load_model(model_uri)


def model_version(model_uri: str, params: TrackingParams | None, root: Path) -> dict[str, Any]:
    """The registered version behind ``models:/<name>@<alias>`` or ``models:/<name>/<version>``.

    Returns ``{"name", "version", "aliases", "run_id", "tags"}``; an unknown name, alias or
    version is a ``LookupError`` whose message names it.
    """
    import mlflow
    from mlflow import MlflowClient

    if params is not None:
        mlflow.set_tracking_uri(tracking_uri(params, root))
    if not model_uri.startswith("models:/"):
        raise LookupError(f"{model_uri}: expected models:/<name>@<alias> or models:/<name>/<version>")
    reference = model_uri[len("models:/"):]
    client = MlflowClient()
    try:
        if "@" in reference:
            name, alias = reference.split("@", 1)
            version = client.get_model_version_by_alias(name, alias)
        else:
            name, number = reference.rsplit("/", 1)
            version = client.get_model_version(name, number)
    except (ValueError, mlflow.exceptions.MlflowException) as exc:
        raise LookupError(f"{model_uri}: not in the registry at {mlflow.get_tracking_uri()} "
                          f"({str(exc).splitlines()[0]})") from None
    return {"name": version.name, "version": str(version.version), "aliases": list(version.aliases or []),
            "run_id": version.run_id, "tags": dict(version.tags)}


def log_dataset(folder: Path, manifest: Path, context: str) -> None:
    """Attach a dataset to the active run: its folder, named like it, with the digest of its
    manifest (the file DVC tracks for it), so the runs table's Dataset column tells runs
    trained on different data apart."""
    import hashlib

    import mlflow
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.data.sources import LocalArtifactDatasetSource

    digest = hashlib.sha256(manifest.read_bytes()).hexdigest()[:12] if manifest.is_file() else None
    dataset = MetaDataset(LocalArtifactDatasetSource(str(folder.resolve())), name=folder.name, digest=digest)
    mlflow.log_input(dataset, context=context)


def set_headline_view(experiment_id: str, metric_names: list[str]) -> str:
    """Store a runs-table layout with ``metric_names`` as columns, best first; return its link.

    The MLflow UI keeps column choices per browser; a shared view (an experiment
    tag the UI reads for ``?viewStateShareKey=``) is how a project ships one.
    """
    import json

    import mlflow

    columns = [f"metrics.`{name}`" for name in metric_names]
    view = {"selectedColumns": ["attributes.`Dataset`", "attributes.`Models`", *columns],
            "orderByKey": columns[0] if columns else "attributes.start_time", "orderByAsc": False,
            "runsExpanded": {}, "runsPinned": [], "runsHidden": []}
    mlflow.MlflowClient().set_experiment_tag(experiment_id, SHARED_VIEW_PREFIX + HEADLINE_VIEW, json.dumps(view))
    return headline_link(experiment_id)


def set_tags(tags: Mapping[str, Any]) -> None:
    """Tag the active run (values as strings)."""
    import mlflow

    mlflow.set_tags({k: str(v) for k, v in tags.items()})


def log_artifacts(paths: list[Path], artifact_path: str | None = None) -> None:
    import mlflow

    for path in paths:
        if path.is_file():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_onnx(onnx_dir: Path, parity: Mapping[str, Any]) -> None:
    """Log evaluate's ONNX export (``model.onnx`` or ``error.txt``) to the active run under
    ``onnx/``, its exporter and parity verdict as tags; the numbers come with the test metrics."""
    import mlflow

    log_artifacts(sorted(Path(onnx_dir).glob("*")), "onnx")
    mlflow.set_tags({"onnx.exporter": parity.get("exporter", "none"),
                     "onnx.parity": "error" if "error" in parity else
                     ("passed" if parity.get("passed") else "failed")})


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


@dataclass(frozen=True)
class LoggedModel:
    """A model logged to a run: where it is, its MLflow 3 model id and the run."""

    model_uri: str
    model_id: str | None
    run_id: str


def register_model(model: LoggedModel, model_name: str, metric_name: str, metric: float, alias: str,
                   higher_is_better: bool = True, trained_by_run: str | None = None,
                   description: str = "", tags: Mapping[str, Any] | None = None,
                   model_description: str = "") -> Registration:
    """Register ``model`` as a new version; move ``alias`` to it only if it beats the holder.

    The version's source run is ``trained_by_run`` (the training run) when given, else the
    run that logged the model;
    it carries ``description`` and ``tags``; ``model_description`` describes the
    registered model when this call creates it. The metric is also stored on the
    version as a tag, so the comparison needs nothing but the registry. A tie
    keeps the current champion.
    """
    import mlflow
    from mlflow import MlflowClient

    client = MlflowClient()
    try:
        client.create_registered_model(model_name, description=model_description)
    except mlflow.exceptions.MlflowException:
        pass  # registered before
    version_tags = {**(tags or {}), TAG_METRIC_PREFIX + metric_name: str(metric)}
    version = client.create_model_version(
        model_name, source=model.model_uri, run_id=trained_by_run or model.run_id,
        tags={k: str(v) for k, v in version_tags.items()}, description=description, model_id=model.model_id)
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
        model_name=model_name, version=str(version.version), model_uri=model.model_uri,
        metric_name=metric_name, metric=metric,
        champion_version=str(version.version) if beats else str(champion.version),
        previous_champion_version=str(champion.version) if champion is not None else None,
        previous_champion_metric=previous_metric, alias=alias, alias_moved=beats)


def log_pytorch_model(exported: Any, name: str, params: Mapping[str, Any] | None = None,
                      tags: Mapping[str, Any] | None = None) -> LoggedModel:
    """Log an :class:`~visionflow.tasks.base.ExportedModel` to the active run.

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
                                    serialization_format=exported.serialization_format,
                                    params={k: str(v) for k, v in (params or {}).items()},
                                    tags={k: str(v) for k, v in (tags or {}).items()})
    return LoggedModel(info.model_uri, getattr(info, "model_id", None), mlflow.active_run().info.run_id)
