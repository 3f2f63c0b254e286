"""Opening real slides in every bundled format, and failing clearly on bad ones."""

from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from conftest import DICOM_DIR, LARGE_MPP, LARGE_SIDE, SAMPLE_SVS, TCGA_SVS

from app.core import resample
from app.core.slide import Slide, SlideError


def test_svs_dimensions_mpp_and_associated_images():
    with Slide.open(SAMPLE_SVS) as s:
        assert s.dimensions == (2220, 2967)
        assert s.level_count == 1
        assert s.mpp == pytest.approx((0.499, 0.499))
        assert s.objective_power == 20
        assert s.vendor == "aperio"
        assert s.associated_image_names == ["label", "macro", "thumbnail"]
        label = s.associated_image("label")
        assert label.ndim == 3 and label.shape[2] == 3 and label.std() > 10


@pytest.mark.parametrize("target", [DICOM_DIR, DICOM_DIR / "level-3-frames-0-1.dcm"])
def test_dicom_series_opens_from_folder_or_any_file(target):
    with Slide.open(target) as s:
        assert s.vendor == "dicom"
        assert s.level_count == 12
        assert s.dimensions == (2220, 2967)
        assert s.level_dimensions[-1] == (1, 1)
        assert s.mpp == pytest.approx((0.499, 0.499))


def test_tcga_two_levels_no_mpp():
    with Slide.open(TCGA_SVS) as s:
        assert s.level_count == 2
        assert s.level_dimensions == [(4443, 3567), (2221, 1783)]
        assert s.mpp is None
        assert s.level_mpp(0) is None
        assert s.info()["mpp"] is None


def test_regions_are_tissue_and_formats_agree():
    """The DICOM conversion of CMU-1 holds the same pixels as the SVS."""
    with Slide.open(SAMPLE_SVS) as svs, Slide.open(DICOM_DIR) as dcm:
        a = svs.read_region(800, 1200, 0, 256, 256).astype(np.float32)
        b = dcm.read_region(800, 1200, 0, 256, 256).astype(np.float32)
        assert a.shape == b.shape == (256, 256, 3)
        assert a.std() > 20  # tissue, not glass
        assert np.corrcoef(a.ravel(), b.ravel())[0, 1] > 0.9


def test_outside_the_slide_reads_as_glass():
    with Slide.open(SAMPLE_SVS) as s:
        r = s.read_region(-300, -300, 0, 200, 200)
        assert (r == 255).all()


def test_plain_png_opens(tmp_path):
    from PIL import Image

    with Slide.open(SAMPLE_SVS) as s:
        region = s.read_region(500, 500, 0, 300, 200)
    Image.fromarray(region).save(tmp_path / "crop.png")
    with Slide.open(tmp_path / "crop.png") as p:
        assert p.dimensions == (300, 200)
        assert p.mpp is None
        assert np.array_equal(p.read_region(0, 0, 0, 300, 200), region)


def test_large_pyramid_levels_and_level_choice(large_pyramid):
    with Slide.open(large_pyramid) as s:
        assert s.dimensions == (LARGE_SIDE, LARGE_SIDE)
        assert s.level_count >= 4
        assert s.mpp == pytest.approx((LARGE_MPP, LARGE_MPP), rel=1e-3)
        assert s.level_downsamples[:4] == pytest.approx([1, 2, 4, 8])
        assert s.best_level_for_downsample(1) == 0
        assert s.best_level_for_downsample(3.9) == 1
        assert s.best_level_for_downsample(4) == 2
        assert s.best_level_for_downsample(1e6) == s.level_count - 1
        # A coarse level is the downsampled level 0, not something else.
        full = s.read_region(0, 0, 0, 896, 896).astype(np.float32)
        coarse = s.read_region(0, 0, 2, 224, 224).astype(np.float32)
        expect = resample.area_downscale(full, (224, 224))
        assert np.abs(coarse - expect).mean() < 12


NOT_A_SLIDE = "not a slide file OpenSlide can read"


@pytest.mark.parametrize(
    "make, reason",
    [
        (lambda d: d / "missing.svs", "no such file"),
        (lambda d: d, "holds no slide"),
        (lambda d: _write(d / "notes.svs", b"this is not a slide\n" * 50), NOT_A_SLIDE),
        (lambda d: _write(d / "notes.txt", b"case 7: re-cut\n"), NOT_A_SLIDE),
        (lambda d: _write(d / "report.pdf", b"%PDF-1.7\n" + b"x" * 5000), NOT_A_SLIDE),
        (lambda d: _write(d / "notes.png", b"this is not an image\n" * 50), "not a slide or an image"),
        (lambda d: _truncated(d / "cut.svs", 1_000_000), "damaged or incomplete"),
        (lambda d: _truncated(d / "cut-early.svs", 400_000), "damaged or incomplete"),
        (lambda d: _truncated(d / "cut.png", 0), "not a slide or an image"),
        (lambda d: _truncated(d / "empty.svs", 0), "the file is empty"),
    ],
    ids=[
        "missing", "empty-folder", "text-as-svs", "text-file", "pdf", "text-as-png", "truncated-svs",
        "truncated-svs-early", "empty-png", "empty-svs",
    ],
)  # fmt: skip
def test_bad_inputs_raise_a_clear_slide_error(tmp_path, make, reason):
    path = make(tmp_path)
    with pytest.raises(SlideError) as err:
        Slide.open(path)
    assert str(path) in str(err.value)
    assert reason in str(err.value)
    if "not a slide file" in reason:  # a file that is no slide is not called a damaged one
        assert "damaged" not in str(err.value) and ".svs" in str(err.value) and "DICOM" in str(err.value)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their mode")
def test_unreadable_file(tmp_path):
    p = tmp_path / "locked.svs"
    shutil.copy(SAMPLE_SVS, p)
    p.chmod(0)
    with pytest.raises(SlideError, match="permission denied"):
        Slide.open(p)


def test_bad_tile_does_not_poison_the_rest_of_the_slide(corrupt_pyramid):
    path, bad_xy = corrupt_pyramid
    with Slide.open(path) as s:
        assert s.read_region(0, 0, 0, 512, 512).shape == (512, 512, 3)
        with pytest.raises(SlideError, match="could not be read"):
            s.read_region(*bad_xy, 0, 512, 512)
        # OpenSlide's errors are sticky; the slide must recover for the good tiles.
        assert s.read_region(0, 0, 0, 512, 512).std() > 5


def _write(p, data: bytes):
    p.write_bytes(data)
    return p


def _truncated(p, n: int):
    p.write_bytes(SAMPLE_SVS.read_bytes()[:n])
    return p


def test_close_while_other_threads_read_never_crashes(large_pyramid):
    """OpenSlide aborts the process if its handle is freed under a reader; Slide defers the
    close until reads in flight are done, and later reads get a clear error."""
    import threading
    import time

    s = Slide.open(large_pyramid)
    errors: list[str] = []
    reads = [0]

    def reader(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while True:
            try:
                s.read_region(int(rng.integers(0, 18000)), int(rng.integers(0, 18000)), 0, 512, 512)
                reads[0] += 1
            except SlideError as e:
                errors.append(str(e))
                return

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.3)
    s.close()
    for t in threads:
        t.join(5)
    assert reads[0] > 4
    assert len(errors) == 4 and all("closed" in e for e in errors)
    with pytest.raises(SlideError, match="closed"):
        s.read_region(0, 0, 0, 10, 10)


def test_direct_tile_decoding_is_pixel_identical_to_openslide(large_pyramid):
    """Tiled JPEG TIFFs are decoded without OpenSlide (4x faster); every level it takes gives
    the level's own pixels, edges and outside included: OpenSlide's exactly wherever a request
    starts on a level pixel (a level whose downsample is not whole, 20000 / 313, is compared
    with the page decoded in full: OpenSlide interpolates there)."""
    import openslide
    import tifffile

    for path in (SAMPLE_SVS, large_pyramid):
        with Slide.open(path) as slide, tifffile.TiffFile(path) as tif:
            ref = openslide.OpenSlide(str(path))
            assert slide._direct is not None and 0 in slide._direct.pages, path
            for level, page in slide._direct.pages.items():
                ds = slide.level_downsamples[level]
                lw, lh = slide.level_dimensions[level]
                whole = None
                if max(lw, lh) <= 4096:  # small enough to decode in full, with glass around it
                    whole = np.full((lh + 400, lw + 500, 3), 255, np.uint8)
                    whole[:lh, :lw] = tif.pages[page.index].asarray()[..., :3]
                for lx, ly, w, h in [
                    (0, 0, 300, 200),
                    (lw - 150, lh - 90, 400, 300),
                    (0, 17, 200, 100),
                    (37, 91, 513, 257),
                ]:
                    x, y = round(lx * ds), round(ly * ds)
                    got = slide.read_region(x, y, level, w, h)
                    exact = x == lx * ds and y == ly * ds
                    assert exact or whole is not None, (path, level)  # compared with something
                    if whole is not None:
                        assert np.array_equal(got, whole[ly : ly + h, lx : lx + w]), (path, level, lx, ly)
                    if exact:
                        rgba = np.asarray(ref.read_region((x, y), level, (w, h))).astype(np.int32)
                        want = np.minimum(rgba[..., :3] + (255 - rgba[..., 3:]), 255)
                        assert np.array_equal(got, want), (path, level, lx, ly)
                left = slide.read_region(round(-40 * ds), 0, level, 200, 100)  # left of the slide
                assert (left[:, :40] == 255).all()
                assert np.array_equal(left[:, 40:], slide.read_region(0, 0, level, 160, 100))
            ref.close()


def test_reduced_jpeg_decoding_matches_a_full_read_resized(large_pyramid):
    """A tiled JPEG level read at 1/2 or 1/4 size (as the pipeline reads a 0.5 µm/px slide at
    1 µm/px) is decoded so by libjpeg: the same picture as OpenSlide's full-size pixels shrunk,
    in the same colours and not shifted, for Aperio's RGB JPEG tiles and tifffile's YCbCr ones."""
    for path, level, (x, y, w, h), r in [
        (SAMPLE_SVS, 0, (100, 200, 512, 512), 2),
        (SAMPLE_SVS, 0, (1500, 2300, 512, 512), 2),  # past the bottom edge: white
        (SAMPLE_SVS, 0, (-300, 36, 512, 512), 2),  # left of the slide
        (SAMPLE_SVS, 0, (600, 800, 200, 150), 8),
        (large_pyramid, 1, (4000, 6000, 256, 256), 4),
    ]:
        with Slide.open(path) as slide:
            assert slide.reductions(level) == (1, 2, 4, 8)
            got = slide.read_region(x, y, level, w, h, r)
            cached = slide._direct.decoded.keys()  # (level, tile, reduction) of decoded tiles
            full = slide.read_region(x, y, level, w * r, h * r)
        want = resample.area_downscale(full, (w, h))
        assert got.shape == want.shape == (h, w, 3)
        assert {key[2] for key in cached} == {r}, path  # decoded small, not shrunk
        diff = got.astype(np.int32) - want
        assert np.abs(diff.mean(axis=(0, 1))).max() < 1.0, (path, x, y)  # no colour cast
        if path == SAMPLE_SVS:  # real tissue (the pyramid's pasted tiles have hard edges)
            assert np.abs(diff).mean() < 2.0 and np.percentile(np.abs(diff), 95) < 12, (x, y)
        shift = _phase_shift(_grey(want), _grey(got))
        assert np.hypot(*shift) < 0.15, (path, shift)


def _grey(rgb: np.ndarray) -> np.ndarray:
    return rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)


def _phase_shift(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """The sub-pixel translation (dx, dy) between two images: the peak of their normalized
    cross-power spectrum, refined on each axis by the ratio of the larger neighbour to the peak
    (the peak is a sampled sinc; within 0.04 px on the sample shifted by 1/8 to 3/4 px)."""
    cross = np.fft.fft2(a) * np.conj(np.fft.fft2(b))
    r = np.real(np.fft.ifft2(cross / np.maximum(np.abs(cross), 1e-12)))
    h, w = r.shape
    py, px = np.unravel_index(np.argmax(r), r.shape)

    def offset(before: float, peak: float, after: float) -> float:
        return after / (after + peak) if after >= before else -before / (before + peak)

    dy = py + offset(r[(py - 1) % h, px], r[py, px], r[(py + 1) % h, px])
    dx = px + offset(r[py, (px - 1) % w], r[py, px], r[py, (px + 1) % w])
    return float((dx + w / 2) % w - w / 2), float((dy + h / 2) % h - h / 2)


def test_formats_without_a_jpeg_decoder_read_reduced_sizes_by_shrinking():
    """DICOM (and anything OpenSlide reads) offers no reduced sizes, and a reduced read still
    works there: read in full and shrunk."""
    with Slide.open(DICOM_DIR) as slide:
        assert slide.reductions(0) == (1,)
        small = slide.read_region(400, 400, 0, 100, 100, 2)
        full = slide.read_region(400, 400, 0, 200, 200)
    assert small.shape == (100, 100, 3)
    assert abs(float(small.mean()) - float(full.mean())) < 1.0


def test_levels_with_fractional_downsamples_are_decoded_directly(tmp_path):
    """Aperio's levels are rarely whole downsamples (4443 px wide over 2222 is 1.9995). The
    viewer's tiles on such a level are still decoded directly, on the level's own pixels, where
    OpenSlide would interpolate between them; the two look alike."""
    import openslide
    from conftest import tile_mosaic

    from app.core.pyramid_tiff import level_sizes, periodic_source, write_pyramidal_tiff
    from app.core.tile_grid import TileGrid

    path = tmp_path / "odd.tif"
    sizes = level_sizes(4443, 3567, 2, 256)
    write_pyramidal_tiff(path, periodic_source(tile_mosaic(4), sizes), sizes, mpp=0.25)
    with Slide.open(path) as slide:
        assert slide.level_downsamples[1] != 2.0
        grid = TileGrid.for_slide(slide)
        ref = openslide.OpenSlide(str(path))
        for key in [(1, 1, 1), (2, 1, 0), (1, 3, 2)]:
            x, y, level, w, h, r = grid.read_args(key)
            assert r == 1
            got = slide.read_region(x, y, level, w, h)
            lx, ly = key[1] * grid.tile, key[2] * grid.tile  # the level's own pixels, decoded
            assert np.array_equal(got, slide._direct.read(level, lx, ly, w, h))
            assert level in {k[0] for k in slide._direct.decoded.keys()}  # noqa: SIM118 - an LRU, not a dict
            theirs = np.asarray(ref.read_region((x, y), level, (w, h)))[..., :3].astype(np.float32)
            assert np.corrcoef(got.astype(np.float32).ravel(), theirs.ravel())[0, 1] > 0.9
        ref.close()
