"""Sources of any kind and size: image trees in every format and colour mode, resized or
not, CIFAR-10 exactly as before, CIFAR-100, many classes, and images that declare a
huge size. Every file is made here, tiny."""

from __future__ import annotations

import hashlib
import io
import json
import pickle
import resource
import struct
import subprocess
import sys
import tarfile
import warnings
import zlib
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from PIL import Image, ImageFile

from augmat.errors import AugmatError
from augmat.sources import (CIFAR10_CLASSES, DEFAULT_RESIZE_FILTER, MAX_PIXELS, RESIZE_FILTERS, ImageOptions,
                            holds_image_files, label_dtype, load_source, parse_size)
from conftest import TEST_IMAGES, make_images, write_cifar_archive, write_image_tree

# load_source's sha256 of conftest's sources, computed by augmat before sources took any
# size (commit d7f8f9a's augmat/ run on today's conftest, whose images got their class's
# colour on 2026-12-02): CIFAR-10 must keep giving exactly these.
CIFAR_FIXTURE_SHA256 = "9105ea9728015b21d74b8c8d87a976be3486d26fb1323b1ca2782f262326dbf0"
TREE_FIXTURE_SHA256 = "8f2bf1997e4a15f3f485407d66b3b4a5871a4a7a81f3fcbd2bfff8b2e61630e2"


def tar_of(folder: Path, archive: Path, mode: str = "w:gz") -> Path:
    with tarfile.open(archive, mode) as tar:
        tar.add(folder, arcname=folder.name)
    return archive


def save(image: Image.Image | np.ndarray, path: Path, **kw) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(image, np.ndarray):
        image = Image.fromarray(image)
    image.save(path, **kw)
    return path


def fill(h: int, w: int, rgb) -> np.ndarray:
    return np.broadcast_to(np.array(rgb, np.uint8), (h, w, 3)).copy()


# --- CIFAR-10: exactly what it was -----------------------------------------------------

def test_cifar10_gives_exactly_todays_arrays(tmp_path, cifar_archive):
    src = load_source(cifar_archive, progress=False)
    assert src.sha256 == CIFAR_FIXTURE_SHA256
    assert src.train_images.shape == (300, 32, 32, 3) and src.image_shape == (32, 32, 3)
    assert src.train_images.dtype == np.uint8 and src.train_labels.dtype == np.uint8
    assert src.test_labels.dtype == np.uint8 and src.class_names == CIFAR10_CLASSES
    x, y = write_cifar_archive(tmp_path / "again.tar.gz")  # the same seed: the same arrays
    tx, ty = make_images(TEST_IMAGES, 1)
    np.testing.assert_array_equal(src.train_images, x)
    np.testing.assert_array_equal(src.train_labels, y)
    np.testing.assert_array_equal(src.test_images, tx)
    # The checksum is the documented one: pixels, labels, names (no shape for 32x32x3).
    h = hashlib.sha256()
    for a in (x, y, tx, ty):
        h.update(a.tobytes())
    h.update("\n".join(CIFAR10_CLASSES).encode())
    assert src.sha256 == h.hexdigest()
    assert src.converted == {} and src.resized == 0
    # Options that change nothing change nothing; the extracted folder is the same data.
    assert load_source(cifar_archive, progress=False, options=ImageOptions(size=(32, 32))).sha256 == src.sha256
    with tarfile.open(cifar_archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    folder = load_source(tmp_path / "x", progress=False)
    assert folder.kind == "cifar-python-folder" and folder.sha256 == src.sha256


def test_an_image_tree_of_32x32_pngs_is_what_it_was(tmp_path):
    write_image_tree(tmp_path / "t")
    src = load_source(tmp_path / "t", progress=False)
    assert src.sha256 == TREE_FIXTURE_SHA256 and src.image_shape == (32, 32, 3)


def test_cifar10_resized_and_gray_like_pillow(cifar_archive):
    plain = load_source(cifar_archive, progress=False)
    big = load_source(cifar_archive, progress=False, options=ImageOptions(size=(64, 48)))
    assert big.train_images.shape == (300, 64, 48, 3) and big.test_images.shape == (50, 64, 48, 3)
    assert big.resized == 350 and big.converted == {}
    for i in (0, 299):  # centre crop 32x24 of 32x32, then bicubic up to 48 wide, 64 high
        want = Image.fromarray(plain.train_images[i]).crop((4, 0, 28, 32)).resize((48, 64), Image.BICUBIC)
        np.testing.assert_array_equal(big.train_images[i], np.asarray(want))
    np.testing.assert_array_equal(big.train_labels, plain.train_labels)
    assert big.sha256 != plain.sha256
    gray = load_source(cifar_archive, progress=False, options=ImageOptions(channels=1))
    assert gray.train_images.shape == (300, 32, 32, 1) and gray.converted == {"RGB": 350}
    np.testing.assert_array_equal(gray.test_images[7, ..., 0], np.asarray(Image.fromarray(plain.test_images[7]).convert("L")))
    # On an executor (as a build does): the same pixels.
    with ThreadPoolExecutor(2) as pool, mock.patch("augmat.sources._DECODE_BATCH", 64):
        again = load_source(cifar_archive, progress=False, executor=pool, options=ImageOptions(size=(64, 48)))
    assert again.sha256 == big.sha256


def test_label_mode_coarse_is_only_for_cifar100(tmp_path, cifar_archive):
    with pytest.raises(AugmatError, match="CIFAR-100"):
        load_source(cifar_archive, progress=False, options=ImageOptions(label_mode="coarse"))
    write_image_tree(tmp_path / "t", per_class=1, test_per_class=0)
    with pytest.raises(AugmatError, match="CIFAR-100"):
        load_source(tmp_path / "t", progress=False, options=ImageOptions(label_mode="coarse"))


# --- image trees: formats, archives ---------------------------------------------------

FORMATS = [("a.png", "PNG", {}), ("b.JPG", "JPEG", {"quality": 95}), ("c.jpeg", "JPEG", {"quality": 95}),
           ("d.WebP", "WEBP", {"lossless": True}), ("e.bmp", "BMP", {}), ("f.PNG", "PNG", {})]


def write_format_tree(root: Path) -> dict[str, np.ndarray]:
    """train/<cls>/ with one image per format and suffix spelling, test/<cls>/ with a PNG,
    and files that are no images (ignored). Returns each file's pixels."""
    x, _ = make_images(12, 3)
    pixels, k = {}, 0
    for cls in ("zebra", "ant"):
        for name, fmt, kw in FORMATS:
            pixels[f"train/{cls}/{name}"] = x[k]
            save(x[k], root / "train" / cls / name, format=fmt, **kw)
            k += 1
        save(x[0], root / "test" / cls / "t.png")
        pixels[f"test/{cls}/t.png"] = x[0]
        (root / "train" / cls / "notes.txt").write_text("not an image")
    return pixels


def test_every_format_as_folder_tar_gz_tgz_and_tar(tmp_path):
    pixels = write_format_tree(tmp_path / "mine")
    src = load_source(tmp_path / "mine", progress=False)
    assert src.kind == "image-folder" and src.class_names == ("ant", "zebra")
    assert src.train_images.shape == (12, 32, 32, 3) and src.test_images.shape == (2, 32, 32, 3)
    assert src.train_labels.tolist() == [0] * 6 + [1] * 6 and src.train_labels.dtype == np.uint8
    # Class, then file name order (a.png, b.JPG, c.jpeg, d.WebP, e.bmp, f.PNG); lossless formats exact.
    for i, (name, fmt, _) in enumerate(FORMATS):
        want = pixels[f"train/ant/{name}"].astype(int)
        got = src.train_images[i].astype(int)
        if fmt == "JPEG":  # lossy: as Pillow decodes the file, and near what was saved
            np.testing.assert_array_equal(got, np.asarray(Image.open(tmp_path / "mine" / "train" / "ant" / name)))
            assert np.abs(got - want).mean() < 8, name
        else:
            np.testing.assert_array_equal(got, want, err_msg=name)
    assert src.converted == {} and src.resized == 0
    for archive, mode in (("mine.tar.gz", "w:gz"), ("mine.tgz", "w:gz"), ("mine.tar", "w")):
        a = load_source(tar_of(tmp_path / "mine", tmp_path / archive, mode), progress=False)
        assert a.kind == "image-archive" and a.sha256 == src.sha256, archive
        assert holds_image_files(tmp_path / archive)


# --- sizes ---------------------------------------------------------------------------

def test_a_mixed_size_tree_without_a_size_is_one_error_naming_the_file(tmp_path):
    write_image_tree(tmp_path / "t", per_class=3, test_per_class=1, classes=("cat", "dog"))
    odd = save(fill(30, 40, (9, 9, 9)), tmp_path / "t" / "train" / "dog" / "0001.png")
    save(fill(30, 40, (9, 9, 9)), tmp_path / "t" / "train" / "dog" / "0002.png")
    archive = tar_of(tmp_path / "t", tmp_path / "t.tar.gz")
    for source, name in ((tmp_path / "t", str(odd)), (archive, f"{archive}:t/train/dog/0001.png")):
        with pytest.raises(AugmatError) as e:
            load_source(source, progress=False)
        msg = str(e.value)
        assert "\n" not in msg
        # Files come in name order: test/cat/0000, test/dog/0000, train/cat/0000-0002, train/dog/0000.
        assert msg.startswith(f"{name} is 30x40 (HxW) but the 6 images before it are 32x32; "), msg
        assert "sizes seen: 32x32 (6), 30x40 (2)" in msg and "--size HxW" in msg
    # Any one size is fine, not only 32x32.
    save(fill(30, 40, (9, 9, 9)), tmp_path / "u" / "train" / "a" / "1.png")
    save(fill(30, 40, (1, 2, 3)), tmp_path / "u" / "test" / "a" / "1.png")
    u = load_source(tmp_path / "u", progress=False)
    assert u.image_shape == (30, 40, 3) and (u.test_images == [1, 2, 3]).all()
    # Its checksum also covers the shape (not hashed for 32x32x3, as before).
    h = hashlib.sha256()
    for a in (u.train_images, u.train_labels, u.test_images, u.test_labels):
        h.update(a.tobytes())
    h.update(b"a")
    assert u.sha256 != h.hexdigest()
    h.update(b"\nshape 30x40x3")
    assert u.sha256 == h.hexdigest()


def write_stripes(root: Path) -> None:
    """A wide image (90x30: left third red, the rest blue), a tall one (30x90: top third
    green, the rest blue), a small square and a 32x32 one."""
    wide = fill(30, 90, (0, 0, 255))
    wide[:, :30] = (255, 0, 0)
    tall = fill(90, 30, (0, 0, 255))
    tall[:30] = (0, 255, 0)
    save(wide, root / "train" / "a" / "wide.png")
    save(tall, root / "train" / "a" / "tall.png")
    save(fill(10, 10, (0, 0, 255)), root / "train" / "b" / "small.png")
    save(make_images(1, 5)[0][0], root / "test" / "b" / "same.png")


def test_a_size_resizes_every_image_with_a_centre_crop_or_none(tmp_path):
    write_stripes(tmp_path / "s")
    center = load_source(tmp_path / "s", progress=False, options=ImageOptions(size=(16, 16)))
    assert center.train_images.shape == (3, 16, 16, 3) and center.test_images.shape == (1, 16, 16, 3)
    assert center.resized == 4 and center.options["size"] == [16, 16]
    tall, wide, small = center.train_images  # a/tall.png, a/wide.png, b/small.png
    # Centre crop keeps the middle third of each stripe image: all blue, no red or green.
    for name, im in (("wide", wide), ("tall", tall), ("small", small)):
        assert (im[..., :2] == 0).all() and (im[..., 2] == 255).all(), name
    none = load_source(tmp_path / "s", progress=False, options=ImageOptions(size=(16, 16), crop="none"))
    tall, wide, _ = none.train_images
    # Squeezed whole: the left third of the wide one is red, the top third of the tall one green.
    assert (wide[:, :4, 0] > 240).all() and (wide[:, -6:, 2] > 240).all() and (wide[:, -6:, 0] < 10).all()
    assert (tall[:4, :, 1] > 240).all() and (tall[-6:, :, 2] > 240).all() and (tall[-6:, :, 1] < 10).all()
    assert none.sha256 != center.sha256
    # The same through a .tar.gz, and decoded on an executor in batches.
    archive = tar_of(tmp_path / "s", tmp_path / "s.tar.gz")
    with ThreadPoolExecutor(2) as pool, mock.patch("augmat.sources._DECODE_BATCH", 2):
        a = load_source(archive, progress=False, executor=pool, options=ImageOptions(size=(16, 16)))
    assert a.sha256 == center.sha256
    # Not square: (H, W) = (8, 24): the wide image at 3:1 is kept whole, red then blue.
    flat = load_source(tmp_path / "s", progress=False, options=ImageOptions(size=(8, 24)))
    assert flat.image_shape == (8, 24, 3)
    assert (flat.train_images[1][:, :6, 0] > 240).all() and (flat.train_images[1][:, -12:, 2] > 240).all()


def test_resize_filters_are_named_and_differ(tmp_path):
    assert DEFAULT_RESIZE_FILTER == "bicubic" and RESIZE_FILTERS["bicubic"] == Image.BICUBIC
    assert {"nearest", "bilinear", "bicubic", "lanczos", "box"} <= set(RESIZE_FILTERS)
    x, _ = make_images(1, 11)
    save(x[0], tmp_path / "t" / "train" / "a" / "1.png")
    out = {name: load_source(tmp_path / "t", progress=False,
                             options=ImageOptions(size=(13, 13), resize_filter=name)).train_images[0]
           for name in RESIZE_FILTERS}
    for name, filt in RESIZE_FILTERS.items():
        np.testing.assert_array_equal(out[name], np.asarray(Image.fromarray(x[0]).resize((13, 13), filt)), name)
    assert len({o.tobytes() for o in out.values()}) == len(RESIZE_FILTERS)  # each filter is another filter


def test_large_jpegs_resize_close_to_a_full_decode(tmp_path):
    yy, xx = np.mgrid[0:600, 0:800]
    big = np.stack([xx * 255 // 800, yy * 255 // 600, (xx + yy) * 255 // 1400], -1).astype(np.uint8)
    save(big, tmp_path / "t" / "train" / "a" / "big.jpg", quality=95)
    from PIL.JpegImagePlugin import JpegImageFile
    real_draft, drafts = JpegImageFile.draft, []

    def draft(im, mode, size):
        drafts.append(real_draft(im, mode, size))
        return drafts[-1]
    with mock.patch.object(JpegImageFile, "draft", draft):
        got = load_source(tmp_path / "t", progress=False, options=ImageOptions(size=(32, 32))).train_images[0]
    # Decoded at 1/8 scale (100x75), which still leaves 75 > 2 x 32 pixels across the square kept.
    assert drafts == [("RGB", (0, 0, 100, 75))]
    full = Image.open(tmp_path / "t" / "train" / "a" / "big.jpg").convert("RGB")
    want = np.asarray(full.crop((100, 0, 700, 600)).resize((32, 32), Image.BICUBIC))
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 3


# --- colour modes ----------------------------------------------------------------------

def write_mode_tree(root: Path) -> None:
    rgb = make_images(1, 2)[0][0]
    t = root / "train"
    save(rgb, t / "a" / "rgb.png")
    save(Image.fromarray(rgb).convert("L"), t / "a" / "gray.png")
    save(Image.fromarray(rgb).convert("P", palette=Image.ADAPTIVE, colors=16), t / "a" / "palette.png")
    rgba = np.zeros((32, 32, 4), np.uint8)
    rgba[..., :3] = (200, 100, 50)
    rgba[:, :10, 3] = 0        # hidden colour: must come out black
    rgba[:, 10:20, 3] = 128
    rgba[:, 20:, 3] = 255
    save(Image.fromarray(rgba, "RGBA"), t / "b" / "rgba.png")
    la = np.zeros((32, 32, 2), np.uint8)
    la[..., 0], la[..., 1] = 180, 255
    la[:16, :, 1] = 0
    save(Image.fromarray(la, "LA"), t / "b" / "la.png")
    save(Image.fromarray(rgb).convert("CMYK"), t / "b" / "cmyk.jpg", quality=95)
    save(Image.fromarray(np.arange(32 * 32, dtype=np.uint16).reshape(32, 32) * 60), t / "c" / "deep.png")
    save(Image.fromarray(rgb).convert("1"), t / "c" / "bilevel.png")
    pal = Image.fromarray(np.repeat(np.arange(4, dtype=np.uint8), 256).reshape(32, 32), "P")
    pal.putpalette([250, 0, 0, 0, 250, 0, 0, 0, 250, 9, 9, 9])
    save(pal, t / "c" / "keyed.png", transparency=0)


def test_every_colour_mode_is_converted_and_counted(tmp_path):
    write_mode_tree(tmp_path / "m")
    src = load_source(tmp_path / "m", progress=False)
    assert src.train_images.shape == (9, 32, 32, 3) and src.train_images.dtype == np.uint8
    assert src.converted == {"1": 1, "CMYK": 1, "I;16": 1, "L": 1, "LA": 1, "P": 1, "P+transparency": 1,
                             "RGBA": 1}
    line = src.describe()["conversions"]
    assert line.startswith("converted to RGB: 1 1, 1 CMYK, 1 I;16, 1 L, 1 LA, 1 P, 1 P+transparency, 1 RGBA")
    json.dumps(src.describe())
    gray, palette, rgb, cmyk, la, rgba, bilevel, deep, keyed = src.train_images  # class, then name order
    assert (gray[..., 0] == gray[..., 1]).all() and (gray[..., 0] == gray[..., 2]).all()
    assert np.abs(gray[..., 0].astype(int) - np.asarray(Image.fromarray(rgb).convert("L"))).max() == 0
    assert np.abs(palette.astype(int) - rgb).mean() < 20
    assert np.abs(cmyk.astype(int) - rgb).mean() < 6
    # Alpha composited onto black: hidden colour gone, half alpha halves it, opaque kept.
    assert (rgba[:, :10] == 0).all()
    assert (rgba[:, 10:20] == [100, 50, 25]).all() and (rgba[:, 20:] == [200, 100, 50]).all()
    assert (la[:16] == 0).all() and (la[16:] == 180).all()
    # 16-bit grayscale keeps its high byte (Pillow's convert would clip most of it to 255).
    want = (np.arange(32 * 32).reshape(32, 32) * 60) >> 8
    np.testing.assert_array_equal(deep[..., 0], want)
    assert set(np.unique(bilevel)) <= {0, 255} and len(np.unique(bilevel)) == 2
    assert (keyed[:8] == 0).all() and (keyed[8:16] == [0, 250, 0]).all() and (keyed[-8:] == 9).all()


def test_one_channel_gives_n_h_w_1(tmp_path):
    write_mode_tree(tmp_path / "m")
    src = load_source(tmp_path / "m", progress=False, options=ImageOptions(channels=1))
    assert src.train_images.shape == (9, 32, 32, 1) and src.image_shape == (32, 32, 1)
    # The L image needs no conversion; the RGB one now does.
    assert src.converted == {"1": 1, "CMYK": 1, "I;16": 1, "LA": 1, "P": 1, "P+transparency": 1, "RGB": 1,
                             "RGBA": 1}
    assert src.describe()["conversions"].startswith("converted to grayscale")
    gray, _, rgb, _, la, rgba = src.train_images[:6]
    np.testing.assert_array_equal(gray, rgb)  # L of an RGB image is its grayscale twin
    assert (la[:16] == 0).all() and (la[16:] == 180).all()
    opaque = Image.new("RGB", (1, 1), (200, 100, 50)).convert("L").getpixel((0, 0))
    assert (rgba[:, :10] == 0).all() and (rgba[:, 20:] == opaque).all()
    small = load_source(tmp_path / "m", progress=False, options=ImageOptions(channels=1, size=(8, 8)))
    assert small.train_images.shape == (9, 8, 8, 1) and small.resized == 9


# --- CIFAR-100 -------------------------------------------------------------------------

FINE = [f"fine{i:02d}" for i in range(99, -1, -1)]  # deliberately not sorted: meta's order counts
COARSE = [f"coarse{i:02d}" for i in range(19, -1, -1)]


def write_cifar100(path: Path, train: int = 40, test: int = 12) -> dict:
    """cifar-100-python.tar.gz in the official layout; returns what it holds."""
    rng = np.random.default_rng(100)
    out = {}
    members = {}
    for split, n in (("train", train), ("test", test)):
        x = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        fine = rng.integers(0, 100, n)
        fine[:2] = (0, 99)
        coarse = fine // 5
        out[split] = (x, fine, coarse)
        members[f"cifar-100-python/{split}"] = pickle.dumps({
            b"filenames": [b"f%d.png" % i for i in range(n)], b"batch_label": split.encode(),
            b"fine_labels": fine.tolist(), b"coarse_labels": coarse.tolist(),
            b"data": x.transpose(0, 3, 1, 2).reshape(n, -1)})
    members["cifar-100-python/meta"] = pickle.dumps({b"fine_label_names": [n.encode() for n in FINE],
                                                      b"coarse_label_names": [n.encode() for n in COARSE]})
    with tarfile.open(path, "w:gz") as tar:
        for name, raw in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return out


def test_cifar100_fine_and_coarse_from_archive_and_folder(tmp_path):
    archive = tmp_path / "cifar-100-python.tar.gz"
    want = write_cifar100(archive)
    fine = load_source(archive, progress=False)
    assert fine.kind == "cifar100-python-archive" and fine.class_names == tuple(FINE)
    assert fine.train_images.shape == (40, 32, 32, 3) and fine.test_images.shape == (12, 32, 32, 3)
    np.testing.assert_array_equal(fine.train_images, want["train"][0])
    np.testing.assert_array_equal(fine.test_images, want["test"][0])
    np.testing.assert_array_equal(fine.train_labels, want["train"][1])
    np.testing.assert_array_equal(fine.test_labels, want["test"][1])
    assert fine.train_labels.dtype == np.uint8
    coarse = load_source(archive, progress=False, options=ImageOptions(label_mode="coarse"))
    assert coarse.class_names == tuple(COARSE) and len(coarse.class_names) == 20
    np.testing.assert_array_equal(coarse.train_labels, want["train"][2])
    np.testing.assert_array_equal(coarse.train_images, fine.train_images)
    assert coarse.sha256 != fine.sha256
    with tarfile.open(archive) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    for folder in (tmp_path / "x", tmp_path / "x" / "cifar-100-python"):
        f = load_source(folder, progress=False)
        assert f.kind == "cifar100-python-folder" and f.sha256 == fine.sha256
        assert not holds_image_files(folder)
        c = load_source(folder, progress=False, options=ImageOptions(label_mode="coarse"))
        assert c.sha256 == coarse.sha256
    assert not holds_image_files(archive)
    small = load_source(archive, progress=False, options=ImageOptions(size=(16, 16), channels=1))
    assert small.train_images.shape == (40, 16, 16, 1) and small.resized == 52
    (tmp_path / "x" / "cifar-100-python" / "meta").unlink()
    with pytest.raises(AugmatError, match="meta is missing; is this an extracted cifar-100-python folder"):
        load_source(tmp_path / "x" / "cifar-100-python", progress=False)
    with tarfile.open(tmp_path / "no-meta.tar", "w") as tar:
        tar.add(tmp_path / "x" / "cifar-100-python", arcname="cifar-100-python")
    with pytest.raises(AugmatError, match="cifar-100-python/meta is missing from the archive"):
        load_source(tmp_path / "no-meta.tar", progress=False)


# --- many classes ----------------------------------------------------------------------

def test_more_than_256_classes_get_uint16_labels_and_sorted_names(tmp_path):
    rng = np.random.default_rng(0)
    names = [f"class{i:03d}" for i in rng.permutation(300)]
    tiny = np.zeros((2, 2, 3), np.uint8)
    for i, name in enumerate(names):  # made in shuffled order; image i's red is its creation index
        tiny[..., 0] = i % 256
        save(tiny, tmp_path / "t" / "train" / name / "x.png")
    save(tiny, tmp_path / "t" / "test" / names[0] / "y.png")
    src = load_source(tmp_path / "t", progress=False)
    assert src.class_names == tuple(sorted(names)) and len(src.class_names) == 300
    assert src.train_labels.dtype == np.uint16 and src.test_labels.dtype == np.uint16
    assert src.train_labels.tolist() == list(range(300))
    assert src.test_labels.tolist() == [sorted(names).index(names[0])]
    first = sorted(names)[0]
    assert src.train_images[0, 0, 0, 0] == names.index(first) % 256
    assert label_dtype(256) == np.uint8 and label_dtype(257) == np.uint16
    assert label_dtype(65536) == np.uint16 and label_dtype(65537) == np.uint32


# --- huge images are refused from their header -----------------------------------------

def write_png_header(path: Path, width: int, height: int) -> Path:
    """A valid PNG start that declares width x height RGB with a few rows of data: a
    few hundred bytes that would decode into width * height * 3 bytes."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    rows = zlib.compress(b"\x00" * (1 + 3 * width) * 4)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IDAT", rows) + chunk(b"IEND", b""))
    return path


def test_an_image_declaring_a_huge_size_is_refused_before_decoding(tmp_path):
    write_image_tree(tmp_path / "t", per_class=2, test_per_class=1, classes=("cat", "dog"))
    bomb = write_png_header(tmp_path / "t" / "train" / "dog" / "0001.png", 12000, 12000)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        with Image.open(bomb) as im:
            assert bomb.stat().st_size < 2000 and im.size == (12000, 12000)
    real_load = ImageFile.ImageFile.load

    def load(im):  # the small images decode; the huge one must not (this would escape as an AssertionError)
        assert im.size[0] * im.size[1] < 10**6, f"decoded a {im.size} image"
        return real_load(im)
    with mock.patch.object(ImageFile.ImageFile, "load", load), \
            warnings.catch_warnings(record=True) as caught, pytest.raises(AugmatError) as e:
        warnings.simplefilter("always")
        load_source(tmp_path / "t", progress=False, options=ImageOptions(size=(16, 16)))
    assert f"{bomb} declares a 12000x12000 image (144 megapixels), more than the limit of 64 megapixels" \
        in str(e.value)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
    # Unpatched, the same: memory does not jump by the 432 MB the pixels would take.
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(AugmatError, match="was not decoded"):
        load_source(tar_of(tmp_path / "t", tmp_path / "t.tar.gz"), progress=False)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 100 * 1024  # KiB
    # Past Pillow's own hard limit: its DecompressionBombError, as one AugmatError.
    write_png_header(bomb, 20000, 20000)
    with pytest.raises(AugmatError, match="0001.png: Pillow refuses to open it as a possible decompression bomb"):
        load_source(tmp_path / "t", progress=False, options=ImageOptions(max_pixels=10**9))
    # The limit is an option: 32x32 = 1,024 pixels is over 1,000.
    bomb.unlink()
    with pytest.raises(AugmatError, match=r"declares a 32x32 image \(1,024 pixels\), more than the limit of 1,000 pixels"):
        load_source(tmp_path / "t", progress=False, options=ImageOptions(max_pixels=1000))
    assert load_source(tmp_path / "t", progress=False, options=ImageOptions(max_pixels=1024)).image_shape == (32, 32, 3)
    assert MAX_PIXELS == 64_000_000


# --- options -----------------------------------------------------------------------------

@pytest.mark.parametrize("kw", [{"size": (0, 5)}, {"size": (5,)}, {"size": (5, 5.5)}, {"size": "big"},
                                {"channels": 2}, {"channels": True}, {"resize_filter": "cubic"},
                                {"crop": "left"}, {"label_mode": "medium"}, {"max_pixels": 0},
                                {"size": (100, 100), "max_pixels": 9999}])
def test_bad_options_are_one_augmat_error(kw):
    with pytest.raises(AugmatError):
        ImageOptions(**kw)


def test_options_parse_and_describe():
    o = ImageOptions(size="64x48", channels=1)
    assert o.size == (64, 48) and ImageOptions(size=[8, 9]).size == (8, 9)
    assert parse_size("32") == (32, 32) and parse_size("224X160") == (224, 160)
    assert o.describe() == {"size": [64, 48], "channels": 1, "resize_filter": "bicubic", "crop": "center",
                            "label_mode": "fine", "max_pixels": 64_000_000}
    # What a built file records is enough to load its source again the same way.
    assert ImageOptions(**json.loads(json.dumps(o.describe()))) == o
    with pytest.raises(TypeError):
        load_source(None, options={"size": (8, 8)})


def test_decoding_tasks_travel_to_worker_processes(tmp_path, cifar_archive):
    """The build decodes on a spawned process pool: tasks and their options must pickle."""
    write_stripes(tmp_path / "s")
    opts = ImageOptions(size=(16, 16), channels=1)
    here = load_source(tmp_path / "s", progress=False, options=opts)
    plain = load_source(cifar_archive, progress=False, options=opts)
    with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
        there = load_source(tmp_path / "s", progress=False, executor=pool, options=opts)
        cifar = load_source(cifar_archive, progress=False, executor=pool, options=opts)
    assert there.sha256 == here.sha256 and cifar.sha256 == plain.sha256


def test_a_decode_pool_starts_processes_only_for_files_and_gives_the_same_pixels(tmp_path, cifar_archive):
    """`inspect --verify` and `preview` decode an image tree on a DecodePool, as a build
    does on its workers: the same pixels as one process. A CIFAR archive, which has no
    file to decode, starts no process; a worker that dies is one line."""
    import multiprocessing
    import os
    from augmat.engines import DecodePool, load_source_in, load_source_on
    write_image_tree(tmp_path / "tree", classes=("ant", "bee", "cow"))
    archive = tar_of(tmp_path / "tree", tmp_path / "tree.tar.gz")
    here = load_source(archive, progress=False)
    before = set(multiprocessing.active_children())
    with mock.patch("augmat.sources._DECODE_BATCH", 5):  # 9 tasks for the 45 files
        there = load_source_in(2, archive, progress=False)
    assert there.sha256 == here.sha256 and there.class_names == ("ant", "bee", "cow")
    np.testing.assert_array_equal(there.train_images, here.train_images)
    with DecodePool(2) as pool:
        assert load_source_on(pool, cifar_archive, False).sha256 == CIFAR_FIXTURE_SHA256
        assert set(multiprocessing.active_children()) == before  # nothing to decode: none started
        assert load_source_on(pool, tmp_path / "tree", False).sha256 == here.sha256
        started = set(multiprocessing.active_children()) - before
        assert started  # the files were decoded there
    assert not any(p.is_alive() for p in started)  # stopped on leaving the block

    class Dying(DecodePool):
        def submit(self, fn, /, *args, **kwargs):
            return super().submit(os._exit, 1)  # the worker process ends at its first task
    with Dying(1) as pool, pytest.raises(AugmatError) as e:
        load_source_on(pool, tmp_path / "tree", False)
    assert str(e.value).startswith("a worker process died while decoding the source") and "\n" not in str(e.value)


DRAIN_SCRIPT = """
from augmat.engines import DecodePool


def big(i):
    return bytes(32 << 20)  # a result larger than a batch of decoded images (6 MiB at 32x32)


if __name__ == "__main__":
    with DecodePool(2) as pool:
        futures = [pool.submit(big, i) for i in range(6)]
        futures[0].result()  # the workers are sending the others now
    print("stopped")
"""


def test_a_decode_pool_stops_while_its_workers_send_large_results(tmp_path):
    """Ending a worker while it sends a result of megabytes leaves half a message in the
    pipe, and Python 3.11's ProcessPoolExecutor then waits for the rest forever: leaving a
    DecodePool (Ctrl-C included) must let running tasks finish instead. (Terminating the
    workers, as a build's rendering pool does, hung this script in 4 of 5 tries.)"""
    script = tmp_path / "drain.py"
    script.write_text(DRAIN_SCRIPT)
    r = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0 and r.stdout.strip() == "stopped", r.stderr
