"""Image/mask pairs, small data sets and videos written for a test.

The easy data set is for a model that must learn in seconds on a shared CPU: bright shapes on a dark, noisy
background, and images far from square, so a wrong un-letterboxing would shift and stretch the masks and show
up as a low IoU.
"""

import cv2
import numpy as np

from helpers.mjpeg_server import draw_frame
from make_sample_data import write_dataset

LONG_CLIP_FRAMES = 3600  # fixtures_media.long_clip: about 2 minutes at detect.py's pace, the window tests' bound


def write_tiny_data(root):
    """12 binary image/mask pairs (0/255 masks) in root with split files: 8 train.txt, 2 val.txt, 2 test.txt."""
    paths = write_dataset(root, 12, seed=1)
    for name, part in (("train.txt", paths[:8]), ("val.txt", paths[8:10]), ("test.txt", paths[10:])):
        (root / name).write_text("".join(f"{p.relative_to(root)}\n" for p in part))
    return root


def write_pair(folder, stem, image, mask):
    """Write an image and its mask as folder/imgs/<stem>.png and folder/masks/<stem>.png; returns the pair."""
    (folder / "imgs").mkdir(parents=True, exist_ok=True)
    (folder / "masks").mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(folder / "imgs" / f"{stem}.png"), image)
    cv2.imwrite(str(folder / "masks" / f"{stem}.png"), mask)
    return folder / "imgs" / f"{stem}.png", folder / "masks" / f"{stem}.png"


def easy_sample(rng, height, width):
    """(BGR image, 0/255 mask): 1-3 bright ellipses or rectangles on a dark noisy background."""
    image = rng.normal(45, 12, size=(height, width, 3))
    mask = np.zeros((height, width), np.uint8)
    for _ in range(int(rng.integers(1, 4))):
        grey = (int(rng.integers(170, 250)),) * 3
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        size = int(rng.integers(min(height, width) // 6, min(height, width) // 3))
        if rng.random() < 0.6:
            axes, angle = (size, int(size * rng.uniform(0.5, 1.0))), float(rng.uniform(0, 180))
            cv2.ellipse(image, centre, axes, angle, 0, 360, grey, -1)
            cv2.ellipse(mask, centre, axes, angle, 0, 360, 255, -1)
        else:
            corner = (centre[0] + size, centre[1] + size // 2)
            cv2.rectangle(image, centre, corner, grey, -1)
            cv2.rectangle(mask, centre, corner, 255, -1)
    image = np.clip(image + rng.normal(0, 6, size=image.shape), 0, 255).astype(np.uint8)
    return image, mask


def write_easy_dataset(root, count, seed):
    """`count` pairs in root/imgs and root/masks, alternately wide (about 2:1) and tall (1:2)."""
    rng = np.random.default_rng(seed)
    (root / "imgs").mkdir(parents=True, exist_ok=True)
    (root / "masks").mkdir(parents=True, exist_ok=True)
    for index in range(count):
        short, long = int(rng.integers(72, 100)), int(rng.integers(150, 210))
        height, width = (short, long) if index % 2 == 0 else (long, short)
        image, mask = easy_sample(rng, height, width)
        cv2.imwrite(str(root / "imgs" / f"easy_{index:03d}.png"), image)
        cv2.imwrite(str(root / "masks" / f"easy_{index:03d}.png"), mask)
    return root


def write_video(path, frames, fps=12.0, size=(176, 96)):
    """An MP4 whose frames carry their own number (see mjpeg_server.draw_frame) and two bright blobs."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), fps, size)
    for number in range(frames):
        writer.write(draw_frame(number, *size))
    writer.release()
    return path


def video_facts(path):
    """(decodable frames, FPS, width, height) of a video file, read back with OpenCV."""
    capture = cv2.VideoCapture(str(path))
    facts = [capture.get(cv2.CAP_PROP_FPS), int(capture.get(cv2.CAP_PROP_FRAME_WIDTH)),
             int(capture.get(cv2.CAP_PROP_FRAME_HEIGHT))]
    frames = 0
    while capture.read()[0]:
        frames += 1
    capture.release()
    return (frames, *facts)
