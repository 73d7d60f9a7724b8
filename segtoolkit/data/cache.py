"""Where a dataset's decoded samples live (--cache, YOLO's name): `ram` keeps every one in memory, `disk`
writes each once as uint8 .npy files read back memory-mapped (checked against the source files' size and
modification time, rebuilt when stale), `none` decodes them again whenever they are read. Every file is
read and checked when the dataset is built, whatever the mode: a bad file stops the run in seconds, not
hours in; `disk` does that when it writes the cache, so a valid cache is not decoded again.

Usage:
    store = build_store("disk", prepare, pairs, key="letterbox-256-c1", cache_dir=Path("my_data/.segtoolkit-cache"))
    image, mask = store.get(0)
    store.label_counts   # {label: pixels} over every mask, as stored
"""

import collections
import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from segtoolkit.errors import UserError

CACHE_MODES = ("ram", "disk", "none")
CACHE_VERSION = 1


def label_counts(mask):
    """{label value: pixels} of one mask (bincount: 20x faster than np.unique on a 512x512 uint8 mask)."""
    if mask.dtype in (np.uint8, np.uint16):
        per_value = np.bincount(mask.ravel())
        values = np.flatnonzero(per_value)
        return dict(zip(values.tolist(), per_value[values].tolist()))
    values, per_value = np.unique(mask, return_counts=True)
    return dict(zip(values.tolist(), per_value.tolist()))


def build_store(mode, prepare, pairs, *, key, cache_dir=None, threads=4):
    """A store of `prepare(pair)` -> (uint8 image, label mask) for every pair, built as `mode` says."""
    if mode not in CACHE_MODES:
        raise UserError(f"--cache {mode}: choose one of {', '.join(CACHE_MODES)}")
    store = {"ram": RamStore, "disk": DiskStore, "none": LazyStore}[mode](prepare, pairs, key, cache_dir)
    with ThreadPoolExecutor(max(1, threads)) as pool:  # cv2 releases the GIL while decoding
        counts = list(pool.map(store.fill, range(len(pairs))))
    store.label_counts = dict(sum((collections.Counter(count) for count in counts), collections.Counter()))
    return store


class RamStore:
    """Every sample in memory (the fastest; needs the data set to fit in RAM)."""

    def __init__(self, prepare, pairs, key, cache_dir):
        self.prepare, self.pairs = prepare, pairs
        self.samples = [None] * len(pairs)

    def fill(self, index):
        self.samples[index] = self.prepare(self.pairs[index])
        return label_counts(self.samples[index][1])

    def get(self, index):
        return self.samples[index]


class LazyStore(RamStore):
    """Nothing kept: each read decodes the files again (in the DataLoader workers)."""

    def fill(self, index):
        return label_counts(self.prepare(self.pairs[index])[1])

    def get(self, index):
        return self.prepare(self.pairs[index])


class DiskStore(RamStore):
    """uint8 .npy files in `cache_dir`, one pair per sample, named by a hash of the source paths and `key`
    (how they were prepared); a JSON note beside them records the sources' size and modification time."""

    def __init__(self, prepare, pairs, key, cache_dir):
        super().__init__(prepare, pairs, key, cache_dir)
        self.folder = Path(cache_dir)
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            probe = self.folder / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as error:
            raise UserError(f"--cache disk cannot write its cache in {self.folder} ({error.strerror or error}); "
                            f"give --cache-dir a writable folder, or use --cache ram or none") from None
        self.stems = [self.folder / hashlib.sha1(f"{CACHE_VERSION}|{key}|{Path(image).resolve()}|"
                                                 f"{Path(mask).resolve()}".encode()).hexdigest()
                      for image, mask in pairs]

    def fill(self, index):
        stem, note = self.stems[index], self.stems[index].with_suffix(".json")
        sources = [source_stat(path) for path in self.pairs[index]]
        if note.is_file():
            stored = json.loads(note.read_text())
            if stored.get("sources") == sources and all((stem.parent / f"{stem.name}.{part}.npy").is_file()
                                                        for part in ("image", "mask")):
                return {int(label): count for label, count in stored["labels"].items()}
        image, mask = self.prepare(self.pairs[index])
        for part, array in (("image", image), ("mask", mask)):
            write_atomically(stem.parent / f"{stem.name}.{part}.npy", array)
        counts = label_counts(mask)
        write_atomically(note, {"sources": sources, "labels": {str(k): v for k, v in counts.items()}})
        return counts

    def get(self, index):
        stem = self.stems[index]
        # memory-mapped, copied, and the map dropped: pages read stay in the page cache, not in this process
        return tuple(np.array(np.load(stem.parent / f"{stem.name}.{part}.npy", mmap_mode="r"))
                     for part in ("image", "mask"))


def source_stat(path):
    stat = Path(path).stat()
    return [str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns]


def write_atomically(path, content):
    """An .npy array or a JSON note, written to a temporary name and renamed: a run stopped mid-write never
    leaves a cache entry that looks complete."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(content, np.ndarray):
        with open(temporary, "wb") as handle:
            np.save(handle, content)
    else:
        temporary.write_text(json.dumps(content))
    os.replace(temporary, path)
