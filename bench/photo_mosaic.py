"""Real photographs, several classes: mosaics cut from the photographs that scikit-image ships.

The quality benchmark's third data set (issue 24 asks for a multi-class set of real photographs that needs no
download at run time). Each image is a 240x180 mosaic (4:3, as 480x360 street-scene sets at half size) of 3 to 7
regions with wavy borders; each region is filled with a piece of one photograph, and its class is the photograph:
  0 brick, 1 grass, 2 gravel, 3 moon (four grey textures: told apart by texture alone), 4 tissue (an
  immunohistochemistry slide), 5 space (the Hubble deep field), 6 retina (a fundus photograph's inside).
Every piece is a random crop at a random scale (0.6 to 1.4 times the photograph's own), with the photograph's own
noise, lighting and colour: nothing here is drawn. Training images are cut only from the left 60% of each
photograph and validation images only from the right 40%, so no validation pixel was ever seen in training. Two
pixels each side of a border between two classes are void, labelled 7 (the number of classes, as CamVid labels
void 11 with 11 classes): train it with --classes 7 --ignore-index 7. Everything comes from one seed.

Usage:
    from bench.photo_mosaic import write_photo_mosaic
    split = write_photo_mosaic(Path("/tmp/photos"), train=120, val=40, seed=21)   # {"train": [...], "val": [...]}
    python3 -m bench.photo_mosaic --out /tmp/photos                                # to look at them
"""

from pathlib import Path

import cv2
import numpy as np

from bench.street_scenes import data_set_parser, image_names, print_shares, save_split

CLASS_NAMES = ("brick", "grass", "gravel", "moon", "tissue", "space", "retina")
VOID = len(CLASS_NAMES)  # as CamVid: void is the class count, given as --ignore-index
SOURCES = {"brick": "brick", "grass": "grass", "gravel": "gravel", "moon": "moon", "tissue": "immunohistochemistry",
           "space": "hubble_deep_field", "retina": "retina"}
WIDTH, HEIGHT = 240, 180
TRAIN_SHARE = 0.6  # training pieces from the left 60% of each photograph, validation pieces from the rest


def photographs():
    """{class name: RGB uint8 photograph} from scikit-image's bundled data (no download)."""
    try:
        from skimage import data
    except ImportError as error:
        raise SystemExit("the photo mosaic needs scikit-image (pip install scikit-image; it is in "
                         "requirements-dev.txt)") from error
    photos = {}
    for name, function in SOURCES.items():
        image = getattr(data, function)()
        if image.ndim == 2:
            image = np.repeat(image[:, :, None], 3, axis=2)
        if name == "retina":  # the fundus inside its black surround
            side = image.shape[0]
            image = image[side // 4: 3 * side // 4, side // 4: 3 * side // 4]
        photos[name] = np.ascontiguousarray(image[:, :, :3])
    return photos


def part(photo, training):
    """The columns a split may cut from: the left 60% for training, the right 40% for validation."""
    cut = int(photo.shape[1] * TRAIN_SHARE)
    return photo[:, :cut] if training else photo[:, cut:]


def piece(rng, photo, height, width):
    """A random crop of `photo` at a random scale, resized to height x width."""
    scale = rng.uniform(0.6, 1.4)
    crop_h = min(photo.shape[0], max(8, int(round(height / scale))))
    crop_w = min(photo.shape[1], max(8, int(round(width / scale))))
    top = rng.integers(0, photo.shape[0] - crop_h + 1)
    left = rng.integers(0, photo.shape[1] - crop_w + 1)
    crop = photo[top:top + crop_h, left:left + crop_w]
    return cv2.resize(crop, (width, height), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)


def layout(rng):
    """Region index per pixel: a Voronoi diagram of 3-7 random seeds, its borders made wavy by smooth noise."""
    count = int(rng.integers(3, 8))
    seeds = rng.uniform((0, 0), (HEIGHT, WIDTH), size=(count, 2))
    rows, cols = np.mgrid[0:HEIGHT, 0:WIDTH].astype(np.float32)
    wave = [cv2.resize(rng.normal(0, 1, (4, 5)).astype(np.float32), (WIDTH, HEIGHT), interpolation=cv2.INTER_CUBIC)
            for _ in range(2)]
    rows, cols = rows + 18 * wave[0], cols + 18 * wave[1]
    distances = (rows[None] - seeds[:, 0, None, None]) ** 2 + (cols[None] - seeds[:, 1, None, None]) ** 2
    return distances.argmin(axis=0)


def void_borders(mask):
    """Void (VOID) on two pixels each side of every border between two classes."""
    grown = cv2.dilate(mask, np.ones((5, 5), np.uint8))
    shrunk = cv2.erode(mask, np.ones((5, 5), np.uint8))
    return np.where(grown != shrunk, VOID, mask).astype(np.uint8)


def make_mosaic(rng, photos, training):
    """One (RGB image, mask) pair."""
    regions = layout(rng)
    image = np.zeros((HEIGHT, WIDTH, 3), np.uint8)
    mask = np.zeros((HEIGHT, WIDTH), np.uint8)
    for region in range(regions.max() + 1):
        label = int(rng.integers(len(CLASS_NAMES)))
        inside = regions == region
        image[inside] = piece(rng, part(photos[CLASS_NAMES[label]], training), HEIGHT, WIDTH)[inside]
        mask[inside] = label
    return image, void_borders(mask)


def write_photo_mosaic(root, train=120, val=40, seed=21):
    """Write train + val mosaics as root/imgs/NNNNN.png and root/masks/NNNNN.png, and train.txt, val.txt
    (one image path per line, relative to root); returns {"train": [paths], "val": [paths]}."""
    root, names = Path(root), image_names(root, train + val)
    rng, photos = np.random.default_rng(seed), photographs()
    for number, name in enumerate(names):
        image, mask = make_mosaic(rng, photos, training=number < train)
        cv2.imwrite(str(root / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        cv2.imwrite(str(root / "masks" / Path(name).name), mask)
    return save_split(root, names, train)


def parse_args(argv=None):
    return data_set_parser(__doc__, val=40, seed=21).parse_args(argv)


def main(args):
    print_shares(args.out, write_photo_mosaic(args.out, args.train, args.val, args.seed), CLASS_NAMES, VOID)
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
