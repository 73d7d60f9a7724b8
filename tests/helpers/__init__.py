"""Plain helpers for the tests (no fixtures: those live in the fixtures_*.py modules here, which
tests/conftest.py registers through `pytest_plugins`, so each session fixture has one home and runs once).

- paths: REPO, SAMPLE and RUNS (train.py's --project for every run the tests start)
- training: TINY (the one tiny-model flag set), train_tiny, in-process trainers on tiny data
- data: image/mask pairs, the easy shapes data set, numbered videos
- detect_runs: detect.py as a subprocess (foreground or background) and its results.csv
- cameras: a fake webcam playing a video file, and the cv2 module that opens it
- servers: wait_until, free ports, the MJPEG/RTSP/RTMP server processes, Xvfb's window manager
- mjpeg_server.py, rtsp_server.py, rtmp_server.py: the server scripts those processes run
- wandb_records: read back an offline wandb run
"""
