"""Synthetic street scenes for the quality benchmark: classes that depend on the image row, with textures.

Each image is a street seen from a car. Sky fills the top; under a ragged skyline a band of buildings
(windows, several facade colours) and trees; below the horizon a sidewalk, then the road, which widens
towards the bottom and carries dashed lane marks running to a vanishing point. Cars sit on the road,
larger the nearer they are, and now and then a pedestrian stands at the kerb. Colours overlap on purpose
(grey facades and grey asphalt, blue glass and blue sky, white cars and white marks), so a pixel's colour
alone does not give its class: its row and its texture do. A vertical flip puts the sky at the bottom.

Classes (mask values): 0 sky, 1 building, 2 vegetation, 3 sidewalk, 4 road, 5 lane_mark, 6 car,
7 pedestrian (rare: well under 1% of the pixels); 255 void on every border between two classes, one pixel
each side, as hand-labelled sets (CamVid, Cityscapes) leave their outlines void. Images are 160 to 320
pixels wide in six aspect ratios from 2:1 to 3:4 (heights 120 to 240 where the ratio allows), so
letterboxing into a square patch pads every one differently. Lighting, colour cast, blur and sensor noise
vary per image. Everything comes from one seed.

Usage:
    from bench.street_scenes import write_street_scenes
    split = write_street_scenes(Path("/tmp/streets"), train=120, val=30, seed=13)   # {"train": [...], "val": [...]}
    python3 -m bench.street_scenes --out /tmp/streets                                # to look at them
"""

import argparse
from pathlib import Path

import cv2
import numpy as np

CLASS_NAMES = ("sky", "building", "vegetation", "sidewalk", "road", "lane_mark", "car", "pedestrian")
SKY, BUILDING, VEGETATION, SIDEWALK, ROAD, LANE_MARK, CAR, PEDESTRIAN = range(len(CLASS_NAMES))
VOID = 255
ASPECT_RATIOS = (2.0, 16 / 9, 3 / 2, 4 / 3, 1.0, 3 / 4)  # width / height


def scene_size(rng):
    """(height, width): width 160-320, one of the aspect ratios, height kept in 120-240 when it can be."""
    aspect = float(rng.choice(ASPECT_RATIOS))
    low, high = max(160, 120 * aspect), min(320, 240 * aspect)
    width = int(rng.uniform(low, high)) if low < high else 160
    return int(round(width / aspect)), width


def smooth_noise(rng, height, width, cells, channels=1):
    """Low-frequency noise in [-1, 1]: a coarse random grid of about `cells` cells, resized smoothly."""
    grid = rng.uniform(-1, 1, size=(max(2, cells * height // max(height, width)),
                                    max(2, cells * width // max(height, width)), channels)).astype(np.float32)
    noise = cv2.resize(grid, (width, height), interpolation=cv2.INTER_CUBIC)
    return np.clip(noise.reshape(height, width, channels), -1, 1)


def paint(image, mask, region, label, colour):
    """Fill a boolean region of the image with `colour` (an HxWx3 array or one BGR triple) and label it."""
    image[region] = colour[region] if np.ndim(colour) == 3 else colour
    mask[region] = label


def paint_sky(rng, image, mask):
    """The whole canvas as sky: a vertical gradient (clear blue or overcast grey) with soft clouds."""
    height, width = mask.shape
    overcast = rng.random() < 0.4
    top = np.array([170, 165, 160] if overcast else [rng.uniform(170, 230), rng.uniform(110, 160), 60], np.float32)
    bottom = np.array([215, 212, 208] if overcast else [235, 210, 170], np.float32) * rng.uniform(0.85, 1.05)
    rows = np.linspace(0, 1, height, dtype=np.float32)[:, None, None]
    sky = top + (bottom - top) * rows + np.zeros((1, width, 1), np.float32)
    clouds = np.clip(smooth_noise(rng, height, width, 8), 0, 1) ** 2
    sky += clouds * rng.uniform(30, 90) + smooth_noise(rng, height, width, 40) * 6
    paint(image, mask, np.ones_like(mask, bool), SKY, sky)


def facade_colour(rng):
    """A building colour: brick, beige, concrete grey (like asphalt) or blue glass (like the sky)."""
    palette = ([60, 70, 150], [150, 190, 210], [120, 120, 118], [200, 170, 120], [90, 95, 100], [185, 185, 180])
    return np.clip(np.array(palette[rng.integers(len(palette))], np.float32) + rng.normal(0, 12, 3), 0, 255)


def paint_building(rng, image, mask, left, right, top, bottom):
    """One facade from row `top` down to the horizon, with a grid of darker or bluish windows."""
    facade = np.zeros_like(mask, bool)
    facade[top:bottom, left:right] = True
    colour = facade_colour(rng)
    texture = colour + smooth_noise(rng, *mask.shape, 30) * 10 + rng.normal(0, 5, (*mask.shape, 1))
    paint(image, mask, facade, BUILDING, texture)
    step_x, step_y = int(rng.integers(7, 14)), int(rng.integers(8, 15))
    glass = np.clip(colour * rng.uniform(0.35, 0.7) + [rng.uniform(0, 50), 10, 0], 0, 255)
    for y in range(top + 3, bottom - step_y // 2, step_y):
        for x in range(left + 3, right - step_x // 2, step_x):
            cv2.rectangle(image, (x, y), (x + step_x // 2, y + step_y // 2), glass.tolist(), -1)


def paint_tree(rng, image, mask, centre_x, ground, size):
    """A tree standing on the horizon: a trunk and a crown of overlapping leafy blobs (grainy green)."""
    height, width = mask.shape
    trunk = np.zeros_like(mask, np.uint8)
    cv2.rectangle(trunk, (centre_x - max(1, size // 10), ground - size), (centre_x + max(1, size // 10), ground), 1, -1)
    crown = np.zeros_like(mask, np.uint8)
    for _ in range(int(rng.integers(3, 7))):
        centre = (centre_x + int(rng.normal(0, size / 3)), ground - size - int(rng.normal(0, size / 4)))
        cv2.circle(crown, centre, int(size * rng.uniform(0.35, 0.7)), 1, -1)
    leaves = np.array([40, 110, 50], np.float32) * rng.uniform(0.6, 1.3) + rng.normal(0, 25, (height, width, 1))
    paint(image, mask, trunk > 0, VEGETATION, np.array([40, 60, 85], np.float32))
    paint(image, mask, crown > 0, VEGETATION, np.clip(leaves, 0, 255))


def paint_skyline(rng, image, mask, horizon):
    """Buildings of random widths and heights along the horizon, trees in front of some gaps and facades."""
    height, width = mask.shape
    x = int(rng.integers(-20, 0))
    while x < width:
        building_width = int(rng.uniform(0.12, 0.35) * width)
        if rng.random() < 0.85:
            top = int(horizon - rng.uniform(0.15, 0.8) * horizon)
            paint_building(rng, image, mask, max(0, x), min(width, x + building_width), top, horizon)
        x += building_width + int(rng.integers(0, max(2, width // 12)))
    for _ in range(int(rng.integers(1, 5))):
        paint_tree(rng, image, mask, int(rng.integers(0, width)), horizon, int(rng.uniform(0.1, 0.3) * horizon))


def road_edges(horizon, height, vanish_x, bottom_left, bottom_right, y):
    """Left and right x of the road at row y: straight lines from the vanishing point to the bottom corners."""
    t = (y - horizon) / max(1, height - horizon)
    return vanish_x + (bottom_left - vanish_x) * t, vanish_x + (bottom_right - vanish_x) * t


def paint_ground(rng, image, mask, horizon, road):
    """Sidewalk (light tiles) under the horizon, then the road (grainy asphalt with shadows) over it."""
    height, width = mask.shape
    ground = np.zeros_like(mask, bool)
    ground[horizon:] = True
    tiles = np.array([rng.uniform(140, 200)] * 3, np.float32) + rng.normal(0, 10, 3)
    tiles = tiles + rng.normal(0, 8, (height, width, 1)) + smooth_noise(rng, height, width, 12) * 12
    for row in horizon + (height - horizon) / np.arange(1.2, 12, 0.9):  # tile joints, closer near the horizon
        cv2.line(tiles, (0, int(row)), (width - 1, int(row)), (tiles[0, 0] * 0.7).tolist(), 1)
    paint(image, mask, ground, SIDEWALK, tiles)
    vanish_x, bottom_left, bottom_right = road
    outline = np.array([[vanish_x - 2, horizon], [vanish_x + 2, horizon], [bottom_right, height],
                        [bottom_left, height]])
    surface = np.zeros_like(mask, np.uint8)
    cv2.fillPoly(surface, [outline.astype(np.int32)], 1)
    asphalt = np.float32(rng.uniform(70, 125)) + rng.normal(0, 11, (height, width, 1)).astype(np.float32)
    asphalt = asphalt + smooth_noise(rng, height, width, 10) * 15 + rng.normal(0, 4, 3).astype(np.float32)
    for _ in range(int(rng.integers(0, 3))):  # shadows: darker asphalt, still road
        corner = (int(rng.integers(0, width)), int(rng.integers(horizon, height)))
        shade = np.zeros_like(mask, np.uint8)
        cv2.ellipse(shade, corner, (int(rng.integers(10, width // 2)), int(rng.integers(4, 30))), 0, 0, 360, 1, -1)
        asphalt[shade > 0] *= 0.6
    paint(image, mask, surface > 0, ROAD, np.clip(asphalt, 0, 255))


def paint_lane_marks(rng, image, mask, horizon, road):
    """Dashed lines from the vanishing point towards the bottom, dashes and width shrinking with distance."""
    height, width = mask.shape
    vanish_x, bottom_left, bottom_right = road
    colour = [235, 235, 235] if rng.random() < 0.7 else [40, 200, 230]
    half_width = rng.uniform(0.012, 0.022) * width
    for share in rng.choice([0.5, 0.33, 0.67], size=int(rng.integers(1, 3)), replace=False):
        bottom_x = bottom_left + (bottom_right - bottom_left) * share
        period, depth = rng.uniform(1.0, 2.0), rng.uniform(1.0, 1.6)
        while depth < 14:  # depth ~ 1/t: equal steps in depth are equal steps along the street
            near, far = 1 / depth, 1 / (depth + period / 2)
            corners = [(vanish_x + (bottom_x - vanish_x) * t + side * half_width * t, horizon + (height - horizon) * t)
                       for t, side in ((near, -1), (near, 1), (far, 1), (far, -1))]
            dash = np.zeros_like(mask, np.uint8)
            cv2.fillPoly(dash, [np.array(corners, np.int32)], 1)
            paint(image, mask, (dash > 0) & (mask == ROAD), LANE_MARK, np.array(colour, np.float32))
            depth += period


def vehicle_colour(rng):
    """White, black, silver, red, blue or any colour: white cars look like lane marks, blue ones like sky."""
    palette = ([235, 235, 235], [30, 30, 30], [170, 170, 175], [40, 40, 180], [150, 80, 30])
    if rng.random() < 0.75:
        return np.array(palette[rng.integers(len(palette))], np.float32) + rng.normal(0, 10, 3)
    return rng.uniform(0, 255, 3).astype(np.float32)


def paint_car(rng, image, mask, left, bottom, size):
    """A car seen from behind or the side: body, narrower cabin with dark windows, black wheels."""
    car = np.zeros_like(mask, np.uint8)
    body_height, right = int(size * rng.uniform(0.3, 0.4)), left + size
    cabin_top = bottom - int(size * rng.uniform(0.55, 0.7))
    wheel = max(2, size // 8)
    cv2.rectangle(car, (left, bottom - wheel - body_height), (right, bottom - wheel), 1, -1)
    cabin = np.array([[left + size * 0.15, bottom - wheel - body_height], [left + size * 0.25, cabin_top],
                      [left + size * 0.75, cabin_top], [left + size * 0.85, bottom - wheel - body_height]], np.int32)
    cv2.fillPoly(car, [cabin], 1)
    paint(image, mask, car > 0, CAR, vehicle_colour(rng))
    window = cabin + np.array([[2, 0], [2, 2], [-2, 2], [-2, 0]])
    cv2.fillPoly(image, [window], [70, 55, 45])
    for x in (left + wheel, right - wheel):
        cv2.circle(image, (x, bottom - wheel), wheel, [20, 20, 20], -1)
        cv2.circle(mask, (x, bottom - wheel), wheel, CAR, -1)


def paint_pedestrian(rng, image, mask, centre_x, bottom, height):
    """A person at the kerb: two legs, a torso and a head, in random clothes (the rare class)."""
    figure = np.zeros_like(mask, np.uint8)
    width, clothes = max(2, height // 4), rng.uniform(0, 200, 3).tolist()
    hip, shoulder = bottom - height * 0.45, bottom - height * 0.82
    for side in (-1, 1):
        cv2.line(figure, (int(centre_x + side * width / 4), bottom), (centre_x, int(hip)), 1, max(1, width // 3))
    cv2.rectangle(figure, (centre_x - width // 2, int(shoulder)), (centre_x + width // 2, int(hip)), 1, -1)
    head = (centre_x, int(bottom - height * 0.9))
    cv2.circle(figure, head, max(1, height // 10), 1, -1)
    paint(image, mask, figure > 0, PEDESTRIAN, np.array(clothes, np.float32))
    cv2.circle(image, head, max(1, height // 10), [110, 150, 200], -1)


def place_objects(rng, image, mask, horizon, road):
    """Cars on the road and, in about 60% of the images, a pedestrian or two at the kerb, drawn far to near."""
    height, width = mask.shape
    span = height - horizon
    objects = []
    for _ in range(int(rng.integers(1, 5))):
        bottom = int(horizon + span * rng.uniform(0.12, 0.95))
        left_edge, right_edge = road_edges(horizon, height, *road, bottom)
        size = max(6, int((right_edge - left_edge) * rng.uniform(0.18, 0.3)))
        left = int(rng.uniform(left_edge, max(left_edge + 1, right_edge - size)))
        objects.append((bottom, lambda x=left, b=bottom, s=size: paint_car(rng, image, mask, x, b, s)))
    for _ in range(int(rng.random() < 0.6) + int(rng.random() < 0.3)):
        bottom = int(horizon + span * rng.uniform(0.08, 0.5))
        kerb = road_edges(horizon, height, *road, bottom)[int(rng.integers(2))]
        centre = int(np.clip(kerb + rng.normal(0, 0.04 * width), 2, width - 3))
        person = max(8, int((bottom - horizon) * rng.uniform(0.9, 1.2)))
        objects.append((bottom, lambda c=centre, b=bottom, p=person: paint_pedestrian(rng, image, mask, c, b, p)))
    for _, draw in sorted(objects, key=lambda item: item[0]):
        draw()


def camera(rng, image):
    """What a camera adds: uneven lighting, a colour cast, a little blur and sensor noise; uint8 BGR out."""
    height, width = image.shape[:2]
    gain = rng.uniform(0.7, 1.2) * (1 + 0.15 * smooth_noise(rng, height, width, 4))
    image = image * gain + rng.normal(0, 8, 3)
    image = cv2.GaussianBlur(image, (0, 0), rng.uniform(0.3, 1.0))
    image = image + rng.normal(0, rng.uniform(3, 10), image.shape)
    return np.clip(image, 0, 255).astype(np.uint8)


def void_borders(mask):
    """Mark every pixel whose 3x3 neighbourhood holds two classes as void: one pixel each side of a border."""
    kernel = np.ones((3, 3), np.uint8)
    border = cv2.dilate(mask, kernel) != cv2.erode(mask, kernel)
    return np.where(border, VOID, mask).astype(np.uint8)


def make_scene(rng):
    """One street scene: (uint8 BGR image, uint8 mask of class indices with void borders)."""
    height, width = scene_size(rng)
    image = np.zeros((height, width, 3), np.float32)
    mask = np.zeros((height, width), np.uint8)
    horizon = int(height * rng.uniform(0.42, 0.58))
    vanish_x = width * rng.uniform(0.35, 0.65)
    road = (vanish_x, vanish_x - width * rng.uniform(0.5, 0.9), vanish_x + width * rng.uniform(0.5, 0.9))
    paint_sky(rng, image, mask)
    paint_skyline(rng, image, mask, horizon)
    paint_ground(rng, image, mask, horizon, road)
    paint_lane_marks(rng, image, mask, horizon, road)
    place_objects(rng, image, mask, horizon, road)
    return camera(rng, image), void_borders(mask)


def write_street_scenes(root, train=120, val=30, seed=13):
    """Write train + val scenes as root/imgs/NNNNN.png and root/masks/NNNNN.png, and train.txt, val.txt
    (one image path per line, relative to root); returns {"train": [paths], "val": [paths]}."""
    root, names = Path(root), image_names(root, train + val)
    rng = np.random.default_rng(seed)
    for name in names:
        image, mask = make_scene(rng)
        cv2.imwrite(str(root / name), image)
        cv2.imwrite(str(root / "masks" / Path(name).name), mask)
    return save_split(root, names, train)


def image_names(root, count):
    """imgs/00000.png... for `count` images, with root/imgs and root/masks made."""
    for folder in ("imgs", "masks"):
        (Path(root) / folder).mkdir(parents=True, exist_ok=True)
    return [f"imgs/{index:05d}.png" for index in range(count)]


def save_split(root, names, train):
    """The first `train` of `names` for training, the rest for validation, written to root/train.txt and val.txt."""
    split = {"train": names[:train], "val": names[train:]}
    for part, paths in split.items():
        (Path(root) / f"{part}.txt").write_text("".join(f"{path}\n" for path in paths))
    return split


def class_shares(root, paths, class_names=CLASS_NAMES, void=VOID):
    """{class name or 'void': share of all pixels} over the masks of `paths`."""
    counts = np.zeros(256, np.int64)
    for path in paths:
        counts += np.bincount(cv2.imread(str(Path(root) / "masks" / Path(path).name), 0).ravel(), minlength=256)
    total = counts.sum()
    return {**{name: counts[label] / total for label, name in enumerate(class_names)}, "void": counts[void] / total}


def data_set_parser(description, val, seed):
    """The command line of a generated data set (this one, bench.photo_mosaic)."""
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder to write imgs/, masks/, train.txt, val.txt")
    parser.add_argument("--train", type=int, default=120, help="training images (default: 120)")
    parser.add_argument("--val", type=int, default=val, help=f"validation images (default: {val})")
    parser.add_argument("--seed", type=int, default=seed, help=f"the one seed everything comes from (default: {seed})")
    return parser


def print_shares(root, split, class_names=CLASS_NAMES, void=VOID):
    for part, paths in split.items():
        shares = class_shares(root, paths, class_names, void)
        print(f"{part} ({len(paths)} images): " + ", ".join(f"{name} {share:.2%}" for name, share in shares.items()))


def parse_args(argv=None):
    return data_set_parser(__doc__, val=30, seed=13).parse_args(argv)


def main(args):
    print_shares(args.out, write_street_scenes(args.out, args.train, args.val, args.seed))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(parse_args()))
