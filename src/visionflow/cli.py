"""``visionflow <stage> --task <task>``: argument parsing only; the stages do the work.

Heavy libraries are imported by the stage that needs them, so ``--help`` and
light stages start fast.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
from pathlib import Path

from visionflow.stages import TASK_STAGES

STAGE_HELP = {
    "acquire": "fetch the datasets under acquire.datasets into data/raw/",
    "synthesize": "render the family's synthetic dataset into data/synthetic/<task>/",
    "augment": "preview augmentations (reports/<task>/augment.png) and check label alignment",
    "train": "train with Lightning; checkpoints into models/<task>/, curves into plots/<task>/",
    "evaluate": "score the best checkpoint on the test split into metrics/<task>.json",
    "register": "log the model to MLflow, register a version, move the alias on improvement",
    "pretrained": "hand <task> the backbone params.yaml's pretrained.<task> names (pretrained/<task>/)",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="visionflow", description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml", type=Path,
                        help="params file (default: ./params.yaml); its folder is the project root")
    sub = parser.add_subparsers(dest="command", required=True, metavar="command")
    acquire = sub.add_parser("acquire", help=STAGE_HELP["acquire"])
    acquire.add_argument("--no-progress", action="store_true")
    for stage in TASK_STAGES:
        stage_parser = sub.add_parser(stage, help=STAGE_HELP[stage])
        stage_parser.add_argument("--task", required=True, help="task family, e.g. segmentation")
        if stage == "synthesize":
            stage_parser.add_argument("--workers", type=int, default=None, metavar="N",
                                      help="render processes (default: every core); the files are the same "
                                           "for any N")
    pretrained = sub.add_parser("pretrained", help=STAGE_HELP["pretrained"])
    pretrained.add_argument("--task", required=True, help="the family that starts from the backbone")
    predict = sub.add_parser("predict", help="run a trained model on your own files")
    predict.add_argument("--task", required=True)
    predict.add_argument("--model", help="a checkpoint (default: models/<task>/best.ckpt) or an "
                         "MLflow model URI such as models:/visionflow-<task>@champion")
    predict.add_argument("--detector", help="pose: the detection model whose boxes are cropped, a checkpoint or "
                         "a models:/ URI; 'none': each image is one box (default: models/detection/best.ckpt "
                         "if the project has one)")
    predict.add_argument("--out", type=Path, default=Path("predictions"), help="output folder")
    predict.add_argument("inputs", nargs="+", type=Path, help="input files (e.g. images)")
    serve = sub.add_parser("serve", help="answer POST /invocations (an image, or a stereo pair) with the model's "
                           "output as JSON (docs/serving.md)")
    serve.add_argument("--task", required=True)
    serve.add_argument("--model", help="as for predict (default: models/<task>/best.ckpt)")
    serve.add_argument("--detector", help="pose: as for predict")
    serve.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    serve.add_argument("--port", type=int, default=8080, help="default: 8080; 0: any free port")
    export = sub.add_parser("export", help="write a trained model as ONNX (docs/export.md)")
    export.add_argument("--task", required=True)
    export.add_argument("--format", choices=("onnx",), default="onnx")
    export.add_argument("--model", help="as for predict (default: models/<task>/best.ckpt)")
    export.add_argument("--out", type=Path, help="default: models/<task>/onnx/model.onnx")
    coco = sub.add_parser("coco-eval", help="score a COCO results file against COCO ground truth "
                          "(prints JSON; no params file needed)")
    coco.add_argument("ground_truth", type=Path)
    coco.add_argument("results", type=Path)
    coco.add_argument("--iou-type", choices=("bbox", "segm", "keypoints"), default="bbox")
    coco.add_argument("--max-dets", type=int, nargs="+", help="default: 1 10 100 (keypoints: 20)")
    coco.add_argument("--sigmas", type=float, nargs="+", help="per-keypoint OKS sigmas")
    coco.add_argument("--backend", choices=("faster", "pycocotools"), default="faster",
                      help="faster-coco-eval (default) or the pycocotools reference; same numbers")
    sub.add_parser("check-params", help="validate the params file and print the enabled tasks")
    dag = sub.add_parser("dag", help="write dvc.yaml for the params file (stages, params, deps, outs)")
    dag.add_argument("--check", action="store_true", help="write nothing; fail, naming what differs, if dvc.yaml "
                     "is not what `visionflow dag` would write")
    lineage = sub.add_parser("lineage", help="print where a registered model came from: commit, data hashes, "
                             "params hash, backbone, and the commands that rebuild it")
    lineage.add_argument("model", help="models:/<name>@<alias> or models:/<name>/<version>, "
                         "e.g. models:/visionflow-segmentation@champion")
    sub.add_parser("report", help="write reports/index.html (every family's headline metrics, curves, overlays, "
                   "champion and lineage) and print the headline table")
    sub.add_parser("summary", help="print every family's headline metrics against target and baseline")
    profile = sub.add_parser("profile", help="print a profile's keys (e.g. params.gpu.yaml) as `dvc exp run` "
                             "flags: dvc exp run $(visionflow profile params.gpu.yaml)")
    profile.add_argument("profile", type=Path, help="a YAML file of params keys to override")
    return parser


def run_coco_eval(args: argparse.Namespace) -> dict:
    from visionflow.coco_eval import evaluate_coco

    result = evaluate_coco(args.ground_truth, args.results, args.iou_type, args.max_dets, args.sigmas,
                           args.backend)
    return {"iou_type": result.iou_type, "max_dets": list(result.max_dets), **result.stats,
            "per_class_AP": result.per_class_ap}


def load_model(params, root: Path, task: str, model_ref: str):
    """The exported model of ``task`` from a checkpoint path or an MLflow model URI.

    A checkpoint is enough on its own (no params file, no dataset). An MLflow model in
    pickle format runs code from its file when loaded: see the README.
    """
    from visionflow.tasks import get_task

    if "://" in model_ref or model_ref.startswith("models:/"):
        from visionflow.tracking import load_pytorch_model

        # Without a params file: MLFLOW_TRACKING_URI or MLflow's default.
        return load_pytorch_model(model_ref, params.tracking if params is not None else None, root)
    family = get_task(task)
    return family.inference_module(family.load_module(Path(model_ref)))


def run_profile(params_path: Path, profile: Path) -> None:
    """Print ``-S key=value`` for each key of ``profile`` (values as compact JSON, no spaces, so
    the shell splits them as flags); nothing else goes to stdout."""
    from visionflow.config import profile_overrides

    flags = [f"-S {key}={json.dumps(value, separators=(',', ':'))}"
             for key, value in profile_overrides(params_path, profile).items()]
    print(" ".join(flags))
    return None


def _model_to_run(params, root: Path, args: argparse.Namespace):
    """What ``predict`` and ``serve`` share: the family, the model (``--model`` or the best
    checkpoint) and its reference, the device, and pose's detector option."""
    import torch

    from visionflow.config import ConfigError
    from visionflow.paths import TaskPaths
    from visionflow.runtime import device_type
    from visionflow.tasks import get_task

    if args.detector is not None and args.task != "pose":
        raise ConfigError(f"--detector: only pose crops boxes from a detector, not {args.task}")
    try:
        family = get_task(args.task)
    except KeyError as exc:
        raise ConfigError(f"--task: {exc.args[0]}") from None
    model_ref = args.model or str(TaskPaths(args.task, root).best_checkpoint)
    model = load_model(params, root, args.task, model_ref)
    device = torch.device(device_type(params.trainer.accelerator if params is not None else "auto"))
    options = {}
    if args.detector is not None:
        options["detector"] = (None if args.detector == "none" else
                               load_model(params, root, "detection", args.detector).to(device).eval())
    return family, model, model_ref, device, options


def run_predict(params, root: Path, args: argparse.Namespace) -> dict:
    """``params``: None when the folder has no params file (a checkpoint is all predict needs)."""
    family, model, model_ref, device, options = _model_to_run(params, root, args)
    written = family.predict(model, args.inputs, args.out, device, **options)
    return {"model": model_ref, "written": [str(p) for p in written]}


def run_serve(params, root: Path, args: argparse.Namespace) -> None:
    """Load the model as ``predict`` does, then serve it until interrupted."""
    from visionflow.serve import serve

    family, model, model_ref, device, options = _model_to_run(params, root, args)
    serve(family, model, device, args.host, args.port, options, model_ref)
    return None


def run_dag(params, root: Path, check: bool) -> dict:
    from visionflow import dag
    from visionflow.config import ConfigError

    if check:
        difference = dag.difference(root, params)
        if difference is not None:
            raise ConfigError(difference)
        return {"dvc.yaml": "up to date"}
    return {"dvc.yaml": str(root / dag.DVC_YAML), "written": dag.write(root, params)}


def run_export(params, root: Path, args: argparse.Namespace) -> dict:
    """ONNX of a checkpoint or a ``models:/`` URI (loaded by :func:`load_model`). The example
    input that traces it comes from the family's test split, shaped by the project's checkpoint
    when the model is a URI (an MLflow model carries no dataset)."""
    import dataclasses

    from visionflow.export import export_onnx
    from visionflow.paths import TaskPaths
    from visionflow.tasks import get_task

    family, section, paths = get_task(args.task), params.task(args.task), TaskPaths(args.task, root)
    model_ref = args.model or str(paths.best_checkpoint)
    data_root = paths.data_root(section.data.source)
    if "://" in model_ref or model_ref.startswith("models:/"):
        example = family.export(family.load_module(paths.best_checkpoint), data_root)
        exported = dataclasses.replace(example, module=load_model(params, root, args.task, model_ref))
    else:
        exported = family.export(family.load_module(Path(model_ref)), data_root)
    written = export_onnx(exported, args.out or paths.onnx_model)
    return {"model": model_ref, "onnx": str(written.path), "exporter": written.exporter,
            **({"dynamo_error": written.dynamo_error} if written.dynamo_error else {})}


def run_lineage(params, root: Path, model_uri: str) -> None:
    from visionflow.config import ConfigError
    from visionflow.lineage import describe
    from visionflow.tracking import model_version

    try:
        version = model_version(model_uri, params.tracking, root)
    except LookupError as exc:
        raise ConfigError(str(exc)) from None
    print(describe(version, root))
    return None


def user_errors() -> tuple[type[Exception], ...]:
    """Errors about the user's files and params: shown as one clear line, no traceback."""
    from visionflow.config import ConfigError
    from visionflow.data.acquire import AcquireError
    from visionflow.data.coco import CocoFormatError
    from visionflow.data.disparity import DisparityFormatError
    from visionflow.data.images import ImageReadError
    from visionflow.models.backbones import BackboneMismatchError
    from visionflow.models.checkpoints import CheckpointError

    from visionflow.coco_eval import CocoResultsError

    return (ConfigError, CocoFormatError, CocoResultsError, ImageReadError, AcquireError, FileNotFoundError,
            BackboneMismatchError, DisparityFormatError, CheckpointError)


def one_line(exc: BaseException) -> str:
    """The message of ``exc``, as one line where it came from a loader process.

    An error raised in a DataLoader worker process comes back re-raised as the same type with
    "Caught X in DataLoader worker process N." and the worker's traceback as its message; its
    last line holds the original message.
    """
    text = str(exc)
    if "Original Traceback" not in text:
        return text
    last = [line for line in text.splitlines() if line.strip()][-1]
    prefix = f"{type(exc).__name__}: "
    return last.split(prefix, 1)[1] if prefix in last else last


def dispatch(args: argparse.Namespace) -> dict:
    """Run one command; returns what it computed (printed as JSON)."""
    from visionflow.config import ConfigError, load_params

    if args.command == "coco-eval":
        return run_coco_eval(args)
    params_path = args.params.resolve()
    root = params_path.parent
    if args.command == "predict":
        # A checkpoint is all predict needs: a folder holding only a model file will do.
        return run_predict(load_params(params_path) if params_path.is_file() else None, root, args)
    if args.command == "serve":
        return run_serve(load_params(params_path) if params_path.is_file() else None, root, args)
    params = load_params(params_path)
    if args.command == "check-params":
        return {"tasks": params.tasks}
    if args.command == "profile":
        return run_profile(params_path, args.profile)
    if args.command == "dag":
        return run_dag(params, root, args.check)
    if args.command == "lineage":
        return run_lineage(params, root, args.model)
    if args.command == "export":
        return run_export(params, root, args)
    if args.command == "summary":
        from visionflow.stages.report import summary

        print(summary(params, root))
        return None
    if os.environ.get("DVC_STAGE"):  # run by `dvc repro`: refuse a dvc.yaml made for other params
        from visionflow import dag

        stale = dag.difference(root, params)
        if stale is not None:
            raise ConfigError(f"{stale} (plain `dvc repro` does not rewrite it; `make repro` does)")
    stage = importlib.import_module(f"visionflow.stages.{args.command}")
    if args.command == "acquire":
        return stage.run(params, root, progress=not args.no_progress)
    if args.command == "report":
        return stage.run(params, root)
    params.task(args.task)  # fails early, naming the task, if it is not enabled
    if args.command == "synthesize":
        if args.workers is not None and args.workers < 1:
            raise ConfigError(f"--workers: must be >= 1 (got {args.workers})")
        return stage.run(params, args.task, root, workers=args.workers)
    return stage.run(params, args.task, root)


def main(argv: list[str] | None = None) -> int:
    from visionflow.config import ConfigError

    args = build_parser().parse_args(argv)
    try:
        result = dispatch(args)
    except ConfigError as exc:
        print(f"visionflow: {one_line(exc)}", file=sys.stderr)
        return 2
    except user_errors() as exc:
        print(f"visionflow: error: {one_line(exc)}", file=sys.stderr)
        return 1
    if result is not None:
        print(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
