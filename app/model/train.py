"""`delineo train`: fit the ResUNet to an EBHI-Seg target on CPU or CUDA: `tumour` (one sigmoid
channel) or `lesions` (softmax over background, tumour, high-grade dysplasia, other epithelium).

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

from app.core.dataset import LESION_CLASSES, TARGETS, Pair, load_image, load_target, read_manifest
from app.errors import DelineoError
from app.inference.evaluation import confusion, exclusive_labels, lesion_metrics
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
    # With the lesions target high-grade IN is a class of its own rather than a hard negative,
    # but it is still the rarest lesion and the one confused with tumour, so the weight stays.
    class_weights: dict = field(default_factory=lambda: {"high-grade-in": 3.0})
    target: str = "tumour"  # or "lesions"
    init: str = ""  # checkpoint whose weights start every layer but the output head
    # The one-cycle schedule over max_minutes of wall time instead of over the epochs, so it
    # anneals fully on a machine whose speed is not known in advance (shared cores).
    anneal_by_time: bool = False
    # Train at `downsample` x EBHI-Seg's pixel size (tiles and crops 1/downsample the side): a
    # coarse model for the adaptive run's first pass (4: 4 µm/px).
    downsample: int = 1
    # Lesions from --init: the kept checkpoint is the best mean foreground Dice among epochs whose
    # Tumor Dice is at most this far below the --init model's (measured before training), since
    # the new classes must not cost the tumour outline more than that.
    tumour_tolerance: float = 0.01


def output_channels(target: str) -> int:
    return len(LESION_CLASSES) if target == "lesions" else 1


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class TileBank:
    """Decoded tiles and targets of one split, grouped by tumour / non-tumour class."""

    def __init__(self, pairs: list[Pair], class_weights: dict | None = None, target: str = "tumour"):
        self.pairs = pairs
        self.target = target
        self.images = [load_image(p) for p in pairs]
        self.targets = [load_target(p, target) for p in pairs]
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
                [(self.images[i], self.targets[i]) for i in idx], cfg.tile // cfg.downsample, rng, scale_range
            )
        else:
            i = self.pick(rng)
            side = cfg.tile // cfg.downsample
            img, mask = augment.augment_single(self.images[i], self.targets[i], side, rng, scale_range)
        return augment.colour(img, rng), mask

    def batch(self, rng: np.random.Generator, cfg: TrainConfig) -> tuple[torch.Tensor, torch.Tensor]:
        imgs, masks = zip(*(self.sample(rng, cfg) for _ in range(cfg.batch)), strict=True)
        x = torch.from_numpy(to_model_input(np.stack(imgs), NORMALIZATION))
        if self.target == "lesions":
            return x, torch.from_numpy(np.stack(masks).astype(np.int64))  # (N, H, W) labels
        y = torch.from_numpy(np.stack(masks)[:, None].astype(np.float32))
        return x, y


class TimedOneCycle:
    """OneCycleLR's shape (warm-up to `max_lr` over the first 15 %, cosine down to 1/250000 of it)
    driven by the elapsed share of a wall-time budget rather than by a step count."""

    def __init__(self, opt: torch.optim.Optimizer, max_lr: float, seconds: float, pct_start: float = 0.15):
        self.opt, self.max_lr, self.seconds, self.pct_start = opt, max_lr, seconds, pct_start

    def lr(self, frac: float) -> float:
        start, end = self.max_lr / 25, self.max_lr / 25 / 1e4
        if frac < self.pct_start:
            a, b, t = start, self.max_lr, frac / self.pct_start
        else:
            a, b, t = self.max_lr, end, (frac - self.pct_start) / (1 - self.pct_start)
        return b + (a - b) * (1 + math.cos(math.pi * min(1.0, t))) / 2

    def step(self, elapsed: float) -> bool:
        """Set the learning rate for this moment; False once the budget is spent."""
        frac = elapsed / self.seconds
        for g in self.opt.param_groups:
            g["lr"] = self.lr(frac)
        return frac < 1.0


def autocast_dtype(device: torch.device):
    """bf16 where the CPU computes it natively (AVX-512 BF16 / AMX), fp16 on CUDA, else None."""
    if device.type == "cuda":
        return torch.float16
    try:
        flags = Path("/proc/cpuinfo").read_text(encoding="utf-8")
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


def ce_dice_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus the mean batch soft Dice of the foreground classes (channel 0 is
    background): cross-entropy alone lets the large background swamp the rare high-grade IN."""
    ce = F.cross_entropy(logits, labels)
    prob = torch.softmax(logits, dim=1)[:, 1:]
    onehot = F.one_hot(labels, logits.shape[1]).permute(0, 3, 1, 2)[:, 1:].to(prob.dtype)
    inter = (prob * onehot).sum(dim=(0, 2, 3))
    dice = 1 - (2 * inter + 1) / (prob.sum(dim=(0, 2, 3)) + onehot.sum(dim=(0, 2, 3)) + 1)
    return ce + dice.mean()


@torch.no_grad()
def evaluate_lesions(model: ResUNet, bank: TileBank, device: torch.device, batch: int = 16) -> dict:
    """Per-class Dice under the runtime's decision rule, and high-grade IN called tumour; the
    checkpoint is chosen by the mean foreground Dice (`score`)."""
    model.eval()
    conf = np.zeros((len(LESION_CLASSES), len(LESION_CLASSES)), np.int64)
    for start in range(0, len(bank), batch):
        imgs = np.stack(bank.images[start : start + batch])
        x = torch.from_numpy(to_model_input(imgs, NORMALIZATION)).to(device)
        prob = torch.softmax(model(x).float(), dim=1).cpu().numpy()
        for k, p in enumerate(prob):
            conf += confusion(bank.targets[start + k], exclusive_labels(p), len(LESION_CLASSES))
    return lesion_metrics(conf)


@torch.no_grad()
def evaluate_bank(model: ResUNet, bank: TileBank, device: torch.device, batch: int = 16) -> dict:
    """Pixel-aggregated tumour Dice at 0.5, and the share of non-tumour-class pixels called tumour."""
    if bank.target == "lesions":
        return evaluate_lesions(model, bank, device, batch)
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
    return {"dice": dice, "fp_rate_non_tumour": other_fp / max(1, other_px), "score": dice}


def selection_key(metrics: dict, tumour_floor: float | None) -> tuple[bool, float]:
    """Checkpoints compare by this: first whether Tumor Dice holds `tumour_floor` (when there is
    one), then the score; so a lesions model never trades tumour Dice for the new classes'."""
    holds = tumour_floor is None or metrics["dice"]["Tumor"] >= tumour_floor
    return holds, metrics["score"]


def initialise_from(model: ResUNet, path: str | Path, progress=print) -> None:
    """Every layer but the output head from another checkpoint of the same shape. A one-channel
    (tumour) head seeds the Tumor channel, so a lesions model starts as the binary model."""
    src, _ = load_checkpoint(path)
    state = src.state_dict()
    own = model.state_dict()
    body = {k: v for k, v in state.items() if not k.startswith("head.")}
    mismatch = [k for k, v in body.items() if k not in own or own[k].shape != v.shape]
    if mismatch or len(body) != sum(not k.startswith("head.") for k in own):
        raise CheckpointError(
            f"{path}: --init needs a ResUNet of the same base and levels ({model.config}); "
            f"it has {src.config}"
        )
    model.load_state_dict({**own, **body})
    head_w, head_b = state["head.weight"], state["head.bias"]
    if head_w.shape[0] == 1 and model.config["classes"] == len(LESION_CLASSES):
        with torch.no_grad():
            tumour = LESION_CLASSES.index("Tumor")
            model.head.weight.zero_()
            model.head.bias.fill_(-4.0)  # the new classes start rare
            model.head.bias[0] = 0.0  # background: the sigmoid's implicit 0 logit
            model.head.weight[tumour] = head_w[0]
            model.head.bias[tumour] = head_b[0]
    elif head_w.shape == model.head.weight.shape:
        model.head.load_state_dict({"weight": head_w, "bias": head_b})
    progress(f"initialised from {path} ({src.config['classes']}-channel head)")


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

    if cfg.target not in TARGETS:
        raise DelineoError(f"--target {cfg.target}: not one of {', '.join(TARGETS)}")
    t_load = time.time()
    k = cfg.downsample
    train_bank = TileBank(read_manifest(cfg.data, "train", k), cfg.class_weights, cfg.target)
    val_bank = TileBank(read_manifest(cfg.data, "val", k), target=cfg.target)
    progress(f"loaded {len(train_bank)} train / {len(val_bank)} val tiles in {time.time() - t_load:.1f}s")

    model = ResUNet(classes=output_channels(cfg.target), base=cfg.base, levels=cfg.levels)
    if cfg.init:
        initialise_from(model, cfg.init, progress)
    model = model.to(device).to(memory_format=torch.channels_last)
    loss_fn = ce_dice_loss if cfg.target == "lesions" else dice_bce_loss
    amp_dtype = autocast_dtype(device) if cfg.amp else None
    if amp_dtype is not None:
        progress(f"mixed precision: {amp_dtype} autocast on {device.type}")
    progress(f"ResUNet base={cfg.base} levels={cfg.levels}: {count_parameters(model):,} parameters")
    steps_per_epoch = max(1, math.ceil((cfg.samples_per_epoch or len(train_bank)) / cfg.batch))
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    if cfg.anneal_by_time and not cfg.max_minutes:
        raise DelineoError("--anneal-by-time needs --max-minutes (the time the schedule runs over)")
    sched = torch.optim.lr_scheduler.OneCycleLR(
        opt, max_lr=cfg.lr, total_steps=steps_per_epoch * cfg.epochs, pct_start=0.15
    )
    timed = TimedOneCycle(opt, cfg.lr, cfg.max_minutes * 60) if cfg.anneal_by_time else None
    rng = np.random.default_rng(cfg.seed)
    history = []
    best = (False, -1.0)
    log_path = out / "train.jsonl"
    log_path.write_text("", encoding="utf-8")
    tumour_floor = None
    if cfg.target == "lesions" and cfg.init:
        start = evaluate_bank(model, val_bank, device)
        tumour_floor = start["dice"]["Tumor"] - cfg.tumour_tolerance
        with log_path.open("a") as f:
            f.write(json.dumps({"epoch": 0, **{f"val_{k}": v for k, v in start.items()}}) + "\n")
        progress(
            f"--init model: val Tumor Dice {start['dice']['Tumor']:.4f}; "
            f"keeping epochs at or above {tumour_floor:.4f}"
        )
    t0 = time.time()
    for epoch in range(1, cfg.epochs + 1):
        model.train()
        losses = []
        for _ in range(steps_per_epoch):
            if timed is not None and not timed.step(time.time() - t0):
                break  # time is up: validate this partial epoch, then stop
            x, y = train_bank.batch(rng, cfg)
            x, y = x.to(device).contiguous(memory_format=torch.channels_last), y.to(device)
            with torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                logits = model(x)
            loss = loss_fn(logits.float(), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if timed is None:
                sched.step()
            losses.append(loss.item())
        metrics = evaluate_bank(model, val_bank, device)
        row = {
            "epoch": epoch,
            "loss": float(np.mean(losses)),
            **{f"val_{k}": v for k, v in metrics.items()},
            "lr": opt.param_groups[0]["lr"],
            "elapsed_s": round(time.time() - t0, 1),
        }
        history.append(row)
        with log_path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        key = selection_key(metrics, tumour_floor)
        improved = key > best
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
            best = key
            torch.save(ckpt, out / "best.pt")
        if cfg.target == "lesions":
            said = "  ".join(f"{k} {v:.4f}" for k, v in metrics["dice"].items())
            said = f"val Dice {said}  HGIN called Tumor {metrics['hgin_called_tumour']:.4f}"
        else:
            said = f"val Dice {metrics['dice']:.4f}  FP rate (non-tumour) {metrics['fp_rate_non_tumour']:.4f}"
        progress(
            f"epoch {epoch}/{cfg.epochs}  loss {row['loss']:.4f}  {said}"
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
