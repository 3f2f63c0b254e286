"""`delineo train` and `delineo convert`: the [train] extra's commands."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.arguments import UsageError
from app.cli.progress import stderr_progress


def add_to(sub) -> None:
    t = sub.add_parser("train", help="train the tumour or lesions UNet ([train] extra)")
    t.add_argument(
        "--data",
        default=None,
        help="EBHI-Seg folder (with manifest.csv) or manifest (default: $DELINEO_DATA)",
    )
    t.add_argument("--out", required=True, help="folder for checkpoints and the log")
    t.add_argument("--epochs", type=int, default=20)
    t.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--batch", type=int, default=8)
    t.add_argument("--lr", type=float, default=2e-3)
    t.add_argument("--base", type=int, default=16, help="channels at full resolution")
    t.add_argument(
        "--levels", type=int, default=4, help="resolution levels (tile side a multiple of 2^levels)"
    )
    t.add_argument(
        "--downsample",
        type=int,
        default=1,
        help="train at this many times EBHI-Seg's pixel size (4: a coarse model at 4 µm/px)",
    )
    t.add_argument("--samples-per-epoch", type=int, default=0, help="0: one pass over train")
    t.add_argument(
        "--max-minutes",
        type=float,
        default=55,
        help="stop after the epoch past this many minutes, keeping the best (0: no limit)",
    )
    t.add_argument("--no-amp", action="store_true", help="train in fp32 even where bf16/fp16 is fast")
    t.add_argument(
        "--target",
        choices=["tumour", "lesions"],
        default="tumour",
        help="tumour: one sigmoid channel; lesions: softmax over background, Tumor, "
        "High-grade dysplasia, Other epithelium",
    )
    t.add_argument(
        "--anneal-by-time",
        action="store_true",
        help="run the one-cycle learning-rate schedule over --max-minutes of wall time instead of "
        "over the epochs, and stop when it is spent (for shared or unknown machines)",
    )
    t.add_argument(
        "--init",
        default=None,
        metavar="CHECKPOINT",
        help="start every layer but the output head from this checkpoint (same base and levels)",
    )
    t.set_defaults(run=run_train)

    c = sub.add_parser(
        "convert",
        help="export ONNX, OpenVINO FP16/INT8, ORT INT8 + model card; or --target ascend: FP16 ONNX for ATC",
    )
    c.add_argument("checkpoint", help="a training checkpoint; with --target ascend, a model name or folder")
    c.add_argument("--target", choices=["desktop", "ascend"], default="desktop")
    c.add_argument("--soc-version", default="Ascend910B", help="--target ascend: the NPU for the ATC command")
    c.add_argument("--out", required=True)
    c.add_argument(
        "--data",
        default=None,
        help="EBHI-Seg folder: train tiles calibrate, val tiles validate (default: $DELINEO_DATA)",
    )
    c.add_argument("--calibration-tiles", type=int, default=300)
    c.add_argument("--name", default=None, help="model name (default: the --out folder's name)")
    c.set_defaults(run=run_convert)


def _needs_train_extra(e: ImportError, what: str) -> UsageError:
    return UsageError(f"{what} needs the [train] extra ({e.name} is missing): pip install -e '.[train]'")


def run_train(args: argparse.Namespace) -> int:
    from app.core.dataset import data_folder

    data = data_folder(args.data)  # before torch: a missing folder is said at once
    if args.init and not Path(args.init).is_file():
        raise UsageError(f"--init {args.init}: no such checkpoint; give a best.pt or a model-fp32.pt")
    try:
        from app.model.train import TrainConfig, train
    except ImportError as e:
        raise _needs_train_extra(e, "training") from None
    cfg = TrainConfig(
        data=str(data),
        out=args.out,
        epochs=args.epochs,
        device=args.device,
        seed=args.seed,
        batch=args.batch,
        samples_per_epoch=args.samples_per_epoch,
        max_minutes=args.max_minutes,
        lr=args.lr,
        base=args.base,
        levels=args.levels,
        downsample=args.downsample,
        amp=not args.no_amp,
        target=args.target,
        init=args.init or "",
        anneal_by_time=args.anneal_by_time,
    )
    best = train(cfg, progress=lambda s: print(s, flush=True))
    print(f"best checkpoint: {best}")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    from app.core.dataset import data_folder

    if args.target == "ascend":
        try:
            from app.model.ascend import convert_for_ascend
        except ImportError as e:
            raise _needs_train_extra(e, "conversion") from None
        from app.inference.modelcard import ModelCard

        ModelCard.load(args.checkpoint)  # a wrong model name is the first thing to say
        convert_for_ascend(
            args.checkpoint,
            args.out,
            data=data_folder(args.data),
            soc=args.soc_version,
            progress=stderr_progress,
        )
        return 0
    data = str(data_folder(args.data))
    try:
        from app.model import convert
    except ImportError as e:
        raise _needs_train_extra(e, "conversion") from None
    convert.convert(
        args.checkpoint,
        args.out,
        data=data,
        calibration_tiles=args.calibration_tiles,
        name=args.name,
        progress=stderr_progress,
    )
    return 0
