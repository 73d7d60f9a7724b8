"""Every region of every class in a mask as a polygon with its holes: what detect.py --save-json writes.

Outlines come from cv2.findContours with RETR_CCOMP: each region's outer outline and the outlines of the
holes directly in it (an island inside a hole is a region of its own). They run through the centres of the
region's boundary pixels, 8-connected (CHAIN_APPROX_SIMPLE keeps the corners of straight runs only), in the
mask's pixel coordinates.

A region's `area` is the area of its outline minus its holes' (cv2.contourArea), not its pixel count: an
outline through pixel centres leaves out half of each boundary pixel. By Pick's theorem a simple outline
with B boundary pixels encloses pixels - B/2 - 1, and a hole's outline, running on the region's pixels around
it, removes the hole's pixels plus B/2 - 1 of its own B. So over a mask, for each class,
0 <= pixels - sum of areas <= sum over every outline (outer and hole) of B/2 + 1 (tests/test_masks.py
checks it); one-pixel-wide parts, whose outline goes there and back with no area, reach the bound.

Usage:
    regions = polygon_records(mask, ["background", "cell", "nucleus"])
    regions[0] == {"class": 1, "name": "cell", "area": 118.0, "points": [[x, y], ...], "holes": [[[x, y], ...]]}
"""

import cv2
import numpy as np

PARENT = 3  # findContours hierarchy entries: next, previous, first child, parent
FIRST_CHILD, NEXT = 2, 0


def polygon_records(mask, class_names):
    """[{class, name, area, points, holes}] of every region of every class but background (0) in a mask of
    class indices; points as [[x, y], ...], holes as a list of such outlines."""
    counts = np.bincount(mask.ravel(), minlength=2)  # which classes are present: O(pixels), np.unique sorts
    records = []
    for label in np.flatnonzero(counts[1:]) + 1:
        contours, hierarchy = cv2.findContours((mask == label).astype(np.uint8), cv2.RETR_CCOMP,
                                               cv2.CHAIN_APPROX_SIMPLE)
        links = hierarchy[0] if hierarchy is not None else []
        for index, contour in enumerate(contours):
            if links[index][PARENT] >= 0:
                continue  # a hole: written with the region around it
            holes = [contours[child] for child in children(links, index)]
            area = cv2.contourArea(contour) - sum(cv2.contourArea(hole) for hole in holes)
            name = class_names[label] if label < len(class_names) else f"class_{label}"
            records.append({"class": int(label), "name": name, "area": round(float(area), 1),
                            "points": contour.reshape(-1, 2).tolist(),
                            "holes": [hole.reshape(-1, 2).tolist() for hole in holes]})
    return records


def children(links, index):
    """Indices of the contours directly inside contour `index` (RETR_CCOMP: its holes)."""
    child = links[index][FIRST_CHILD]
    while child >= 0:
        yield int(child)
        child = links[child][NEXT]
