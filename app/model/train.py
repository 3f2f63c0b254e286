"""`delineo train`: fit the ResUNet to the EBHI-Seg tumour target on CPU or CUDA.

Training tiles are held in memory (1.6 k tiles of 224² are 250 MB) so the two cores of a
laptop-class machine spend their time in convolutions, not JPEG decoding.
"""

from __future__ import annotations

import json
import logging
import math
import random
import re
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.core.dataset import Pair, load_image, load_target, read_manifest
from app.errors import DelineoError
from app.inference.modelcard import NORMALIZATION, to_model_input
from app.model import augment
from app.model.unet import ResUNet, count_parameters

log = logging.getLogger(__name__)


@dataclass
class TrainConfig:
    data: str
    out: str
    epochs: int = 20
    batch: int = 8
    tile: int = 224
    lr: float = 2e-3
    weight_decay: float = 1e-4
    base: int = 16
    levels: int = 4
    seed: int = 0
    device: str = "cpu"
    samples_per_epoch: int = 0  # 0 = one pass over the training tiles
    mosaic_p: float = 0.6
    max_minutes: float = 55.0  # stop after the epoch that crosses it (0 = no limit)
    threads: int = 0  # 0 = torch default
    amp: bool = True  # bf16 autocast on CPUs with native BF16, fp16 on CUDA; weights stay fp32
    # Hard negatives: high-grade IN is the class the model confuses with adenocarcinoma (a first
    # run called 45% of its val pixels tumour, against <3% for the other benign classes), and it
    # is only 8% of train; it is drawn this many times more often.
    class_weights: dict = field(default_factory=lambda: {"high-grade-in": 3.0})


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TileBank:
    """Decoded tiles and tumour targets of one split, grouped by tumour / non-tumour class."""

    def __init__(self, pairs: list[Pair], class_weights: dict | None = None):
        self.pairs = pairs
        self.images = [load_image(p) for p in pairs]
        self.targets = [load_target(p) for p in pairs]
        self.tumour = [i for i, p in enumerate(pairs) if p.is_tumour_class]
        self.other = [i for i, p in enumerate(pairs) if not p.is_tumour_class]
        w = np.array([(class_weights or {}).get(p.cls, 1.0) for p in pairs], np.float64)
        self._weights = {
            None: w / w.sum(),
            True: _normalized(w, self.tumour),
            False: _normalized(w, self.other),
        }

    def __len__(self) -> int:
        return len(self.pairs)

    def pick(self, rng: np.random.Generator, tumour: bool | None = None) -> int:
        """A tile index, by class weight; `tumour` restricts to tumour / non-tumour classes."""
        p = self._weights[tumour]
        if p is None:  # no tile of that kind in this bank
            p = self._weights[None]
        return int(rng.choice(len(self.pairs), p=p))

    def sample(self, rng: np.random.Generator, cfg: TrainConfig) -> tuple[np.ndarray, np.ndarray]:
        scale_range = (0.8, 1.25)
        if rng.random() < cfg.mosaic_p:
            # At least one tumour and one non-tumour crop, so every mosaic holds a border.
            idx = [self.pick(rng, True), self.pick(rng, False), self.pick(rng), self.pick(rng)]
            rng.shuffle(idx)
            img, mask = augment.mosaic(
                [(self.images[i], self.targets[i]) for i in idx], cfg.tile, rng, scale_range
            )
        else:
            i = self.pick(rng)
            img, mask = augment.augment_single(self.images[i], self.targets[i], cfg.tile, rng, scale_range)
        return augment.colour(img, rng), mask

    def batch(self, rng: np.random.Generator, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
        imgs, masks = zip(*(self.sample(rng, cfg) for _ in range(cfg.batch)), strict=True)
        x = torch.from_numpy(to_model_input(np.stack(imgs), NORMALIZATION))
        y = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))
        return x, y


def autocast_dtype(device: torch.device):
    """bf16 where the CPU computes it natively (AVX-512 BF16 / AMX), fp16 on CUDA, else None."""
    if device.type == "cuda":
        return torch.float16
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        flags = ""
    return torch.bfloat16 if ("avx512_bf16" in flags or "amx_bf16" in flags) else None


def _normalized(w: np.ndarray, subset: list[int]) -> np.ndarray | None:
    if not subset:
        return None
    out = np.zeros_like(w)
    out[subset] = w[subset]
    return out / out.sum()


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """BCE for per-pixel calibration plus batch soft Dice for overlap; Dice alone is unstable
    on batches without tumour, BCE alone under-weights small tumour areas."""
    bce = F.binary_cross_entropy_with_logits(logits, target)
    prob = torch.sigmoid(logits)
    inter = (prob * target).sum()
    dice = 1 - (2 * inter + 1) / (prob.sum() + target.sum() + 1)
    return bce + dice


@torch.no_grad()
def evaluate_bank(model: ResUNet, bank: TileBank, device: torch.device, batch: int = 16) -> dict:
    """Pixel-aggregated tumour Dice at 0.5, and the share of non-tumour-class pixels called tumour."""
    model.eval()
    tp = fp = fn = 0
    other_fp = other_px = 0
    for start in range(0, len(bank), batch):
        imgs = np.stack(bank.images[start : start + batch])
        x = torch.from_numpy(to_model_input(imgs, NORMALIZATION)).to(device)
        pred = (torch.sigmoid(model(x))[:, 0] > 0.5).cpu().numpy()
        for k, p in enumerate(pred):
            i = start + k
            t = bank.targets[i].astype(bool)
            tp += int((p & t).sum())
            fp += int((p & ~t).sum())
            fn += int((~p & t).sum())
            if i not in bank.tumour:
                other_fp += int(p.sum())
                other_px += p.size
    dice = 2 * tp / max(1, 2 * tp + fp + fn)
    return {"dice": dice, "fp_rate_non_tumour": other_fp / max(1, other_px)}


def train(cfg: TrainConfig, progress=print) -> Path:
    """Train and return the path of the best checkpoint (by val Dice)."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    seed_everything(cfg.seed)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: no CUDA device is visible to torch; use --device cpu")

    t_load = time.time()
    train_bank = TileBank(read_manifest(cfg.data, "train"), cfg.class_weights)
    val_bank = TileBank(read_manifest(cfg.data, "val"))
    progress(f"loaded {len(train_bank)} train / {len(val_bank)} val tiles in {time.time() - t_load:.1f}s")

    model = ResUNet(base=cfg.base, levels=cfg.levels).to(device).to(memory_format=torch.channels_last)
    amp_dtype = autocast_dtype(device) if cfg.amp else None
    if amp_dtype is not None:
        progress(f"mixed precision: {amp_dtype} autocast on {device.type}")
    progress(f"ResUNet base={cfg.base} levels={cfg.levels}: {count_parameters(model):,} parameters")
    steps_per_epoch = max(1, math.ceil((cfg.samples_per_epoch or len(train_bank)) / cfg.batch))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=steps_per_epoch * cfg.epochs, pct_start=0.15
    )
    rng = np.random.default_rng(cfg.seed)
    history = []
    best = -1.0
    t0 = time.time()
    log_path = out / "train.jsonl"
    log_path.write_text("")
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        losses = []
        for _ in range(steps_per_epoch):
            x, y = train_bank.batch(rng, cfg)
            x, y = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
            loss = dice_bce_loss(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            losses.append(loss.item())
        metrics = evaluate_bank(model, val_bank, device)
        row = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            "val_dice": metrics["dice"],
            "val_fp_rate_non_tumour": metrics["fp_rate_non_tumour"],
            "lr": sched.get_last_lr()[0],
            "elapsed_s": round(time.time() - t0, 1),
        }
        history.append(row)
        with log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        improved = metrics["dice"] > best
        ckpt = {
            "state_dict": model.state_dict(),
            "config": model.config,
            # Plain data only, so that `load_checkpoint` can refuse anything else (weights_only).
            "train_config": json.loads(json.dumps(asdict(cfg), default=str)),
            "normalization": NORMALIZATION,
            "epoch": epoch,
            "val": metrics,
            "history": history,
        }
        torch.save(ckpt, out / "last.pt")
        if improved:
            best = metrics["dice"]
            torch.save(ckpt, out / "best.pt")
        progress(
            f"epoch {epoch}/{cfg.epochs}  loss {row['loss']:.4f}  val Dice {metrics['dice']:.4f}"
            f"  FP rate (non-tumour) {metrics['fp_rate_non_tumour']:.4f}"
            f"  {row['elapsed_s']:.0f}s{'  *best' if improved else ''}"
        )
        if cfg.max_minutes and time.time() - t0 > cfg.max_minutes * 60 and epoch < cfg.epochs:
            progress(f"stopping after epoch {epoch}: --max-minutes {cfg.max_minutes} reached")
            break
    return out / "best.pt"


class CheckpointError(DelineoError):
    """A checkpoint that cannot be loaded safely; the message names the file."""


def load_checkpoint(path: str | Path) -> tuple[ResUNet, dict]:
    """A checkpoint written by `train`: tensors and plain data only. Loading never unpickles
    arbitrary objects (`weights_only=True`), so a crafted .pt cannot run code here."""
    import pickle

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; give the best.pt that delineo train wrote")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        what = f" ({found.group(1)})" if found else ""
        raise CheckpointError(
            f"{path}: refused: it holds Python objects{what} besides tensors and plain data, and "
            "loading those could run code; use a checkpoint written by delineo train"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint ({type(e).__name__})") from None
    try:
        cfg = ckpt["config"]
        model = ResUNet(cfg["in_channels"], cfg["classes"], cfg["base"], cfg["levels"])
        model.load_state_dict(ckpt["state_dict"])
    except (KeyError, TypeError, RuntimeError) as e:
        raise CheckpointError(f"{path}: not a Delineo training checkpoint ({_first_line(e)})") from None
    model.eval()
    return model, ckpt


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0][:200] if text else "") or type(e).__name__
