"""Fit any task family with Lightning: seeding, checkpoints (best + last), resume, curves.

Unfinished runs live in ``.cache/train/<task>/<key>/``, where the key hashes
everything the result depends on (the family's params and the dataset's
annotation files). Running the stage again with the same key resumes from that
run's ``last.ckpt``; a finished run moves its checkpoints into ``models/<task>/``
and clears its scratch folder, so a forced rerun trains from scratch.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import time
from collections.abc import Sequence
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint

from visionflow.config import TrackingParams, TrainerParams, params_hash
from visionflow.data.batching import EpochSampler, derived_seed
from visionflow.paths import TaskPaths
from visionflow.runtime import Runtime, named_nondeterministic_ops, resolve_runtime, to_channels_last
from visionflow.tasks.base import TaskFamily
from visionflow.tracking import StageRun, log_artifacts, log_dataset, log_metrics, set_tags, stage_run
from visionflow.viz import save_curves


class EpochHistory(Callback):
    """After every epoch: one row of train and validation metrics to CSV and MLflow.

    Rows are kept in the checkpoint, so a resumed run writes the whole history.
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
            # MLflow keeps the "train/" and "val/" prefixes: its charts group metrics by them.
            log_metrics(metrics, step=row["epoch"])

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

    checkpoint = ModelCheckpoint(dirpath=checkpoints, filename="best", monitor=family.monitor,
                                 mode=family.monitor_mode, save_top_k=1, auto_insert_metric_name=False)
    # Every epoch's end, whether or not it improved: what a resume continues from. (Lightning's
    # save_last writes only when the best checkpoint changes, so it can lag behind the run.)
    latest = ModelCheckpoint(dirpath=checkpoints, filename="last", monitor=None, save_top_k=1,
                             enable_version_counter=False)
    history = EpochHistory(paths.train_curves_csv)
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
                                [checkpoint, latest, history, EpochSeeding(params.train.seed), *extra_callbacks],
                                runtime)
        train_loader = datamodule.train_dataloader()
        if resume_from and isinstance(train_loader.sampler, EpochSampler):
            # Checkpoints are written at an epoch's end: the run goes on with the next one.
            saved = torch.load(resume_from, map_location="cpu", weights_only=True)["epoch"]
            train_loader.sampler.set_epoch(saved + 1)
        trainer.fit(module, train_dataloaders=train_loader,
                    val_dataloaders=datamodule.val_dataloader(), ckpt_path=resume_from)
        if not primary:
            return {}
        if nondeterministic_ops:
            set_tags({"runtime.nondeterministic_ops": ", ".join(sorted(nondeterministic_ops))})
        paths.models.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(checkpoint.best_model_path, paths.best_checkpoint)
        shutil.copyfile(checkpoints / "last.ckpt", paths.last_checkpoint)
        save_curves(paths.train_curves_png, history.rows)
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
        log_artifacts([paths.train_curves_png, paths.train_curves_csv], "curves")
    paths.train_summary.write_text(json.dumps(summary, indent=2) + "\n")
    shutil.rmtree(scratch, ignore_errors=True)
    return summary
