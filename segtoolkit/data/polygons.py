"""Every region of every class in a mask as a polygon with its holes, and its area: what detect.py --save-json
writes, and the one definition of a region's area that results.csv, the console and the overlay report too.

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
    regions = find_regions(mask)                   # [Region(label, outline, holes, area)]
    largest = largest_area(regions)                # what results.csv's largest_polygon_px holds
    records = polygon_records(mask, ["background", "cell", "nucleus"])
    records[0] == {"class": 1, "name": "cell", "area": 118.0, "points": [[x, y], ...], "holes": [[[x, y], ...]]}
"""

from typing import NamedTuple

import cv2
import numpy as np

PARENT = 3  # findContours hierarchy entries: next, previous, first child, parent
FIRST_CHILD, NEXT = 2, 0


class Region(NamedTuple):
    """One region of one class: its outer outline and the outlines of its holes (OpenCV contours), and its
    area, the outline's less its holes'."""
    label: int
    outline: np.ndarray
    holes: list
    area: float


def find_regions(mask):
    """Every region of every class but background (0) in a mask of class indices."""
    counts = np.bincount(mask.ravel(), minlength=2)  # which classes are present: O(pixels), np.unique sorts
    labels = np.flatnonzero(counts[1:]) + 1
    regions = []
    for label in labels:
        # findContours takes any non-zero pixel as inside: a mask holding one class needs no comparison
        region = mask if len(labels) == 1 and mask.dtype == np.uint8 else (mask == label).astype(np.uint8)
        contours, hierarchy = cv2.findContours(region, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_SIMPLE)
        links = hierarchy[0] if hierarchy is not None else []
        for index, contour in enumerate(contours):
            if links[index][PARENT] >= 0:
                continue  # a hole: kept with the region around it
            holes = [contours[child] for child in children(links, index)]
            area = cv2.contourArea(contour) - sum(cv2.contourArea(hole) for hole in holes)
            regions.append(Region(int(label), contour, holes, float(area)))
    return regions


def largest_area(regions):
    """The area of the largest region (holes subtracted), 0.0 when there is none."""
    return max((region.area for region in regions), default=0.0)


def polygon_records(mask, class_names):
    """[{class, name, area, points, holes}] of every region of every class but background (0) in a mask of
    class indices; points as [[x, y], ...], holes as a list of such outlines."""
    return [{"class": region.label, "name": class_names[region.label] if region.label < len(class_names)
             else f"class_{region.label}", "area": round(region.area, 1),
             "points": region.outline.reshape(-1, 2).tolist(),
             "holes": [hole.reshape(-1, 2).tolist() for hole in region.holes]} for region in find_regions(mask)]


def children(links, index):
    """Indices of the contours directly inside contour `index` (RETR_CCOMP: its holes)."""
    child = links[index][FIRST_CHILD]
    while child >= 0:
        yield int(child)
        child = links[child][NEXT]
