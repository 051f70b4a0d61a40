"""Where the source images come from: one loader per kind of source, one result type.

Accepted sources (``--source``):

* nothing: CIFAR-10 the Keras way, from the ``~/.keras/datasets`` cache (``$KERAS_HOME``
  is honoured), downloading it once through Keras when the machine can (never when
  ``AUGMAT_NO_DOWNLOAD`` is set);
* the official python archive ``cifar-10-python.tar.gz`` or its extracted
  ``cifar-10-batches-py/`` folder;
* a class-per-folder image tree ``train/<class>/*.png|jpg`` and ``test/<class>/...``,
  as a folder or as a ``.tar.gz`` of one.

Images in an image tree are ordered by class, then file name; that order defines
``source_index``. Class order is CIFAR-10's when the names are CIFAR-10's, sorted
otherwise.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np

from .errors import AugmatError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_BATCHES = [f"data_batch_{i}" for i in range(1, 6)]
_PYTHON_MEMBERS = {*_BATCHES, "test_batch", "batches.meta"}


@dataclass(frozen=True)
class SourceData:
    train_images: np.ndarray  # uint8 (N, 32, 32, 3)
    train_labels: np.ndarray  # uint8 (N,)
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple[str, ...]
    kind: str                 # keras-cache | cifar-python-archive | cifar-python-folder | image-folder | image-archive
    path: str
    sha256: str               # of the decoded pixels, labels and class names

    def describe(self) -> dict:
        return {"kind": self.kind, "path": self.path, "sha256": self.sha256,
                "train_images": int(len(self.train_labels)), "test_images": int(len(self.test_labels)),
                "class_names": list(self.class_names)}


def checksum(train_x, train_y, test_x, test_y, class_names) -> str:
    h = hashlib.sha256()
    for a in (train_x, train_y, test_x, test_y):
        h.update(np.ascontiguousarray(a).data)
    h.update("\n".join(class_names).encode())
    return h.hexdigest()


def _finish(train_x, train_y, test_x, test_y, class_names, kind, path) -> SourceData:
    for name, x in (("training", train_x), ("test", test_x)):
        if x.ndim != 4 or x.shape[1:] != (32, 32, 3) or x.dtype != np.uint8:
            raise AugmatError(f"{path}: {name} images are {x.dtype} {x.shape[1:]}; augmat needs 32x32 RGB uint8 images")
    if len(train_x) == 0:
        raise AugmatError(f"{path}: no training images found")
    train_y = np.asarray(train_y, dtype=np.uint8).reshape(-1)
    test_y = np.asarray(test_y, dtype=np.uint8).reshape(-1)
    return SourceData(train_x, train_y, test_x, test_y, tuple(class_names), kind, str(path),
                      checksum(train_x, train_y, test_x, test_y, class_names))


# --- the official python format -----------------------------------------------------

def _unpickle(raw: bytes, where: str) -> dict:
    try:
        return pickle.loads(raw, encoding="bytes")
    except Exception as e:  # pickle raises many types on damaged data
        raise AugmatError(f"{where}: not a readable CIFAR-10 batch ({type(e).__name__}); the file is corrupt or truncated")


def _decode_batch(d: dict, where: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        data = np.asarray(d[b"data"], dtype=np.uint8)
        labels = np.asarray(d[b"labels"], dtype=np.uint8)
        images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except (KeyError, ValueError) as e:
        raise AugmatError(f"{where}: not a CIFAR-10 batch of 32x32 RGB images ({e})")
    if len(images) != len(labels):
        raise AugmatError(f"{where}: {len(images)} images but {len(labels)} labels")
    return np.ascontiguousarray(images), labels


def _from_batches(read, where: str, kind: str, path) -> SourceData:
    """``read(name)`` returns the bytes of one member of cifar-10-batches-py/."""
    parts = [_decode_batch(_unpickle(read(b), f"{where}/{b}"), f"{where}/{b}") for b in _BATCHES]
    test_x, test_y = _decode_batch(_unpickle(read("test_batch"), f"{where}/test_batch"), f"{where}/test_batch")
    names = CIFAR10_CLASSES
    try:
        meta = _unpickle(read("batches.meta"), f"{where}/batches.meta")
        names = tuple(n.decode() for n in meta[b"label_names"])
    except (KeyError, FileNotFoundError):
        pass
    return _finish(np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
                   test_x, test_y, names, kind, path)


def load_cifar_python_folder(folder: Path, kind: str = "cifar-python-folder") -> SourceData:
    def read(name: str) -> bytes:
        p = folder / name
        if not p.is_file():
            raise (FileNotFoundError if name == "batches.meta" else AugmatError)(
                f"{folder}: {name} is missing; is this an extracted cifar-10-batches-py folder?")
        return p.read_bytes()
    return _from_batches(read, str(folder), kind, folder)


# --- archives ------------------------------------------------------------------------

def _open_tar(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
        raise AugmatError(f"{path}: cannot open the archive ({e}); it is corrupt, truncated or not a tar archive")


_ARCHIVE_ERRORS = (tarfile.TarError, EOFError, zlib.error, OSError)


def load_tar(path: Path, progress: bool = True, executor=None) -> SourceData:
    """A cifar-10-python.tar.gz, or a .tar.gz of an image tree (told apart by content).

    The archive is read in one pass (seeking back in a gzip stream decompresses it again
    from the start): the images of a tree go to the decoder as they come, every other
    file is kept in memory (the python archive's batches are dropped as they are decoded)."""
    files: dict[str, bytes] = {}

    def tree_images(tar):
        """Yield the tree's images as they come; keep the python archive's members in ``files``."""
        for m in tar:
            name = m.name.lstrip("./")
            if not m.isfile():
                continue
            if _tree_place(name):
                yield name, tar.extractfile(m).read()
            elif name.rsplit("/", 1)[-1] in _PYTHON_MEMBERS:  # any other file is never read
                files[name] = tar.extractfile(m).read()
    try:
        with _open_tar(path) as tar:
            names, decoded = _decode_files(tree_images(tar), lambda n: f"{path}:{n}", progress, executor)
    except _ARCHIVE_ERRORS as e:
        raise AugmatError(f"{path}: the archive is corrupt or truncated ({type(e).__name__}: {e}); "
                          "download or copy it again")
    batch = [n for n in files if n.endswith("/data_batch_1") or n == "data_batch_1"]
    if batch:
        prefix = batch[0][: -len("data_batch_1")]

        def read(name: str) -> bytes:  # each member once: its bytes go as soon as it is decoded
            if prefix + name not in files:
                raise (FileNotFoundError if name == "batches.meta" else AugmatError)(
                    f"{path}: {prefix + name} is missing from the archive")
            return files.pop(prefix + name)
        return _from_batches(read, str(path), "cifar-python-archive", path)
    return _assemble_tree(names, decoded, path, "image-archive")


# --- image trees ---------------------------------------------------------------------

def _tree_place(name: str) -> tuple[str, str] | None:
    """(split, class) of an image at '<prefix>/(train|test)/<class>/<file>', else None."""
    parts = name.split("/")
    if len(parts) < 3 or parts[-3] not in ("train", "test") \
            or PurePosixPath(parts[-1]).suffix.lower() not in IMAGE_SUFFIXES:
        return None
    return parts[-3], parts[-2]


def _class_order(names) -> tuple[str, ...]:
    names = set(names)
    if names == set(CIFAR10_CLASSES):
        return CIFAR10_CLASSES
    return tuple(sorted(names))


def _decode_image(raw: bytes, where: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            if im.size != (32, 32) or im.mode != "RGB":
                raise AugmatError(f"{where} is a {im.size[0]}x{im.size[1]} {im.mode} image; "
                                  "augmat needs 32x32 RGB images")
            return np.asarray(im, dtype=np.uint8)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise AugmatError(f"{where}: not a readable image ({e})")


def _decode_many(items: list[tuple[bytes, str]]) -> np.ndarray:
    """Decode (raw bytes, name for errors) pairs into one uint8 array (n, 32, 32, 3)."""
    out = np.empty((len(items), 32, 32, 3), np.uint8)
    for i, (raw, where) in enumerate(items):
        out[i] = _decode_image(raw, where)
    return out


_DECODE_BATCH = 2000  # images per decoding task


def _decode_files(files, where, progress: bool, executor=None,
                  total: int | None = None) -> tuple[list[str], list[np.ndarray]]:
    """Decode (name, raw bytes) pairs as they come, ``_DECODE_BATCH`` at a time: on
    ``executor`` (a concurrent.futures executor, such as a build's worker pool) while the
    caller goes on reading, so reading and decoding overlap and the decoding runs in
    parallel; without one, here. ``where(name)`` names a file in error messages.
    Returns the names, in the order the files came, and their images in batches."""
    from tqdm import tqdm
    bar = tqdm(desc="decoding source", total=total, unit="img", leave=False, delay=1.0, disable=not progress)
    pending: list[tuple[list[str], object]] = []
    batch: list[tuple[str, bytes]] = []

    def flush():
        names, work = [n for n, _ in batch], [(raw, where(n)) for n, raw in batch]
        batch.clear()
        if executor is None:
            pending.append((names, _decode_many(work)))
            bar.update(len(work))
        else:
            future = executor.submit(_decode_many, work)
            future.add_done_callback(lambda _, k=len(work): bar.update(k))
            pending.append((names, future))
    try:
        for item in files:
            batch.append(item)
            if len(batch) == _DECODE_BATCH:
                flush()
        if batch:
            flush()
        names = [n for batch_names, _ in pending for n in batch_names]
        return names, [part if executor is None else part.result() for _, part in pending]
    finally:
        bar.close()


def _assemble_tree(names: list[str], batches: list[np.ndarray], path, kind) -> SourceData:
    """A tree's decoded images (``batches``, in the order of ``names``) in class, then
    file name order; labels by class. A name seen twice (a file appended to a tar) counts
    once, as its last copy, as extracting the tar would leave it. Each batch is copied
    straight to its rows: one allocation of the whole source, which in fresh memory costs
    more than the copy."""
    last = {name: i for i, name in enumerate(names)}
    tree: dict[str, dict[str, list[int]]] = {"train": {}, "test": {}}
    for name, i in last.items():
        split, cls = _tree_place(name)
        tree[split].setdefault(cls, []).append(i)
    if not tree["train"]:
        raise AugmatError(f"{path}: found no train/<class>/ images (.png, .jpg); expected "
                          "train/<class>/*.png and test/<class>/*.png, or a CIFAR-10 python archive")
    classes = _class_order(tree["train"])
    unknown = set(tree["test"]) - set(classes)
    if unknown:
        raise AugmatError(f"{path}: test classes {sorted(unknown)} have no train/ folder")
    row = np.full(len(names), -1, np.int64)  # each decoded image's row in the whole source, train then test
    labels = []
    for split in ("train", "test"):
        for label, cls in enumerate(classes):
            members = sorted(tree[split].get(cls, []), key=names.__getitem__)
            row[members] = np.arange(len(labels), len(labels) + len(members))
            labels += [label] * len(members)
    images = np.empty((len(labels), 32, 32, 3), np.uint8)
    start = 0
    for batch in batches:
        keep = row[start:start + len(batch)] >= 0  # earlier copies of a name seen twice are dropped
        images[row[start:start + len(batch)][keep]] = batch[keep]
        start += len(batch)
    y = np.array(labels, dtype=np.uint8)
    k = sum(len(v) for v in tree["train"].values())
    return _finish(images[:k], y[:k], images[k:], y[k:], classes, kind, path)


def load_image_folder(folder: Path, progress: bool = True, executor=None) -> SourceData:
    paths = [p for p in folder.rglob("*") if p.is_file() and _tree_place(p.relative_to(folder).as_posix())]
    files = ((p.relative_to(folder).as_posix(), p.read_bytes()) for p in paths)
    names, decoded = _decode_files(files, lambda n: str(folder / n), progress, executor, total=len(paths))
    return _assemble_tree(names, decoded, folder, "image-folder")


# --- the Keras cache -----------------------------------------------------------------

def keras_cache_dir() -> Path:
    return Path(os.environ.get("KERAS_HOME", Path.home() / ".keras")).expanduser() / "datasets"


def load_keras_cifar10(progress: bool = True) -> SourceData:
    base = keras_cache_dir()
    for folder in (base / "cifar-10-batches-py-target" / "cifar-10-batches-py",
                   base / "cifar-10-batches-py"):
        if (folder / "data_batch_1").is_file():
            return load_cifar_python_folder(folder, kind="keras-cache")
    for archive in (base / "cifar-10-batches-py.tar.gz", base / "cifar-10-python.tar.gz"):
        if archive.is_file():
            return load_tar(archive, progress)
    if os.environ.get("AUGMAT_NO_DOWNLOAD"):
        raise AugmatError(f"CIFAR-10 is not in the Keras cache ({base}) and AUGMAT_NO_DOWNLOAD is set; "
                          "pass --source PATH (cifar-10-python.tar.gz, its extracted folder, or a "
                          "train/<class>/ image folder or .tar.gz)")
    try:  # download once, the Keras way; fails fast without a network
        import socket
        socket.setdefaulttimeout(20)
        from .kerasenv import import_keras
        import_keras().datasets.cifar10.load_data()
    except Exception as e:  # any failure here means: no network, or a broken download
        raise AugmatError(
            f"CIFAR-10 is not in the Keras cache ({base}) and could not be downloaded "
            f"({type(e).__name__}); pass --source PATH (cifar-10-python.tar.gz, its extracted "
            "folder, or a train/<class>/ image folder or .tar.gz)")
    return load_keras_cifar10(progress)


def holds_image_files(source: str | os.PathLike | None) -> bool:
    """A cheap guess, before loading, whether ``source`` is an image tree (files to decode,
    worth a pool of decoders) rather than CIFAR-10's python batches; False when unsure."""
    if source is None or str(source) == "":
        return False
    path = Path(source).expanduser()
    try:
        if path.is_dir():
            return not ((path / "data_batch_1").exists() or (path / "cifar-10-batches-py" / "data_batch_1").exists())
        with tarfile.open(path, "r:*") as tar:
            for m, _ in zip(tar, range(64)):  # the first members tell
                if _tree_place(m.name.lstrip("./")):
                    return True
    except (OSError, tarfile.TarError, EOFError, zlib.error):
        pass
    return False


def load_source(source: str | os.PathLike | None, progress: bool = True, executor=None) -> SourceData:
    """Load the whole source (training and test splits) into memory; ``progress``: show a
    progress bar while decoding a large image tree; ``executor``: decode an image tree's
    files there, in parallel (a concurrent.futures executor)."""
    if source is None or str(source) == "":
        return load_keras_cifar10(progress)
    path = Path(os.path.abspath(Path(source).expanduser()))  # recorded in the file: works from anywhere
    if not path.exists():
        raise AugmatError(f"--source {source}: no such file or folder")
    if not os.access(path, os.R_OK):
        raise AugmatError(f"--source {source}: not readable (check its permissions)")
    if path.is_dir():
        if (path / "data_batch_1").exists():
            return load_cifar_python_folder(path)
        if (path / "cifar-10-batches-py" / "data_batch_1").exists():
            return load_cifar_python_folder(path / "cifar-10-batches-py")
        return load_image_folder(path, progress, executor)
    try:
        is_tar = tarfile.is_tarfile(path)
    except OSError as e:
        raise AugmatError(f"--source {source}: cannot read it ({e.strerror})")
    if not is_tar:
        raise AugmatError(f"--source {source}: not a tar archive or a folder; it may be corrupt or truncated")
    return load_tar(path, progress, executor)
