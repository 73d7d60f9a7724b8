"""detect.py across processes (torchrun) and --resume-run: which sources each process takes, its part files,
rank 0's merge of them, and the frames a run folder holds already.

The rule: the files, then the streams, in detect.py's order (as --source lists them, after --resume-run left
out the images done), each process taking every N-th: the k-th source goes to process k % N, except that a
source named like an earlier one (a.png and b/a.png, or odd.avi and odd.mp4: the same output stem) goes with
it, so their _2 numbering is one process's, as in one. A video's frames are never split. Each process writes
results.rank<R>.csv and polygons.rank<R>.jsonl; its images, masks, probabilities and videos are named after
its own sources, so nothing clashes. When every process is done, rank 0 merges the parts into results.csv
and polygons.jsonl, in source order (a video's frames in frame order), and removes them.

A row is written after its frame's files, so a process that dies leaves complete rows in its part (a line
cut off by the kill is dropped here) and every file a row names. --resume-run merges what a run left (parts
and all) before it starts, skips the frames already listed, and sorts the whole of results.csv and
polygons.jsonl into source order at the end: the same files as a run that never stopped.

Usage:
    mine = share(sources, rank, world_size)                   # this process's sources, in order
    merge_parts(run_dir, order, resumed=False)                # rank 0, once every process is done
    finished = Finished.read(run_dir)                         # finished.frames: {(source, frame)}
"""

import csv
import io
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from segtoolkit.data.sources import VIDEO_SUFFIXES, mask_credentials, safe_name
from segtoolkit.errors import UserError
from segtoolkit.outputs.files import write_failure

RESULTS_FILE, POLYGONS_FILE = "results.csv", "polygons.jsonl"
FILE_COLUMNS = ("image_file", "mask_file", "video_file", "probs_file")  # the columns naming a row's files


def part_name(name, rank):
    """A process's part of results.csv or polygons.jsonl: results.rank1.csv."""
    stem, _, suffix = name.rpartition(".")
    return f"{stem}.rank{rank}.{suffix}"


def share(sources, rank, world_size):
    """This process's sources, in their order: the k-th output stem's sources go to process k % world_size."""
    groups = {}
    for source in sources:
        groups.setdefault(safe_name(source).casefold(), len(groups))
    return [source for source in sources if groups[safe_name(source).casefold()] % world_size == rank]


def source_order(files, streams):
    """{source as results.csv names it: position}: files as written, streams with their passwords masked."""
    names = [str(path) for path in files] + [mask_credentials(stream) for stream in streams]
    return {name: position for position, name in enumerate(names)}


def complete_text(path):
    """A file's text up to its last line end: a line cut off by a killed process is not a row."""
    text = Path(path).read_text(encoding="utf-8", errors="replace")
    return text[:max(text.rfind("\n"), text.rfind("\r")) + 1]


def read_rows(path):
    """(header, rows as lists) of a results.csv or part; (None, []) when missing or empty."""
    if not Path(path).is_file():
        return None, []
    table = list(csv.reader(io.StringIO(complete_text(path), newline="")))
    if not table:
        return None, []
    header, rows = table[0], [row for row in table[1:] if len(row) == len(table[0])]
    return header, rows


def read_lines(path):
    """polygons.jsonl's complete lines, parsed."""
    if not Path(path).is_file():
        return []
    return [json.loads(line) for line in complete_text(path).splitlines() if line.strip()]


def parts(run_dir, name):
    """The part files of `name` in run_dir, by rank."""
    pattern = re.compile(re.escape(part_name(name, "@")).replace("@", r"(\d+)") + "$")
    found = [(int(match.group(1)), path) for path in Path(run_dir).iterdir() if (match := pattern.match(path.name))]
    return [path for _, path in sorted(found)]


@dataclass(frozen=True)
class Finished:
    """What a run folder's results.csv lists: its frames (source, frame number) and the files its rows name."""
    frames: frozenset = frozenset()
    files: frozenset = frozenset()

    @classmethod
    def read(cls, run_dir):
        header, rows = read_rows(Path(run_dir) / RESULTS_FILE)
        if header is None:
            return cls()
        source, frame = header.index("source"), header.index("frame")
        named = [header.index(column) for column in FILE_COLUMNS if column in header]
        return cls(frozenset((row[source], int(row[frame])) for row in rows),
                   frozenset(row[i] for row in rows for i in named if row[i]))

    def left(self, files):
        """The files with frames to do: images not listed yet, and every video (its frames are skipped one
        by one: `skips`)."""
        return [path for path in files if Path(path).suffix.lower() in VIDEO_SUFFIXES or
                (str(path), 0) not in self.frames]

    def skips(self, frame):
        """Whether a file's frame is listed already (a stream's frames are never the same again)."""
        return not frame.is_stream and (frame.path, frame.index) in self.frames


def merge_parts(run_dir, order, resumed):
    """Rank 0, once every process is done: the parts' rows appended to results.csv in source order (a frame's
    polygons.jsonl line only when its row is there), the parts removed. `resumed` (--resume-run): the whole
    files sorted into source order, each frame once. Returns the rows merged from parts."""
    run_dir = Path(run_dir)
    header, kept = read_rows(run_dir / RESULTS_FILE)
    merged = 0
    for path in parts(run_dir, RESULTS_FILE):
        part_header, rows = read_rows(path)
        if part_header is None:
            continue
        if header is not None and part_header != header:
            raise UserError(f"{path} has other columns than {run_dir / RESULTS_FILE}; merge or remove it by hand")
        header, merged = part_header, merged + len(rows)
        kept += rows
    if header is None:
        return 0
    source, frame = header.index("source"), header.index("frame")
    key = lambda row: (row[source], int(row[frame]))  # noqa: E731
    earlier = 0 if resumed else len(kept) - merged  # a --save-dir's rows of earlier runs stay first, as they were
    rows = kept[:earlier] + in_source_order(kept[earlier:], key, order, resumed)
    write_atomically(run_dir / RESULTS_FILE, lambda handle: csv.writer(handle).writerows([header, *rows]))
    listed = set(map(key, kept))
    lines = read_lines(run_dir / POLYGONS_FILE)
    earlier = 0 if resumed else len(lines)
    for path in parts(run_dir, POLYGONS_FILE):
        lines += read_lines(path)
    if lines:
        line_key = lambda line: (line["source"], line["frame"])  # noqa: E731
        # a frame's line without its row: the frame was cut short, and a resume does it again
        lines = lines[:earlier] + in_source_order([line for line in lines[earlier:] if line_key(line) in listed],
                                                  line_key, order, resumed)
        write_atomically(run_dir / POLYGONS_FILE, lambda handle: handle.writelines(
            json.dumps(line, ensure_ascii=False) + "\n" for line in lines))
    for path in parts(run_dir, RESULTS_FILE) + parts(run_dir, POLYGONS_FILE):
        path.unlink()
    return merged




def in_source_order(items, key, order, once):
    """Rows or lines sorted by (source's position, frame), stable; `once`: a frame's last one only."""
    if once:
        items = list({key(item): item for item in items}.values())
    return sorted(items, key=lambda item: (order.get(key(item)[0], -1), key(item)[1]))


def write_atomically(path, write):
    """`write(handle)` into path.tmp, then renamed over path: a kill leaves the old file or the new one."""
    temporary = path.with_name(path.name + ".tmp")
    try:
        with open(temporary, "w", newline="", encoding="utf-8") as handle:
            write(handle)
        os.replace(temporary, path)
    except OSError as error:
        raise write_failure(path, error.strerror or error) from None


def check_resume_run(run_dir):
    """--resume-run DIR must be a detect.py run folder: one holding results.csv or its parts."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not ((run_dir / RESULTS_FILE).is_file() or parts(run_dir, RESULTS_FILE)):
        raise UserError(f"--resume-run {run_dir} is not a detect.py run folder (no results.csv in it); give the "
                        f"folder an earlier run wrote, or leave --resume-run out for a new run")
