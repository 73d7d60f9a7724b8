"""Generate the bundled sample dataset: synthetic objects on textured backgrounds.

The images are made here, from a fixed seed, so the repository carries no third-party data.
Each image shows a few vivid filled ellipses and polygons on a greyish, grainy background; the binary mask
marks the objects (255) against the background (0). Sizes vary and are not square, so letterboxing
is exercised from the first run.

Usage:
    python make_sample_data.py                      # writes data/sample and the three split files
    python make_sample_data.py --out /tmp/sample --count 20 --no-splits
"""

import argparse
from pathlib import Path

import cv2
import numpy as np

SPLITS = {"training_dataset.txt": 0.7, "validation_dataset.txt": 0.15, "test_dataset.txt": 0.15}


def make_background(rng, height, width):
    """A smooth, weakly coloured gradient with grainy noise: objects differ by saturation and texture."""
    levels = rng.integers(40, 220, size=(2, 2, 1)).astype(np.float32)
    tint = rng.integers(-15, 16, size=(2, 2, 3)).astype(np.float32)
    corners = np.clip(levels + tint, 0, 255)
    background = cv2.resize(corners, (width, height), interpolation=cv2.INTER_LINEAR)
    background += rng.normal(0, 14, size=(height, width, 1)).astype(np.float32)
    return np.clip(background, 0, 255)


def saturated_colour(rng):
    """A vivid BGR colour (high saturation), so objects stand out from the greyish background."""
    hsv = np.array([[[rng.integers(0, 180), rng.integers(150, 256), rng.integers(120, 256)]]], np.uint8)
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)[0, 0].tolist()


def draw_objects(rng, image, mask, classes):
    """Draw 2-5 objects; the mask gets the object's class (1 for binary, 1..classes-1 otherwise)."""
    height, width = mask.shape
    for _ in range(rng.integers(2, 6)):
        label = int(rng.integers(1, max(classes, 2)))
        colour = saturated_colour(rng)
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        size = int(rng.integers(min(height, width) // 8, min(height, width) // 3))
        if rng.random() < 0.5:
            axes = (size, int(size * rng.uniform(0.5, 1.0)))
            angle = float(rng.uniform(0, 180))
            cv2.ellipse(image, centre, axes, angle, 0, 360, colour, -1)
            cv2.ellipse(mask, centre, axes, angle, 0, 360, label, -1)
        else:
            angles = np.sort(rng.uniform(0, 2 * np.pi, size=int(rng.integers(3, 7))))
            radii = size * rng.uniform(0.6, 1.0, size=angles.size)
            points = np.stack([centre[0] + radii * np.cos(angles), centre[1] + radii * np.sin(angles)], 1)
            points = points.astype(np.int32)
            cv2.fillPoly(image, [points], colour)
            cv2.fillPoly(mask, [points], label)


def make_sample(rng, classes=1):
    """One (image, mask) pair: a uint8 BGR image and a uint8 mask of class indices."""
    height, width = int(rng.integers(96, 161)), int(rng.integers(128, 209))
    image = make_background(rng, height, width)
    mask = np.zeros((height, width), np.uint8)
    draw_objects(rng, image, mask, classes)
    image = np.clip(image + rng.normal(0, 4, size=image.shape), 0, 255).astype(np.uint8)
    return image, mask


def write_dataset(out, count, seed, classes=1):
    """Write `count` pairs to out/imgs and out/masks; return the image paths in order."""
    rng = np.random.default_rng(seed)
    (out / "imgs").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(parents=True, exist_ok=True)
    paths = []
    for index in range(count):
        image, mask = make_sample(rng, classes)
        name = f"sample_{index:03d}.png"
        cv2.imwrite(str(out / "imgs" / name), image)
        cv2.imwrite(str(out / "masks" / name), mask * 255 if classes == 1 else mask)
        paths.append(out / "imgs" / name)
    return paths


def write_splits(paths, root, split_dir):
    """Write the three split files, paths relative to `root` (the data directory)."""
    start = 0
    for index, (filename, fraction) in enumerate(SPLITS.items()):
        stop = len(paths) if index == len(SPLITS) - 1 else start + round(fraction * len(paths))
        lines = [str(path.relative_to(root)) for path in paths[start:stop]]
        (split_dir / filename).write_text("\n".join(lines) + "\n")
        start = stop


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("data/sample"), help="dataset root to write")
    parser.add_argument("--count", type=int, default=80, help="number of image/mask pairs")
    parser.add_argument("--seed", type=int, default=0, help="random seed (same seed, same data)")
    parser.add_argument("--classes", type=int, default=1, help="1: binary 0/255 masks; N: class indices 0..N-1")
    parser.add_argument("--no-splits", action="store_true", help="do not write the three split files")
    return parser.parse_args(argv)


def main(args):
    paths = write_dataset(args.out, args.count, args.seed, args.classes)
    if not args.no_splits:
        write_splits(paths, args.out, Path("."))
    print(f"wrote {len(paths)} image/mask pairs to {args.out}")


if __name__ == "__main__":
    main(parse_args())
