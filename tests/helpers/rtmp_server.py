"""An RTMP server on 127.0.0.1 for the stream tests: FFmpeg in listen mode, fed numbered frames.

FFmpeg itself serves RTMP (`-f flv -listen 1 rtmp://...`), one client per FFmpeg process; this script
starts a new FFmpeg whenever the previous one ends (its client left), so the address keeps working.
Frames come from mjpeg_server.draw_frame (each carries its own number, read back with `frame_number`),
are made at --fps like a camera and sent as H.264 (libx264, zero latency). Needs the ffmpeg package
(setup.sh --dev installs it). Prints "ready" once FFmpeg listens.

Usage:
    python tests/helpers/rtmp_server.py --port 1935 --fps 10 --width 176 --height 96
    ffplay rtmp://127.0.0.1:1935/live/test
"""

import argparse
import signal
import subprocess
import sys
import threading
import time

from mjpeg_server import draw_frame


def listening(port):
    """True when something listens on TCP 127.0.0.1:port (read from /proc, so no connection is used up)."""
    wanted = f"0100007F:{port:04X}"
    with open("/proc/net/tcp") as table:
        return any(line.split()[1] == wanted and line.split()[3] == "0A" for line in table.readlines()[1:])


def start_ffmpeg(args):
    return subprocess.Popen(
        ["ffmpeg", "-hide_banner", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "bgr24", "-s",
         f"{args.width}x{args.height}", "-r", str(args.fps), "-i", "-", "-c:v", "libx264", "-preset", "ultrafast",
         "-tune", "zerolatency", "-pix_fmt", "yuv420p", "-g", str(args.fps), "-f", "flv", "-listen", "1",
         f"rtmp://127.0.0.1:{args.port}/live/test"], stdin=subprocess.PIPE)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--width", type=int, default=176)
    parser.add_argument("--height", type=int, default=96)
    args = parser.parse_args()

    server = {"ffmpeg": start_ffmpeg(args), "stopping": False, "lock": threading.Lock()}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    signal.signal(signal.SIGINT, lambda *_: sys.exit(0))
    try:
        # FFmpeg reads its input before it opens the output, so frames flow before it listens
        threading.Thread(target=feed, args=(server, args), daemon=True).start()
        deadline = time.monotonic() + 60  # FFmpeg starts in well under a second, but a busy CPU stretches it
        while not listening(args.port):
            if server["ffmpeg"].poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"ffmpeg does not listen on 127.0.0.1:{args.port}")
            time.sleep(0.05)
        print("ready", flush=True)
        while True:
            signal.pause()
    finally:
        with server["lock"]:  # the feeder starts no new FFmpeg from now on
            server["stopping"] = True
            server["ffmpeg"].kill()
            server["ffmpeg"].wait()


def feed(server, args):
    """Numbered frames at args.fps into FFmpeg; a new FFmpeg for the next client when one ends."""
    number, next_time = 0, time.monotonic()
    while True:
        try:  # blocks while FFmpeg waits for a client: the frame rate is counted from the connection
            server["ffmpeg"].stdin.write(draw_frame(number, args.width, args.height).tobytes())
            server["ffmpeg"].stdin.flush()
        except (BrokenPipeError, ValueError):  # the client left and FFmpeg ended: serve the next one
            with server["lock"]:
                if server["stopping"]:
                    return
                server["ffmpeg"].wait()
                server["ffmpeg"] = start_ffmpeg(args)
            continue
        number += 1
        next_time = max(next_time + 1.0 / args.fps, time.monotonic() - 1.0 / args.fps)
        time.sleep(max(0.0, next_time - time.monotonic()))


if __name__ == "__main__":
    main()
