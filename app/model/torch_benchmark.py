"""The PyTorch FP32 eager row of `delineo bench model` (run in its own process)."""

from __future__ import annotations

import argparse
import json

import torch

from app.inference.benchmark import benchmark_tile, result_row, time_predict
from app.inference.modelcard import ModelCard, to_model_input
from app.model.unet import ResUNet


def load_shipped(card: ModelCard) -> ResUNet:
    """The shipped FP32 weights (a plain state dict: loads with weights_only=True)."""
    blob = torch.load(card.file("torch-fp32"), map_location="cpu", weights_only=True)
    cfg = blob["config"]
    model = ResUNet(cfg["in_channels"], cfg["classes"], cfg["base"], cfg["levels"])
    model.load_state_dict(blob["state_dict"])
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--config", default="torch-fp32")
    p.add_argument("--model", default=None)
    p.add_argument("--tile", type=int, default=512)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=0)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    card = ModelCard.load(a.model)
    model = load_shipped(card)
    batch = benchmark_tile(a.tile)

    @torch.inference_mode()
    def predict(b):
        x = torch.from_numpy(to_model_input(b, card.normalization))
        return torch.sigmoid(model(x))[:, 0].numpy()

    times = time_predict(predict, batch, a.repeats)
    print(json.dumps(result_row("torch-fp32", times, a.tile, card)))


if __name__ == "__main__":
    main()
