"""What detect.py writes beside each frame's image, mask and results.csv row when asked:

- --save-json: polygons.jsonl beside results.csv, one JSON line per image or frame, in results.csv's order:
  {"source", "frame", "width", "height", "polygons": [{"class", "name", "area", "points", "holes"}]}, every
  region of every class in original-image pixel coordinates (segtoolkit.data.polygons says what `area` is);
- --save-probs: probs/<name>.npz (several classes) or probs/<name>.png (one class) with the probabilities at
  the original size (segtoolkit.inference.probabilities says how they are stored); the results.csv column probs_file
  names it. A video's or stream's frames are probs/<name>_<frame number, 6 digits>.<suffix>;
- --save-coco: predictions.coco.json (segtoolkit.data.coco.CocoWriter), written when the run ends;
- --rank-uncertain K: to_label/ and to_label.csv (segtoolkit.outputs.uncertainty), written when the run ends.

A second run into the same --save-dir appends to polygons.jsonl, as to results.csv; the files of a frame
whose results.csv row cannot be written are taken back (its probabilities file removed, its JSON line cut).

Usage:
    exports = FrameExports(["background", "cell"], classes=2, save_json=True, save_probs=True)
    writer = ResultWriter(save_dir, ["background", "cell"], exports=exports)   # the writer calls the rest
"""

import contextlib
import json

from segtoolkit.data.coco import COCO_FILE, frame_file_name
from segtoolkit.outputs.files import ends_with_newline, write_failure, write_new_file, write_picture
from segtoolkit.data.polygons import polygon_records
from segtoolkit.inference.probabilities import encode_png, probability_suffix, write_npz

POLYGONS_FILE = "polygons.jsonl"


class FrameExports:
    """--save-json and --save-probs for a ResultWriter: the calls of detect_outputs.NoExports."""

    def __init__(self, class_names, classes, save_json=False, save_probs=False, coco=None, ranking=None,
                 polygons_name=POLYGONS_FILE):
        self.class_names, self.save_json, self.save_probs = list(class_names), save_json, save_probs
        self.polygons_name = polygons_name  # a process's part under torchrun (segtoolkit.outputs.shards)
        self.coco, self.ranking, self.save_dir = coco, ranking, None  # a CocoWriter, an UncertainFrames
        self.suffix = probability_suffix(classes)
        self.json_file = self.json_path = None
        self.written = None  # (probabilities file, JSON line start) of the last frame: what rollback takes back

    @property
    def columns(self):
        return ("probs_file",) if self.save_probs else ()

    def names(self, stem, frame):
        """The files `stem` names for this frame (a video's: its first frame's), for ResultWriter.claim."""
        return [self.probs_name(stem, frame)] if self.save_probs else []

    def probs_name(self, stem, frame):
        number = "" if frame.is_image else f"_{frame.index:06d}"
        return f"probs/{stem}{number}{self.suffix}"

    def open(self, save_dir):
        self.save_dir = save_dir
        if not self.save_json:
            return
        self.json_path = save_dir / self.polygons_name
        cut = self.json_path.is_file() and self.json_path.stat().st_size and not ends_with_newline(self.json_path)
        self.json_file = open(self.json_path, "a", encoding="utf-8")
        if cut:  # a line cut off by a crash: ours start on a line of their own
            self.json_file.write("\n")

    def write(self, save_dir, stem, frame, mask, probabilities):
        """The frame's probabilities file and JSON line; returns {'probs_file': name} (or {})."""
        files, start = {}, None
        if self.save_probs:
            files["probs_file"] = self.write_probabilities(save_dir, self.probs_name(stem, frame), probabilities)
        try:
            if self.save_json:
                start = self.write_polygons(frame, mask)
        except OSError as error:
            self.remove(save_dir, files.get("probs_file"))
            raise write_failure(self.json_path, error.strerror or error) from None
        self.written = (save_dir, files.get("probs_file"), start)
        if self.coco is not None or self.ranking is not None:
            # the probabilities are at the frame's own size already, as the mask (segtoolkit.inference.full_size)
            if self.coco is not None:
                self.coco.add(frame_file_name(frame), mask, probabilities)
            if self.ranking is not None:
                self.ranking.add(frame, mask, probabilities)
        return files

    def write_probabilities(self, save_dir, name, probabilities):
        """probs/<name>: the map (float16 at the frame's size), 16-bit PNG for one class, .npz for several."""
        (save_dir / "probs").mkdir(exist_ok=True)
        if self.suffix == ".png":
            write_picture(save_dir / name, encode_png(probabilities))
        else:
            write_new_file(save_dir / name, lambda handle: write_npz(handle, probabilities, self.class_names))
        return name

    def write_polygons(self, frame, mask):
        """One JSON line; returns where it starts in polygons.jsonl (rollback cuts the file back to it)."""
        height, width = mask.shape[:2]
        line = json.dumps({"source": frame.path, "frame": frame.index, "width": width, "height": height,
                           "polygons": polygon_records(mask, self.class_names)}, ensure_ascii=False)
        start = self.json_file.tell()
        try:
            self.json_file.write(line + "\n")
            self.json_file.flush()
        except OSError:
            self.cut(start)
            raise
        return start

    def rollback(self):
        """Take back the last frame's files: its results.csv row could not be written."""
        if self.written is not None:
            save_dir, probs_file, start = self.written
            self.remove(save_dir, probs_file)
            if start is not None:
                self.cut(start)
            if self.coco is not None:
                self.coco.drop_last()
            self.written = None

    def cut(self, start):
        with contextlib.suppress(OSError):
            self.json_file.seek(start)
            self.json_file.truncate()

    @staticmethod
    def remove(save_dir, name):
        if name:
            with contextlib.suppress(OSError):
                (save_dir / name).unlink(missing_ok=True)

    def close(self):
        """Close polygons.jsonl; write predictions.coco.json and the ranking of the frames done."""
        if self.save_dir is not None and self.coco is not None:
            self.coco.write(self.save_dir / COCO_FILE)
        if self.save_dir is not None and self.ranking is not None:
            self.ranking.write(self.save_dir)
        if self.json_file is not None:
            with contextlib.suppress(OSError):  # a failure being reported may have left it unflushable
                self.json_file.close()
            self.json_file = None

