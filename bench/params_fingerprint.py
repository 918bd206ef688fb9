"""Fingerprint of tiny training runs: hashes of each family's weights after init and after one epoch.

Used to show that a refactor keeps training byte-identical (same RNG draws, init order and
hyperparameter values). Run before and after a change and compare the printed hashes:

    .venv/bin/python bench/params_fingerprint.py [family ...]

The tiny params are the tests' (``tests/conftest.py`` TINY_OVERRIDES), on the CPU.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

FAMILIES = ("stereo", "instance_segmentation", "detection", "segmentation", "pose", "selfsup")
VARIANTS = {"detection-retinanet": ("detection", {"model": {"name": "retinanet"}})}


def state_hash(module) -> str:
    digest = hashlib.sha256()
    for key, tensor in module.state_dict().items():
        digest.update(key.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def fingerprint(name: str, family_name: str, overrides: dict) -> dict[str, str]:
    import lightning as L

    from conftest import tiny_params_dict
    from visionflow.config import parse_params
    from visionflow.paths import TaskPaths
    from visionflow.tasks import get_task
    from visionflow.training import build_trainer

    params_all = parse_params(tiny_params_dict(**{family_name: overrides}))
    params = params_all.task(family_name)
    family = get_task(family_name)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        data_root = TaskPaths(family_name, root).synthetic
        family.synthesize(params, data_root, progress=False, workers=1)
        L.seed_everything(params.train.seed, workers=True, verbose=False)
        datamodule = family.datamodule(params, data_root, params_all.trainer)
        module = family.module(params, datamodule)
        initial = state_hash(module)
        trainer = build_trainer(params_all.trainer, 1, root / "scratch", [])
        trainer.fit(module, datamodule.train_dataloader(), datamodule.val_dataloader())
        hparams = json.dumps(dict(module.hparams), sort_keys=True, default=repr)
        return {"init": initial, "trained": state_hash(module),
                "hparams": hashlib.sha256(hparams.encode()).hexdigest()[:16]}


def main(names: list[str]) -> None:
    runs = {f: (f, {}) for f in FAMILIES} | VARIANTS
    for name in names or list(runs):
        family_name, overrides = runs[name]
        print(name, fingerprint(name, family_name, overrides), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
