"""Lightning DDP with two processes on the CPU (gloo).

- ``test_ddp_fit_shards_seeded_epochs_and_syncs_weights`` (fast): a real two-rank fit
  (``ddp_fork``) of a tiny model on our training loader (``TrainValLoaders``). Lightning
  wraps our ``EpochSampler`` in its ``DistributedSamplerWrapper``; every epoch the ranks
  see disjoint halves of the data, together exactly the ``(index, augmentation seed)``
  pairs one process draws for that epoch (augmentation does not depend on the number of
  processes), and the next epoch draws others (``set_epoch`` reaches our sampler).
  ``EpochHistory`` writes its CSV from rank zero only, one row per epoch, with metrics
  reduced across ranks; both ranks end with the same weights (gradients all-reduced).
- ``test_ddp_ranks_draw_their_own_device_views`` (fast): self-supervision's views drawn on the
  device (kornia) come from a stream per rank: the same images get different views on the
  two ranks.
- ``test_ddp_training_on_two_cpu_processes`` (slow): ``visionflow train`` through the
  real CLI with ``strategy=ddp``: one MLflow run, outputs written once.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.strategies import DDPStrategy
from torch.nn import functional as F
from torch.utils.data import Dataset

from conftest import BIN
from visionflow.data.batching import EpochSampler, TrainValLoaders
from visionflow.training import EpochHistory

SIZE, BATCH, SEED, EPOCHS = 16, 4, 7, 2  # 16 = 2 ranks x 2 batches x 4: no padding, no dropped samples


class NoisyPoints(Dataset):
    """Point i plus noise drawn from the augmentation stream; items also carry (index, seed)."""

    def __init__(self, size: int):
        self.x = torch.randn(size, 2, generator=torch.Generator().manual_seed(0))
        self.y = self.x @ torch.tensor([[2.0], [-1.0]])
        self.seed = -1

    def reseed(self, seed: int) -> None:
        self.seed = seed

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, index: int):
        noise = torch.from_numpy(np.random.default_rng(self.seed).normal(0, 0.1, 2)).float()
        return self.x[index] + noise, self.y[index], index, self.seed


class Loaders(TrainValLoaders):
    def __init__(self):
        self.train, self.batch_size, self.seed = NoisyPoints(SIZE), BATCH, SEED


class Regression(L.LightningModule):
    """A linear layer; every rank writes the (index, seed) pairs of each epoch and its final weights to ``out``."""

    def __init__(self, out: Path):
        super().__init__()
        self.layer, self.out, self.seen = torch.nn.Linear(2, 1), out, []

    def training_step(self, batch, batch_idx):
        x, y, index, seed = batch
        self.seen += zip(index.tolist(), seed.tolist())
        loss = F.mse_loss(self.layer(x), y)
        self.log("loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        self.log("rank", float(self.global_rank), on_step=False, on_epoch=True, sync_dist=True)  # 0.5 if reduced
        return loss

    def on_train_epoch_end(self):
        (self.out / f"rank{self.global_rank}-epoch{self.current_epoch}.json").write_text(json.dumps(self.seen))
        self.seen = []

    def on_fit_end(self):
        torch.save(self.state_dict(), self.out / f"weights-rank{self.global_rank}.pt")

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class HistoryPerRank(Callback):
    """Points ``EpochHistory`` at a file of the rank's own, so that a write from a rank other than zero shows."""

    def __init__(self, history: EpochHistory):
        self.history = history

    def setup(self, trainer, module, stage):
        self.history.csv_path = self.history.csv_path.with_name(f"history-rank{trainer.global_rank}.csv")


def fit_on_two_ranks(out: Path) -> None:
    """The two-rank fit, writing to ``out``. The test runs it in a fresh interpreter (``__main__`` below):
    ranks forked from the test session would inherit its threads, and a hung rank is killed with its group."""
    torch.manual_seed(0)
    module = Regression(out)
    torch.save(module.state_dict(), out / "weights-initial.pt")
    history = EpochHistory(out / "history.csv")
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(start_method="fork",
                                                                          process_group_backend="gloo"),
                        max_epochs=EPOCHS, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=out, callbacks=[history, HistoryPerRank(history)])
    trainer.fit(module, train_dataloaders=Loaders().train_dataloader())


class FirstViews(Callback):
    """Saves the views of the first training batch (after ``on_after_batch_transfer``), per rank."""

    def __init__(self, out: Path):
        self.out = out

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:
            torch.save(batch, self.out / f"views-rank{trainer.global_rank}.pt")


def selfsup_on_two_ranks(out: Path) -> None:
    """One step of selfsup on two ranks, every image the same: the views differ only by the draws."""
    from conftest import tiny_params_dict
    from visionflow.config import parse_params
    from visionflow.data.images import write_png
    from visionflow.tasks import get_task
    from visionflow.tasks.selfsup import batch_views
    from visionflow.tasks.selfsup.data import SelfsupDataModule
    from visionflow.training import EpochSeeding

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    (out / "images").mkdir()
    for i in range(24):
        write_png(out / "images" / f"{i:02d}.png", image)
    params = parse_params(tiny_params_dict(tasks=["selfsup"])).selfsup
    data = SelfsupDataModule([out / "images"], 32, 0.25, BATCH, None, None, seed=SEED, batch_views=batch_views(params))
    module = get_task("selfsup").module(params, data)
    trainer = L.Trainer(accelerator="cpu", devices=2, strategy=DDPStrategy(start_method="fork",
                                                                          process_group_backend="gloo"),
                        max_steps=1, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=out, num_sanity_val_steps=0,
                        limit_val_batches=0, callbacks=[EpochSeeding(SEED), FirstViews(out)])
    trainer.fit(module, train_dataloaders=data.train_dataloader())


def run_two_ranks(mode: str, out: Path) -> None:
    """``python test_ddp.py MODE OUT`` in a fresh interpreter, killed with its ranks if it hangs."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    env.pop("MASTER_PORT", None)
    process = subprocess.Popen([sys.executable, __file__, mode, str(out)], env=env, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)  # the ranks too
        output, _ = process.communicate()
        pytest.fail(f"two-rank fit hung:\n{output[-3000:]}")
    assert process.returncode == 0, output[-3000:]


def single_process_epoch(epoch: int) -> list[tuple[int, int]]:
    sampler = EpochSampler(SIZE, SEED)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_ddp_fit_shards_seeded_epochs_and_syncs_weights(tmp_path: Path):
    run_two_ranks("loader", tmp_path)

    seen = {(rank, epoch): [tuple(p) for p in json.loads((tmp_path / f"rank{rank}-epoch{epoch}.json").read_text())]
            for rank in (0, 1) for epoch in range(EPOCHS)}
    for epoch in range(EPOCHS):
        first, second = seen[0, epoch], seen[1, epoch]
        assert len(first) == len(second) == SIZE // 2
        assert not {i for i, _ in first} & {i for i, _ in second}
        assert sorted(first + second) == sorted(single_process_epoch(epoch))
    assert {i for i, _ in seen[0, 0]} != {i for i, _ in seen[0, 1]}  # the next epoch reshuffles the shards
    assert not set(seen[0, 0] + seen[1, 0]) & set(seen[0, 1] + seen[1, 1])  # and draws new seeds

    assert not (tmp_path / "history-rank1.csv").exists()
    with open(tmp_path / "history-rank0.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(row["epoch"]) for row in rows] == list(range(1, EPOCHS + 1))
    assert all(float(row["rank"]) == 0.5 for row in rows)

    weights = [torch.load(tmp_path / f"weights-{name}.pt") for name in ("rank0", "rank1", "initial")]
    for key in weights[2]:
        torch.testing.assert_close(weights[0][key], weights[1][key], rtol=0, atol=0)
        assert not torch.equal(weights[0][key], weights[2][key])


def test_ddp_ranks_draw_their_own_device_views(tmp_path: Path):
    run_two_ranks("selfsup", tmp_path)
    rank0, rank1 = (torch.load(tmp_path / f"views-rank{rank}.pt") for rank in (0, 1))
    assert rank0[0].shape == rank1[0].shape == (BATCH, 3, 32, 32)
    assert not torch.equal(rank0[0], rank1[0]) and not torch.equal(rank0[1], rank1[1])


@pytest.mark.slow
def test_ddp_training_on_two_cpu_processes(tiny_project: Path, project_env: dict):
    params_file = tiny_project / "params.yaml"
    params = yaml.safe_load(params_file.read_text())
    params["trainer"].update(accelerator="cpu", devices=2, strategy="ddp")
    params_file.write_text(yaml.safe_dump(params, sort_keys=False))
    for stage in ("synthesize", "train"):
        result = subprocess.run([str(BIN / "visionflow"), stage, "--task", "segmentation"],
                                cwd=tiny_project, env=project_env, capture_output=True, text=True,
                                timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
    summary = json.loads((tiny_project / "models/segmentation/train.json").read_text())
    assert summary["epochs"] == 1 and (tiny_project / "models/segmentation/best.ckpt").is_file()

    import mlflow

    client = mlflow.MlflowClient(f"sqlite:///{tiny_project / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("visionflow-segmentation")
    train_runs = client.search_runs([experiment.experiment_id], "tags.`visionflow.stage` = 'train'")
    assert [run.info.run_id for run in train_runs] == [summary["mlflow_run_id"]]


if __name__ == "__main__":
    {"loader": fit_on_two_ranks, "selfsup": selfsup_on_two_ranks}[sys.argv[1]](Path(sys.argv[2]))
