"""`delineo data ebhi-seg`: EBHI-Seg's public release layout -> the manifest the trainer reads,
tested on a small fake release built from the bundled EBHI-Seg tiles; and the data folder that
train, convert and bench accuracy default to ($DELINEO_DATA)."""

from __future__ import annotations

import csv
import os
from collections import defaultdict

import numpy as np
import pytest
from conftest import EBHI, run_delineo
from PIL import Image

from app.core.dataset import load_target, read_manifest
from app.core.ebhi_seg import case_of, class_name, split_of

RELEASE_NAMES = {
    "adenocarcinoma": "Adenocarcinoma",
    "high-grade-in": "High-grade IN",
    "low-grade-in": "Low-grade IN",
    "normal": "Normal",
    "polyp": "Polyp",
}


@pytest.fixture
def release(tmp_path):
    """EBHI-SEG/<Class>/image/*.png and label/*.png, as the public archive unpacks; one case
    (2014662) also has an image in a second class, as 66 real cases do."""
    root = tmp_path / "download" / "EBHI-SEG"
    pairs = read_manifest(EBHI)
    for p in pairs:
        folder = root / RELEASE_NAMES[p.cls]
        (folder / "image").mkdir(parents=True, exist_ok=True)
        (folder / "label").mkdir(parents=True, exist_ok=True)
        Image.open(p.image).save(folder / "image" / f"{p.image.stem}.png")
        label = np.asarray(Image.open(p.mask).convert("L"))
        Image.fromarray(np.where(label > 127, 230, 20).astype(np.uint8)).save(
            folder / "label" / f"{p.image.stem}.png"
        )
    extra = root / "Polyp"
    first = next(p for p in pairs if "2014662" in p.image.name)
    Image.open(first.image).save(extra / "image" / "GT2014662-9-400-001.png")
    Image.open(first.mask).save(extra / "label" / "GT2014662-9-400-001.png")
    Image.open(first.image).save(extra / "image" / "GT2099999-1-400-001.png")  # no label: left out
    return root, len(pairs) + 1


def test_release_becomes_a_manifest_split_by_case(tmp_path, release):
    root, n = release
    out = tmp_path / "ebhi-seg"
    r = run_delineo("data", "ebhi-seg", str(root.parent), "--out", str(out), "--val", "0.4", "--test", "0.2")
    assert r.returncode == 0, r.stderr
    assert f"wrote {n} pairs" in r.stdout and "GT2099999-1-400-001.png" in r.stderr
    with (out / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == n
    assert list(rows[0]) == ["image", "mask", "class", "case", "split", "malignant"]
    assert {r["class"] for r in rows} == set(RELEASE_NAMES)
    splits_of_case = defaultdict(set)
    for row in rows:
        splits_of_case[row["case"]].add(row["split"])
        assert row["malignant"] == str(int(row["class"] == "adenocarcinoma"))
        assert row["case"] in row["image"]
    assert all(len(s) == 1 for s in splits_of_case.values())  # no case in two splits
    assert {"train", "val"} <= {r["split"] for r in rows}
    assert len({r["class"] for r in rows if r["case"] == "2014662"}) == 2

    # What the trainer reads: the same pixels, JPEG images, 1-bit masks with the label's white.
    pairs = read_manifest(out, split="train") + read_manifest(out, split="val")
    original = {p.image.stem: p for p in read_manifest(EBHI)}
    for p in pairs:
        with Image.open(p.image) as im:
            assert im.format == "JPEG" and im.size == (224, 224)
        with Image.open(p.mask) as m:
            assert m.mode == "1"
        if p.image.stem in original:
            src = original[p.image.stem]
            assert np.array_equal(load_target(p), load_target(src))
            a = np.asarray(Image.open(p.image), np.float32)
            b = np.asarray(Image.open(src.image), np.float32)
            assert np.abs(a - b).mean() < 3  # re-encoded at quality 92


def test_the_split_is_by_case_number_and_the_same_every_time():
    assert case_of("GTxc2012943-1-400-009") == case_of("GT2012943-3-400-001") == "2012943"
    assert class_name("High-grade IN") == "high-grade-in"
    assert class_name("Serrated adenoma") == "serrated-adenoma"
    cases = [f"{2000000 + i}" for i in range(2000)]
    splits = [split_of(c, 0.12, 0.15) for c in cases]
    assert splits == [split_of(c, 0.12, 0.15) for c in cases]
    share = {s: splits.count(s) / len(splits) for s in ("train", "val", "test")}
    assert abs(share["test"] - 0.15) < 0.03 and abs(share["val"] - 0.12) < 0.03


def test_not_a_release_says_what_was_expected(tmp_path):
    (tmp_path / "random").mkdir()
    (tmp_path / "random" / "a").mkdir()
    (tmp_path / "random" / "b").mkdir()
    r = run_delineo("data", "ebhi-seg", str(tmp_path / "random"), "--out", str(tmp_path / "out"))
    assert r.returncode == 2
    assert "not an EBHI-Seg release" in r.stderr and "image/ and label/" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_a_non_empty_out_folder_is_refused(tmp_path, release):
    out = tmp_path / "full"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    r = run_delineo("data", "ebhi-seg", str(release[0]), "--out", str(out))
    assert (
        r.returncode == 2
        and "not empty" in r.stderr
        and (out / "keep.txt").read_text(encoding="utf-8") == "mine"
    )


def run_without_data(*args):
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "DELINEO_DATA"}
    return subprocess.run(
        [sys.executable, "-m", "app", *args], capture_output=True, text=True, env=env, timeout=120
    )


@pytest.mark.parametrize(
    "command",
    [["train", "--out", "runs/never"], ["bench", "accuracy"], ["convert", "x.pt", "--out", "never"]],
)
def test_commands_needing_data_say_how_to_get_it(command):
    r = run_without_data(*command)
    assert r.returncode == 2, r.stderr
    assert "delineo data ebhi-seg" in r.stderr and "DELINEO_DATA" in r.stderr
    assert "Traceback" not in r.stderr


def test_bench_accuracy_reads_the_folder_named_by_delineo_data(tmp_path):
    import shutil
    import subprocess
    import sys

    shutil.copytree(EBHI, tmp_path / "ebhi-seg")
    env = {**os.environ, "DELINEO_DATA": str(tmp_path)}  # a folder holding ebhi-seg/
    r = subprocess.run(
        [sys.executable, "-m", "app", "bench", "accuracy", "--split", "val", "--json"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "dice" in r.stdout.lower()


def test_a_manifest_read_at_a_downsample_gives_block_means_and_majority_targets():
    """What a coarse model trains on: every tile at 1/4 of its side, the target set where most
    of a 4x4 block is tumour."""
    from app.core.dataset import load_image

    full = next(p for p in read_manifest(EBHI) if p.is_tumour_class)
    coarse = next(p for p in read_manifest(EBHI, downsample=4) if p.image == full.image)
    img, small = load_image(full), load_image(coarse)
    h, w = img.shape[0] // 4, img.shape[1] // 4
    assert small.shape == (h, w, 3)
    block = img[:4, :4].reshape(-1, 3).astype(float).mean(axis=0)
    assert np.abs(small[0, 0].astype(float) - block).max() <= 0.5
    mask, small_mask = load_target(full), load_target(coarse)
    share = mask[: h * 4, : w * 4].reshape(h, 4, w, 4).mean(axis=(1, 3))
    assert small_mask.shape == (h, w) and small_mask.any()
    assert np.array_equal(small_mask.astype(bool), share * 255 > 127)
