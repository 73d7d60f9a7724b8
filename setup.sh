#!/usr/bin/env bash
# Install everything the toolkit needs on a fresh Debian machine with Python 3.11.
#   bash setup.sh          # Python packages for train.py / detect.py
#   bash setup.sh --dev    # plus test tools and the Debian packages the tests start (Xvfb, ffmpeg, RTSP server)
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
dev=0
[ "${1:-}" = "--dev" ] && dev=1

if [ "$dev" = 1 ]; then
  debs=(xvfb openbox x11-utils xdotool imagemagick ffmpeg openssl python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-tools
        gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-ugly gstreamer1.0-rtsp)
  missing=()
  for deb in "${debs[@]}"; do dpkg -s "$deb" >/dev/null 2>&1 || missing+=("$deb"); done
  if [ "${#missing[@]}" -gt 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
  "$PYTHON" -m pip install -q -r requirements-dev.txt
else
  "$PYTHON" -m pip install -q -r requirements.txt
fi
# The package and the commands, importable from anywhere (python3 -m bench.run needs no install)
"$PYTHON" -m pip install -q --no-deps -e .
# Both OpenCV wheels write the same cv2 folder: make sure the GUI build's files are the ones in place.
"$PYTHON" -m pip install -q --force-reinstall --no-deps "$(grep '^opencv-python==' requirements.txt)"
"$PYTHON" -c "import cv2, sys; sys.exit(0 if 'QT' in cv2.getBuildInformation().split('GUI')[1][:60] else 'cv2 has no GUI support')"
