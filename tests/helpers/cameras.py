"""A webcam for tests on a machine without one: a capture that plays a video file at its frame rate."""

import time

import cv2


class FakeCamera:
    """Stands in for cv2.VideoCapture(index): plays a real video file at its frame rate, like a camera.

    With `frames=False` it opens but never delivers a frame (a camera another program holds, or broken).
    After the file's last frame, read() fails as when a camera is unplugged.
    """

    def __init__(self, video, frames=True):
        self.video, self.frames = cv2.VideoCapture(str(video)), frames
        self.fps = self.video.get(cv2.CAP_PROP_FPS)
        self.next_time, self.released, self.reads = None, False, 0

    def isOpened(self):  # noqa: N802 (cv2's name)
        return not self.released

    def read(self):
        self.reads += 1
        if self.released or not self.frames:
            time.sleep(0.05)
            return False, None
        now = time.monotonic()
        self.next_time = max(self.next_time or now, now - 1 / self.fps)
        time.sleep(max(0.0, self.next_time - now))
        self.next_time += 1 / self.fps
        return self.video.read()

    def get(self, prop):
        return self.fps if prop == cv2.CAP_PROP_FPS else self.video.get(prop)

    def release(self):
        self.released = True
        self.video.release()


class CameraCv2:
    """The cv2 module as dataloaders sees it in a test: VideoCapture(<int>) opens `open_camera(index)`,
    everything else is the real cv2. Every camera opened is kept in `cameras`."""

    def __init__(self, open_camera):
        self.open_camera, self.cameras = open_camera, []

    def VideoCapture(self, source, *args):  # noqa: N802 (cv2's name)
        if not isinstance(source, int):
            return cv2.VideoCapture(source, *args)
        camera = self.open_camera(source)
        self.cameras.append(camera)
        return camera

    def __getattr__(self, name):
        return getattr(cv2, name)
