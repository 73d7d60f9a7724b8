"""A GStreamer RTSP server on 127.0.0.1 for the stream tests; run it with Debian's /usr/bin/python3.

It serves a live test pattern (a moving ball) as RTP/JPEG at rtsp://127.0.0.1:PORT/test. --protocols
limits the transports it accepts, to test the client's TCP/UDP choice. Needs python3-gi and
gir1.2-gst-rtsp-server-1.0 (setup.sh --dev installs them). Prints "ready" once it listens.

Usage:
    /usr/bin/python3 tests/helpers/rtsp_server.py --port 8554 --protocols udp
"""

import argparse
import signal
import sys

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

TRANSPORTS = {"tcp": GstRtsp.RTSPLowerTrans.TCP, "udp": GstRtsp.RTSPLowerTrans.UDP}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--protocols", default="tcp,udp", help="comma-separated: tcp, udp")
    parser.add_argument("--width", type=int, default=160)
    parser.add_argument("--height", type=int, default=120)
    parser.add_argument("--fps", type=int, default=10)
    parser.add_argument("--hold", action="store_true", help="print 'holding', listen only after a line on stdin "
                        "(tests/helpers/servers.py prepare(): a restart without the interpreter's start-up time)")
    args = parser.parse_args()

    Gst.init(None)
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service(str(args.port))
    factory = GstRtspServer.RTSPMediaFactory()
    factory.set_launch(f"( videotestsrc is-live=true pattern=ball ! video/x-raw,format=I420,width={args.width},"
                       f"height={args.height},framerate={args.fps}/1 ! jpegenc ! rtpjpegpay name=pay0 pt=26 )")
    factory.set_shared(True)
    protocols = 0
    for name in args.protocols.split(","):
        protocols |= TRANSPORTS[name.strip()]
    factory.set_protocols(GstRtsp.RTSPLowerTrans(protocols))
    server.get_mount_points().add_factory("/test", factory)
    if args.hold:
        print("holding", flush=True)
        if not sys.stdin.readline():  # the test ended without starting this server
            return
    if server.attach(None) == 0:
        raise SystemExit(f"cannot listen on 127.0.0.1:{args.port}")
    loop = GLib.MainLoop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        GLib.unix_signal_add(GLib.PRIORITY_DEFAULT, sig, loop.quit)
    print("ready", flush=True)
    loop.run()


if __name__ == "__main__":
    main()
