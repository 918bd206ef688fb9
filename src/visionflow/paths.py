"""Where every stage reads and writes, relative to the project root.

The one place paths are spelled in code; ``dvc.yaml`` spells them again for DVC,
and ``tests/test_config.py`` checks that both agree.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

RAW_DIR = Path("data/raw")
RAW_MANIFEST = RAW_DIR / "manifest.json"
MLFLOW_DB = Path("mlflow.db")
MLFLOW_ARTIFACTS = Path("mlartifacts")
SCRATCH_DIR = Path(".cache")


@dataclass(frozen=True)
class TaskPaths:
    """One task family's files. All paths are relative to ``root`` once resolved."""

    task: str
    root: Path = Path(".")

    def _at(self, relative: str) -> Path:
        return self.root / relative

    @property
    def synthetic(self) -> Path:
        return self._at(f"data/synthetic/{self.task}")

    @property
    def synthetic_manifest(self) -> Path:
        """File count and content digest of :attr:`synthetic`, written by synthesize. The stages
        after it depend on this small file instead of the folder, so that DVC walks the folder's
        thousands of files once per ``dvc repro`` (as synthesize's output), not once per stage."""
        return self._at(f"data/synthetic/{self.task}.json")

    def data_root(self, source: str) -> Path:
        """The COCO-layout dataset a family reads: its synthetic set or an acquired one."""
        return self.synthetic if source == "synthetic" else self.root / RAW_DIR / source

    def dataset_manifest(self, source: str) -> Path:
        """The small file DVC tracks for :meth:`data_root`'s content: its digest names the data."""
        return self.synthetic_manifest if source == "synthetic" else self.root / RAW_MANIFEST

    @property
    def augment_preview(self) -> Path:
        return self._at(f"reports/{self.task}/augment.png")

    @property
    def augment_check(self) -> Path:
        return self._at(f"reports/{self.task}/augment.json")

    @property
    def models(self) -> Path:
        return self._at(f"models/{self.task}")

    @property
    def best_checkpoint(self) -> Path:
        return self.models / "best.ckpt"

    @property
    def last_checkpoint(self) -> Path:
        return self.models / "last.ckpt"

    @property
    def train_summary(self) -> Path:
        return self.models / "train.json"

    @property
    def train_curves_csv(self) -> Path:
        return self._at(f"plots/{self.task}/train.csv")

    @property
    def train_curves_png(self) -> Path:
        return self._at(f"reports/{self.task}/curves.png")

    @property
    def metrics(self) -> Path:
        return self._at(f"metrics/{self.task}.json")

    @property
    def eval_plots(self) -> Path:
        return self._at(f"plots/{self.task}/eval")

    @property
    def eval_reports(self) -> Path:
        return self._at(f"reports/{self.task}/eval")

    @property
    def registered(self) -> Path:
        return self.models / "registered.json"

    @property
    def pretrained_dir(self) -> Path:
        """What this family's training starts from: a folder in git (so DVC can always depend on
        it) that the ``pretrained@<task>`` stage fills when params.yaml's ``pretrained`` names one."""
        return self._at(f"pretrained/{self.task}")

    @property
    def pretrained_backbone(self) -> Path:
        return self.pretrained_dir / "backbone.pt"

    @property
    def train_scratch(self) -> Path:
        """Resumable checkpoints of unfinished runs, keyed by a hash of what they depend on."""
        return self.root / SCRATCH_DIR / "train" / self.task


def read_stage_json(path: Path, produced_by: str) -> dict:
    """A JSON file an earlier stage wrote; missing: an error naming the command that writes it."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: not found; run `visionflow {produced_by}` first")
    return json.loads(path.read_text())
