"""How old the frame each row describes is, with three live streams: one detect.py over the three (one forward
pass over the newest frame of each, issue 26) / one detect.py per stream.

  streams_latency  three local HTTP MJPEG streams at 10 FPS (tests/helpers/mjpeg_server.py, which logs when it
                   sent each frame to each client); a row's age is the time from the server sending that frame
                   to detect.py printing the row's console line, which it prints right after writing the row to
                   results.csv. Median and 95th percentile over every row but each stream's first few; every
                   detect.py process gets the same threads (default 1: see below). Ratio: median age with one
                   detect.py / with one per stream                                           target <= 1.25

One thread per process by default: on a 2-core machine shared with other work (load 7-14), the one process
with 2 OpenMP threads took seconds per group (its threads spin waiting for each other while the others hold
the cores): median ages of 0.5-2 s against 20 ms with 1 thread, a measure of the machine's load rather than
of batching. streams_latency(..., threads=N) gives each process N.

A row names its frame by `frame`, the frames its stream's reader received so far (0-based); the server numbers
the frames it sent each client the same way, so the two meet. Each detect.py opens each stream once (checked:
a second connection, FFmpeg probing say, would make the numbers disagree).

Usage (Unet/resnet18 at 256, 320x240 streams, 60 rows a stream; a row of the benchmarks' table):
    python3 -m bench.run --only streams_latency
    python3 -m bench.run --only streams_latency --rounds 1
"""

import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import torch

from segtoolkit.models.checkpoints import save_checkpoint
from segtoolkit.models.factory import build_model, model_meta
from tests.helpers.servers import MjpegServer

REPO = Path(__file__).resolve().parents[1]
STREAMS = 3
ROW_LINE = re.compile(r"^stream (\S+) frame (\d+) \d+x\d+: ")


def frame_ages(rows, sent, skip):
    """Seconds from sending to the row, for every row but each stream's first `skip`. rows: (printed at, url,
    frame) in the order printed; sent: {url: {frame: sent at}} for the connection the run read."""
    ages, seen = [], {}
    for printed, url, frame in rows:
        seen[url] = seen.get(url, 0) + 1
        if seen[url] > skip:
            ages.append(printed - sent[url][frame])
    return ages


def read_sent(log_file, clients_before):
    """{frame: sent at} of the one client that connected since the log held `clients_before` clients, and the
    number of clients now; more than one new client is an error (the frame numbers would not meet)."""
    by_client = {}
    for line in Path(log_file).read_text().splitlines():
        client, frame, sent_at = line.split()
        by_client.setdefault(int(client), {})[int(frame)] = float(sent_at)
    new = sorted(client for client in by_client if client >= clients_before)
    if len(new) != 1:
        raise RuntimeError(f"{log_file}: {len(new)} new connections in one run, expected 1")
    return by_client[new[0]], max(by_client) + 1


def stamped_rows(process, rows):
    """Append (time printed, url, frame) for each of detect.py's per-frame stream lines, as they come."""
    for line in process.stdout:
        match = ROW_LINE.match(line)
        if match:
            rows.append((time.time(), match.group(1), int(match.group(2))))


def run_detects(work, model_file, source_groups, frames_each, threads):
    """One detect.py per group of sources, all at once, `threads` each; returns (time, url, frame) per row."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), PYTHONUNBUFFERED="1")
    processes, rows, readers = [], [], []
    for number, sources in enumerate(source_groups):
        errors = open(work / f"detect-{number}.stderr", "w")
        process = subprocess.Popen([sys.executable, str(REPO / "detect.py"), "--model", str(model_file), "--source",
                                    *sources, "--max-frames", str(frames_each * len(sources)), "--nosave",
                                    "--save-dir", str(work / f"detect-{number}")], cwd=REPO, env=env,
                                   stdout=subprocess.PIPE, stderr=errors, text=True)
        process.errors = errors
        processes.append(process)
        readers.append(threading.Thread(target=stamped_rows, args=(process, rows), daemon=True))
        readers[-1].start()
    for process, reader in zip(processes, readers):
        code = process.wait(timeout=600)
        reader.join()
        process.errors.close()
        if code != 0:
            raise RuntimeError(f"detect.py exit {code}: {Path(process.errors.name).read_text()[-2000:]}")
    return sorted(rows)


def measure_side(work, model_file, servers, logs, clients, batched, frames_each, threads, skip):
    """The frame ages of one run of a side: one detect.py over every stream, or one per stream."""
    urls = [server.url for server in servers]
    groups = [urls] if batched else [[url] for url in urls]
    rows = run_detects(work, model_file, groups, frames_each, threads)
    sent = {}
    for i, (url, log) in enumerate(zip(urls, logs)):
        sent[url], clients[i] = read_sent(log, clients[i])
    counted = {url: sum(1 for _, row_url, _ in rows if row_url == url) for url in urls}
    if any(count <= skip for count in counted.values()):  # one process's --max-frames counts all its streams' rows
        raise RuntimeError(f"rows per stream {counted}: a stream had no row past its first {skip}")
    return np.array(frame_ages(rows, sent, skip)) * 1000


def streams_latency(work, rounds, workers, encoder="resnet18", patch=256, size=(240, 320), rows=60, skip=10,
                    threads=1):
    """Both sides `rounds` times, alternately, against the same three servers; each side keeps its round of
    lowest median. `threads`: each detect.py process's (OMP_NUM_THREADS)."""
    from bench.run import Result
    work = Path(work)
    torch.manual_seed(0)
    model_file = work / "model.pth.tar"
    save_checkpoint(model_file, build_model("Unet", encoder, 1), model_meta("Unet", encoder, 1, patch))
    logs = [work / f"sent-{i}.log" for i in range(STREAMS)]
    servers = [MjpegServer(work, fps=10, width=size[1], height=size[0], log_sent=log) for log in logs]
    clients, best = [0] * STREAMS, {}
    try:
        for server in servers:
            server.start()
        for _ in range(rounds):
            for side in ("batched", "separate"):
                ages = measure_side(work, model_file, servers, logs, clients, side == "batched", rows, threads, skip)
                stats = (float(np.median(ages)), float(np.percentile(ages, 95)))
                best[side] = min(best.get(side, stats), stats)
    finally:
        for server in servers:
            server.close()
    (batched_median, batched_p95), (separate_median, separate_p95) = best["batched"], best["separate"]
    return Result("streams_latency", batched_median / separate_median, "<= 1.25",
                  f"one detect.py over the 3: median {batched_median:.0f} ms, p95 {batched_p95:.0f} ms; one per "
                  f"stream: median {separate_median:.0f} ms, p95 {separate_p95:.0f} ms",
                  f"3 MJPEG streams {size[1]}x{size[0]} at 10 FPS, Unet/{encoder} patch {patch}, {rows} rows a "
                  f"stream ({skip} first left out), {threads} thread(s) in each detect.py process")

