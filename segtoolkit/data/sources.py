"""What a --source string is, what it expands to, and how to show and name it safely.

Pure functions (only the file system is read): `detect_source` classifies a source without opening it,
`resolve_sources` expands folders, globs and .txt lists (one --source value or several) into files and
stream addresses and fails on missing paths before any model work; `mask_credentials` and `safe_name`
keep passwords out of the console, results.csv and file names, and file names inside the output folder.

Usage:
    from segtoolkit.data.sources import SourceKind, detect_source, resolve_sources
    detect_source("rtsp://cam.local/live")      # SourceKind.RTSP
    files, streams = resolve_sources("data/sample/imgs")
    files, streams = resolve_sources(["rtsp://cam1.local/live", "cams.txt"])   # --source given several values
"""

import enum
import glob
import re
import sys
import urllib.parse
from pathlib import Path

from segtoolkit.data.imaging import IMAGE_SUFFIXES
from segtoolkit.data.splits import read_list_text
from segtoolkit.errors import UserError

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv", ".flv", ".ts", ".gif")
STREAM_SCHEMES = {"rtsp": "RTSP", "rtsps": "RTSP", "rtmp": "RTMP", "rtmps": "RTMP", "http": "HTTP", "https": "HTTP"}
# path separators, control characters (C0, DEL, C1, line and paragraph separators) and Windows' reserved ones
UNSAFE_IN_NAMES = re.compile(r'[/\\:*?"<>|\x00-\x1f\x7f-\x9f\u2028\u2029]+')
SECRET_QUERY_KEYS = re.compile(r"^(pass(word)?|pwd|token|key|api_?key|auth|secret|sig(nature)?)$", re.IGNORECASE)


class SourceKind(enum.Enum):
    IMAGE = "image"
    VIDEO = "video"
    FOLDER = "folder"
    GLOB = "glob"
    LIST = "list"
    RTSP = "rtsp"
    RTMP = "rtmp"
    HTTP = "http"
    WEBCAM = "webcam"

    @property
    def is_stream(self):
        return self in (SourceKind.RTSP, SourceKind.RTMP, SourceKind.HTTP, SourceKind.WEBCAM)


def detect_source(source):
    """The SourceKind of a --source string. Files, folders and lists must exist (UserError otherwise)."""
    source = str(source).strip()
    scheme = urllib.parse.urlsplit(source).scheme.lower()
    if scheme in STREAM_SCHEMES:
        return SourceKind[STREAM_SCHEMES[scheme]]
    if "://" in source:
        raise UserError(f"--source {mask_credentials(source)}: unsupported scheme '{scheme}'; use rtsp://, "
                        f"rtmp://, http:// or https://")
    if source.isdigit():
        return SourceKind.WEBCAM
    path = Path(source)
    # a file or folder that exists is what the user named, even when its name holds glob characters
    # ('img[1].png' beside img1.png, a folder 'shots [2024]'); only a path that does not exist is a pattern
    if not path.exists() and any(char in source for char in "*?["):
        return SourceKind.GLOB
    if path.is_dir():
        return SourceKind.FOLDER
    if not path.exists():
        raise UserError(f"--source {source}: no such file or folder; give an image, video, folder, glob, "
                        f".txt list, stream URL or webcam index")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        return SourceKind.LIST
    if suffix in IMAGE_SUFFIXES:
        return SourceKind.IMAGE
    if suffix in VIDEO_SUFFIXES:
        return SourceKind.VIDEO
    raise UserError(f"--source {source}: '{suffix}' is neither an image ({', '.join(IMAGE_SUFFIXES)}) nor a "
                    f"video ({', '.join(VIDEO_SUFFIXES)}) nor a .txt list of sources")


def media_files(paths):
    """The image and video files among `paths`, in the given order."""
    return [Path(p) for p in paths if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES + VIDEO_SUFFIXES]


def resolve_sources(sources):
    """Expand --source into (files, streams): image/video paths and stream addresses (URLs, webcam indices).

    `sources` is one --source value or several (a list or tuple), expanded in turn. A .txt list holds one
    source per line (files, folders, globs or streams; relative paths are relative to the list's folder;
    '#' starts a comment line). Everything is checked here, before the model loads; a stream given twice
    is refused, since its rows, video and window are named after it.
    """
    files, streams = [], []
    for source in sources if isinstance(sources, (list, tuple)) else [sources]:
        more_files, more_streams = resolve_source(source)
        files += more_files
        streams += more_streams
    shown = [mask_credentials(stream) for stream in streams]
    twice = next((name for i, name in enumerate(shown) if name in shown[:i]), None)
    if twice is not None:
        raise UserError(f"--source: the stream {twice} is given twice; give each stream once")
    return files, streams


def resolve_source(source):
    """(files, streams) of one --source value: see resolve_sources."""
    kind = detect_source(source)
    if kind != SourceKind.LIST:
        return expand_one(str(source).strip(), kind)
    listing = Path(source)
    entries = [line.strip() for line in read_list_text(listing, f"--source {listing}").splitlines()]
    entries = [entry for entry in entries if entry and not entry.startswith("#")]
    if not entries:
        raise UserError(f"--source {listing}: the list is empty; write one image, video, folder or stream per line")
    files, streams, problems = [], [], []
    for entry in entries:
        is_path = "://" not in entry and not entry.isdigit() and not Path(entry).is_absolute()
        entry = str(listing.parent / entry) if is_path else entry
        try:
            entry_kind = detect_source(entry)
            if entry_kind == SourceKind.LIST:
                raise UserError(f"{entry} is a list inside a list; inline its lines")
            more_files, more_streams = expand_one(entry, entry_kind)
        except UserError as error:  # collect every bad line, so the user fixes the list in one go
            problems.append(str(error))
            continue
        files += more_files
        streams += more_streams
    if problems:
        raise UserError(f"--source {listing}: {len(problems)} bad line(s): " + "; ".join(problems[:5]))
    return files, streams


def expand_one(source, kind):
    if kind == SourceKind.WEBCAM:
        check_webcam(int(source))
        return [], [source]
    if kind.is_stream:
        return [], [source]
    if kind in (SourceKind.IMAGE, SourceKind.VIDEO):
        return [Path(source)], []
    if kind == SourceKind.FOLDER:
        files = media_files(sorted(Path(source).iterdir()))
        where = f"folder {source}"
    else:
        files = media_files(sorted(glob.glob(literal_folders(source), recursive=True)))
        where = f"glob {source}"
    if not files:
        raise UserError(f"--source {where} holds no images ({', '.join(IMAGE_SUFFIXES)}) or videos "
                        f"({', '.join(VIDEO_SUFFIXES)})")
    return files, []


def literal_folders(pattern):
    """The glob pattern with its longest leading folder that exists escaped: in 'shots [2024]/*.png' the
    folder 'shots [2024]' is a name, not a character class."""
    parts = Path(pattern).parts
    for end in range(len(parts) - 1, 0, -1):
        prefix = Path(*parts[:end])
        if prefix.is_dir():
            return str(Path(glob.escape(str(prefix)), *parts[end:]))
    return pattern


def check_webcam(index, device_dir="/dev"):
    """On Linux a webcam is /dev/videoN: say so plainly when it is absent instead of a V4L2 warning."""
    if sys.platform.startswith("linux") and not (Path(device_dir) / f"video{index}").exists():
        present = sorted(p.name for p in Path(device_dir).glob("video*"))
        raise UserError(f"--source {index}: webcam {device_dir}/video{index} does not exist "
                        f"({'cameras present: ' + ', '.join(present) if present else 'no camera is connected'}); "
                        f"connect one or give another source")


# ---------------------------------------------------------------- names safe to show and to write


def mask_credentials(source):
    """The source with any password (user:PASS@host, ?password=...) replaced by ***, for display and files."""
    source = str(source)
    parts = urllib.parse.urlsplit(source)
    if not parts.scheme or not parts.netloc:
        return source
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, host = netloc.rsplit("@", 1)
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{host}" if ":" in userinfo else f"***@{host}"
    query = "&".join(
        f"{key}=***" if SECRET_QUERY_KEYS.match(urllib.parse.unquote(key)) else f"{key}={value}" if sep else key
        for key, sep, value in (item.partition("=") for item in parts.query.split("&") if item))
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def safe_name(source, keep_suffix=False, max_bytes=150):
    """A file name stem for a source, without credentials, safe to write inside the output folder.

    The name is kept as the user wrote it (Unicode, spaces, brackets): only path separators, control
    characters and the characters Windows refuses in names (<>:"|?*, so results can be copied to any
    disk) become '_', and leading dots are dropped (never '..' nor a hidden file). keep_suffix keeps the
    file's extension ('odd.avi'), for sources whose stems collide. At most max_bytes of UTF-8, so the
    name with a '_2' and a suffix stays within the 255 bytes file systems allow.
    """
    source = str(source)
    parts = urllib.parse.urlsplit(source)
    if parts.scheme and parts.netloc:
        host = parts.netloc.rsplit("@", 1)[-1]
        text = f"{host}{parts.path}"
    elif source.isdigit():
        text = f"webcam{source}"
    else:
        text = Path(source).name if keep_suffix else Path(source).stem
    text = UNSAFE_IN_NAMES.sub("_", text).strip().lstrip(".").strip()
    text = text.encode()[:max_bytes].decode(errors="ignore")  # never half a character
    return text or "source"
