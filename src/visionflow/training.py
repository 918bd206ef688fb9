"""Fit any task family with Lightning: seeding, checkpoints (best + last), resume, curves.

Unfinished runs live in ``.cache/train/<task>/<key>/``, where the key hashes
everything the result depends on (the family's params and the dataset's
annotation files). Running the stage again with the same key resumes from that
run's ``last.ckpt``; a finished run moves its checkpoints into ``models/<task>/``
and clears its scratch folder, so a forced rerun trains from scratch.

One process at a time trains in a run folder (``runfolder.hold_run_folder``). The
stage's outputs (checkpoints, curves, summary) change only when training succeeds,
each by an atomic rename: a killed run leaves the previous ones as they were.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from lightning.pytorch.plugins import TorchCheckpointIO

from visionflow.config import TrackingParams, TrainerParams, params_hash
from visionflow.data.batching import EpochSampler, derived_seed
from visionflow.models.checkpoints import load_weights
from visionflow.paths import TaskPaths
from visionflow.runfolder import hold_run_folder, publish, replace_atomically
from visionflow.runtime import Runtime, named_nondeterministic_ops, resolve_runtime, to_channels_last
from visionflow.tasks.base import TaskFamily
from visionflow.tracking import (StageRun, epoch_metrics_callback, log_artifacts, log_dataset, log_metrics,
                                 set_tags, stage_run)
from visionflow.viz import save_curves


class EpochHistory(Callback):
    """After every epoch: one row of train and validation metrics to CSV.

    Rows are kept in the checkpoint, so a resumed run writes the whole history. (The
    same metrics go to MLflow through ``tracking.epoch_metrics_callback``.)
    """

    def __init__(self, csv_path: Path):
        self.csv_path = csv_path
        self.rows: list[dict[str, float]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        # Lightning runs the epoch's validation before this hook, so both are in callback_metrics.
        metrics = {name: float(value) for name, value in sorted(trainer.callback_metrics.items())}
        row = {"epoch": trainer.current_epoch + 1, **{name.replace("/", "_"): v for name, v in metrics.items()}}
        self.rows.append(row)
        if trainer.is_global_zero:
            write_csv(self.csv_path, self.rows)

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict["rows"])


class EpochSeeding(Callback):
    """Seed torch's global generators from (seed, epoch) at every epoch start.

    Whatever a model draws from them (dropout, random sampling in a loss) is then a
    function of the epoch alone, so a run resumed from an epoch's checkpoint draws what
    the uninterrupted run drew. The data's randomness is seeded per sample
    (``data.batching.EpochSampler``).
    """

    def __init__(self, seed: int):
        self.seed = seed

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        torch.manual_seed(derived_seed(self.seed, trainer.current_epoch, 0x70C4))


class ChannelsLast(Callback):
    """Convolution weights channels-last once the model is on its device (CUDA only)."""

    def on_fit_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        to_channels_last(module)


class ResumableModelCheckpoint(ModelCheckpoint):
    """``ModelCheckpoint`` that restores all the state it saves, wherever the project lives.

    Lightning leaves ``current_score`` (the score of the last checkpoint it kept) out of
    ``load_state_dict``: a resumed run whose remaining epochs do not improve would save it as
    None where the uninterrupted run saves the score, and its checkpoints would differ.

    Lightning also saves its folder and the checkpoints' paths as absolute paths, so the same
    training in another clone wrote other bytes (and DVC saw another output), and a project
    moved to another folder resumed without its best score. Here they are saved relative to
    the checkpoint folder (``dirpath`` as ``"."``) and resolved against this run's folder on load.
    """

    _PATHS = ("best_model_path", "kth_best_model_path", "last_model_path")

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        if self.dirpath is None:
            return state

        def relative(path: str) -> str:
            return os.path.relpath(path, self.dirpath) if path else path

        state.update({key: relative(state[key]) for key in self._PATHS if key in state}, dirpath=".")
        state["best_k_models"] = {relative(path): score for path, score in state.get("best_k_models", {}).items()}
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("dirpath") == "." and self.dirpath is not None:

            def absolute(path: str) -> str:
                return os.path.join(self.dirpath, path) if path else path

            state_dict = {**state_dict, "dirpath": self.dirpath,
                          **{key: absolute(state_dict[key]) for key in self._PATHS if key in state_dict},
                          "best_k_models": {absolute(path): score
                                            for path, score in state_dict.get("best_k_models", {}).items()}}
        super().load_state_dict(state_dict)
        if state_dict.get("dirpath", self.dirpath) == self.dirpath:
            self.current_score = state_dict.get("current_score", self.current_score)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their path and renamed into place.

    Lightning's local save goes through a temporary file in the system's temp folder; where that
    is another filesystem (a tmpfs ``/tmp``), the final move is a copy, and a run killed during it
    leaves a truncated ``last.ckpt`` that the next run cannot resume from.

    Strings are interned first (:func:`intern_strings`), so that the bytes depend on the
    checkpoint's content alone: a resumed run's checkpoints equal an uninterrupted run's.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options")
        checkpoint = intern_strings(checkpoint)
        replace_atomically(Path(path), lambda f: torch.save(checkpoint, f))


def intern_strings(value: Any) -> Any:
    """``value`` with every string in its dicts, lists and tuples interned; dicts and lists in place.

    Pickle writes a string it has written before as a reference to the first one, by identity.
    A resumed run holds strings loaded from its checkpoint (the optimizer's ``"step"`` keys, the
    history's rows) where an uninterrupted run holds the interned literals of the code, so the
    same checkpoint would pickle to other bytes. Interned, equal strings are one object.
    """
    if isinstance(value, str):
        return sys.intern(value) if type(value) is str else value
    if isinstance(value, dict):
        items = [(intern_strings(k), intern_strings(v)) for k, v in value.items()]
        value.clear()
        value.update(items)
    elif isinstance(value, list):
        value[:] = [intern_strings(v) for v in value]
    elif type(value) is tuple:
        return tuple(intern_strings(v) for v in value)
    return value


def write_csv(path: Path, rows: Sequence[dict[str, float]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(k for row in rows for k in row))
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def data_fingerprint(data_root: Path) -> str:
    """Hash of a dataset's split files (the annotations name every image)."""
    digest = hashlib.sha256()
    for split_file in sorted(data_root.glob("*.json")):
        digest.update(split_file.name.encode())
        digest.update(split_file.read_bytes())
    return digest.hexdigest()[:12]


def build_trainer(trainer: TrainerParams, max_epochs: int, scratch: Path,
                  callbacks: Sequence[Callback], runtime: Runtime | None = None) -> L.Trainer:
    """A Lightning ``Trainer`` from params, with ``auto`` values resolved for this machine."""
    runtime = runtime or resolve_runtime(trainer)
    if runtime.channels_last:
        callbacks = [*callbacks, ChannelsLast()]
    return L.Trainer(
        max_epochs=max_epochs,
        accelerator=trainer.accelerator,
        devices=trainer.devices,
        num_nodes=trainer.num_nodes,
        strategy=trainer.strategy,
        precision=runtime.precision,
        deterministic=runtime.deterministic,
        benchmark=runtime.benchmark,
        enable_progress_bar=trainer.progress_bar,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        logger=False,
        callbacks=list(callbacks),
        default_root_dir=scratch,
        plugins=[AtomicCheckpointIO()],
    )


def is_primary_process() -> bool:
    """False in the extra processes of a multi-GPU/multi-node run.

    Lightning's DDP launcher starts them by running this same command again, with
    RANK / LOCAL_RANK / NODE_RANK set; only the global rank 0 may clear scratch
    folders, open the MLflow run and write the stage's outputs.
    """
    return all(os.environ.get(var, "0") == "0" for var in ("RANK", "LOCAL_RANK", "NODE_RANK"))


def train_task(family: TaskFamily, params: Any, trainer_params: TrainerParams, tracking: TrackingParams,
               paths: TaskPaths, extra_callbacks: Sequence[Callback] = (),
               pretrained_backbone: Path | None = None) -> dict[str, Any]:
    """Train one family; write checkpoints, curves and a summary; return the summary.

    ``pretrained_backbone``: a backbone file (``models/backbones.py``) the model starts from.
    """
    started = time.perf_counter()
    L.seed_everything(params.train.seed, workers=True, verbose=False)
    data_root = paths.data_root(params.data.source)
    datamodule = family.datamodule(params, data_root, trainer_params)
    module = family.module(params, datamodule)
    backbone_hash = None
    if pretrained_backbone is not None:
        family.start_from_backbone(module, pretrained_backbone)
        backbone_hash = hashlib.sha256(pretrained_backbone.read_bytes()).hexdigest()[:12]

    trained_from = params.model_dump(mode="json", include={"data", "augment", "model", "train"})
    run_key = params_hash({**trained_from, "dataset": data_fingerprint(data_root),
                           **({"backbone": backbone_hash} if backbone_hash else {})})
    scratch = paths.train_scratch / run_key
    # The ranks a multi-process run starts share their primary's folder, which it holds for them.
    with hold_run_folder(scratch) if is_primary_process() else nullcontext():
        return _fit_in_folder(family, params, trainer_params, tracking, paths, extra_callbacks, pretrained_backbone,
                              data_root=data_root, datamodule=datamodule, module=module,
                              backbone_hash=backbone_hash, run_key=run_key, scratch=scratch, started=started)


def _fit_in_folder(family: TaskFamily, params: Any, trainer_params: TrainerParams, tracking: TrackingParams,
                   paths: TaskPaths, extra_callbacks: Sequence[Callback], pretrained_backbone: Path | None, *,
                   data_root: Path, datamodule: Any, module: L.LightningModule, backbone_hash: str | None,
                   run_key: str, scratch: Path, started: float) -> dict[str, Any]:
    """:func:`train_task` in its run folder ``scratch``, which this process holds."""
    checkpoints = scratch / "checkpoints"
    resume_from = checkpoints / "last.ckpt"
    primary = is_primary_process()
    if not (params.train.resume and resume_from.is_file()):
        if primary:
            shutil.rmtree(scratch, ignore_errors=True)
        resume_from = None
    scratch.mkdir(parents=True, exist_ok=True)
    run_id_file = scratch / "mlflow_run_id"
    previous_run = run_id_file.read_text().strip() if resume_from and run_id_file.is_file() else None

    checkpoint = ResumableModelCheckpoint(dirpath=checkpoints, filename="best", monitor=family.monitor,
                                          mode=family.monitor_mode, save_top_k=1, auto_insert_metric_name=False)
    # Every epoch's end, whether or not it improved: what a resume continues from. (Lightning's
    # save_last writes only when the best checkpoint changes, so it can lag behind the run.)
    latest = ResumableModelCheckpoint(dirpath=checkpoints, filename="last", monitor=None, save_top_k=1,
                                      enable_version_counter=False)
    history = EpochHistory(scratch / paths.train_curves_csv.name)  # into plots/ once the run succeeds
    logged: dict[str, Any] = {family.name: params, "trainer": trainer_params}
    if backbone_hash:
        logged["pretrained"] = {"backbone": str(pretrained_backbone), "sha256": backbone_hash}
    stage = StageRun(family.name, "train", logged)
    run_context = stage_run(stage, tracking, paths.root, resume_run_id=previous_run, system_metrics=True) \
        if primary else nullcontext()
    runtime = resolve_runtime(trainer_params)
    if runtime.compute_threads:
        torch.set_num_threads(runtime.compute_threads)
    with run_context as run, named_nondeterministic_ops() as nondeterministic_ops:
        if primary:
            run_id_file.write_text(run.info.run_id)
            set_tags({f"runtime.{k}": v for k, v in vars(runtime).items()})
            log_dataset(data_root, paths.dataset_manifest(params.data.source), context="training")
        trainer = build_trainer(trainer_params, params.train.epochs, scratch,
                                [checkpoint, latest, history, epoch_metrics_callback(), EpochSeeding(params.train.seed),
                                 *extra_callbacks],
                                runtime)
        train_loader = datamodule.train_dataloader()
        if resume_from and isinstance(train_loader.sampler, EpochSampler):
            # Checkpoints are written at an epoch's end: the run goes on with the next one.
            saved = load_weights(resume_from)["epoch"]
            train_loader.sampler.set_epoch(saved + 1)
        trainer.fit(module, train_dataloaders=train_loader,
                    val_dataloaders=datamodule.val_dataloader(), ckpt_path=resume_from,
                    weights_only=True)  # tensors and plain data only: a resumed file runs no code
        if not primary:
            return {}
        if nondeterministic_ops:
            set_tags({"runtime.nondeterministic_ops": ", ".join(sorted(nondeterministic_ops))})
        curves_png = scratch / paths.train_curves_png.name
        save_curves(curves_png, history.rows)
        summary = {
            "task": family.name,
            "mlflow_run_id": run.info.run_id,
            "epochs": trainer.current_epoch,
            "global_steps": trainer.global_step,
            "resumed_from": str(resume_from) if resume_from else None,
            "monitor": family.monitor,
            "best_score": float(checkpoint.best_model_score),
            "seconds": round(time.perf_counter() - started, 1),
            "run_key": run_key,
            "pretrained_backbone": backbone_hash,
            "runtime": vars(runtime),
            "nondeterministic_ops": sorted(nondeterministic_ops),
        }
        log_metrics({f"best/{family.monitor}": summary["best_score"]})
        log_artifacts([curves_png, history.csv_path], "curves")
    # The outputs change only now, the summary last: a run killed before leaves the previous ones.
    for source, output in ((checkpoint.best_model_path, paths.best_checkpoint),
                           (checkpoints / "last.ckpt", paths.last_checkpoint),
                           (history.csv_path, paths.train_curves_csv), (curves_png, paths.train_curves_png)):
        publish(Path(source), output)
    replace_atomically(paths.train_summary, lambda f: f.write((json.dumps(summary, indent=2) + "\n").encode()))
    shutil.rmtree(scratch, ignore_errors=True)
    return summary
