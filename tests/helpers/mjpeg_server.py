"""A small HTTP MJPEG server (multipart/x-mixed-replace), like an IP camera, for the stream tests.

Every frame carries its own number in a strip of black/white blocks at the top (see `frame_number`),
so a test can tell whether a client saw a frame twice or skipped frames. Bright ellipses move on a
dark background below the strip. Listens on 127.0.0.1 only. With --log-sent FILE it appends a line
`CLIENT K TIME` for every frame it sends: the client's number (0, 1... in the order they connected), the
frame's number among those sent to that client (0-based: what a reader counts as it receives them) and
the wall-clock time it was sent (bench/streams_latency.py reads it). With --certfile and --keyfile it speaks
HTTPS only (TLS on the same port), like a camera behind a self-signed certificate.

Usage:
    python tests/helpers/mjpeg_server.py --port 8090 --fps 10 --width 192 --height 128
    curl http://127.0.0.1:8090/stream.mjpg
    python tests/helpers/mjpeg_server.py --port 8443 --certfile cert.pem --keyfile key.pem
    curl --insecure https://127.0.0.1:8443/stream.mjpg
"""

import argparse
import http.server
import itertools
import ssl
import sys
import threading
import time

import cv2
import numpy as np

BITS = 16
BLOCK = 8


def draw_frame(number, width, height):
    """A BGR frame: the number as 16 blocks of 8x8 px (white = 1) on the top row, moving blobs below."""
    image = np.full((height, width, 3), 30, np.uint8)
    phase = number / 10.0
    for k in range(2):
        centre = (int(width * (0.3 + 0.4 * k) + 20 * np.sin(phase + k)), int(height * 0.6 + 15 * np.cos(phase)))
        cv2.ellipse(image, centre, (width // 8, height // 6), 0, 0, 360, (220, 220, 220), -1)
    image[:BLOCK, :BITS * BLOCK] = 0
    for bit in range(BITS):
        if number >> bit & 1:
            image[:BLOCK, bit * BLOCK:(bit + 1) * BLOCK] = 255
    return image


def frame_number(image):
    """Read back the number drawn by `draw_frame` (works on RGB or BGR, survives JPEG)."""
    strip = image[:BLOCK, :BITS * BLOCK].astype(np.float32).mean(axis=2)
    return sum(1 << bit for bit in range(BITS) if strip[2:-2, bit * BLOCK + 2:(bit + 1) * BLOCK - 2].mean() > 127)


class Camera:
    """Makes one frame every 1/fps seconds; every client gets the newest one (like a real camera)."""

    def __init__(self, fps, width, height, start):
        self.fps, self.width, self.height = fps, width, height
        self.number, self.jpeg = start - 1, None
        self.condition = threading.Condition()
        threading.Thread(target=self.produce, daemon=True).start()

    def produce(self):
        next_time = time.monotonic()
        while True:
            ok, buffer = cv2.imencode(".jpg", draw_frame(self.number + 1, self.width, self.height),
                                      [cv2.IMWRITE_JPEG_QUALITY, 90])
            with self.condition:
                self.number += 1
                self.jpeg = buffer.tobytes()
                self.condition.notify_all()
            next_time += 1.0 / self.fps
            time.sleep(max(0.0, next_time - time.monotonic()))

    def wait_newer(self, number):
        with self.condition:
            self.condition.wait_for(lambda: self.number > number, timeout=5)
            return self.number, self.jpeg


class SentLog:
    """--log-sent: one line per frame sent, `CLIENT K TIME` (see the module's docstring); a no-op without a file."""

    def __init__(self, path):
        self.handle = open(path, "a") if path else None
        self.clients, self.lock = itertools.count(), threading.Lock()

    def sent(self, client, k):
        if self.handle is not None:
            with self.lock:
                self.handle.write(f"{client} {k} {time.time():.6f}\n")
                self.handle.flush()


def make_handler(camera, log):
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if self.path != "/stream.mjpg":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.send_header("Cache-Control", "no-cache")
            self.end_headers()
            number, client = -1, next(log.clients)
            try:
                for k in itertools.count():
                    number, jpeg = camera.wait_newer(number)
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\n"
                                     + f"Content-Length: {len(jpeg)}\r\n\r\n".encode() + jpeg + b"\r\n")
                    self.wfile.flush()
                    log.sent(client, k)
            except (BrokenPipeError, ConnectionResetError, ssl.SSLEOFError):  # the client left
                pass

        def log_message(self, *args):
            pass

    return Handler


class TlsServer(http.server.ThreadingHTTPServer):
    """HTTPS: each connection's TLS handshake runs in its own handler thread, so a client that stalls
    in the handshake (or speaks plain HTTP) cannot block the others."""

    def __init__(self, address, handler, context):
        super().__init__(address, handler)
        self.context = context

    def finish_request(self, request, client_address):
        try:
            connection = self.context.wrap_socket(request, server_side=True)
        except OSError:  # ssl.SSLError included: a client that refused the certificate, or plain HTTP
            return
        with connection:
            super().finish_request(connection, client_address)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--fps", type=float, default=10)
    parser.add_argument("--width", type=int, default=192)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--start", type=int, default=0, help="number of the first frame")
    parser.add_argument("--certfile", help="PEM certificate: serve HTTPS (needs --keyfile)")
    parser.add_argument("--keyfile", help="PEM private key of --certfile")
    parser.add_argument("--log-sent", help="append `CLIENT K TIME` to this file for every frame sent")
    parser.add_argument("--hold", action="store_true", help="print 'holding', listen only after a line on stdin "
                        "(tests/helpers/servers.py prepare(): a restart without the interpreter's start-up time)")
    args = parser.parse_args()
    if args.hold:
        print("holding", flush=True)
        if not sys.stdin.readline():  # the test ended without starting this server
            return
    camera, log = Camera(args.fps, args.width, args.height, args.start), SentLog(args.log_sent)
    if args.certfile:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(args.certfile, args.keyfile)
        server = TlsServer(("127.0.0.1", args.port), make_handler(camera, log), context)
    else:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), make_handler(camera, log))
    server.daemon_threads = True
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
