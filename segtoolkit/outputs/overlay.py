"""What detect.py draws and measures on a frame: polygons from a mask, the colour overlay, text and legend.

Usage:
    from segtoolkit.data.classes import class_colours
    from segtoolkit.outputs.overlay import draw_overlay
    regions = segtoolkit.data.polygons.find_regions(mask)    # outlines, holes and areas (the one definition)
    picture = draw_overlay(rgb, mask, regions, class_colours(3), ["12.3 ms (81 FPS)"], ["bg", "a", "b"])
"""

import cv2
import numpy as np

FONT = cv2.FONT_HERSHEY_SIMPLEX
MIN_TEXT_SCALE = 0.25


def text_scale(image_shape):
    """Font scale that stays readable from 160 px thumbnails to 4K frames."""
    return float(np.clip(max(image_shape[:2]) / 900, 0.35, 1.5))


def draw_overlay(image, mask, regions, colours, lines, class_names=None, alpha=0.45):
    """The RGB frame with the mask blended in colour, the outlines of its regions and their holes
    (segtoolkit.data.polygons.Region), a text block and, for several classes, a legend. `image` is not modified."""
    out = image.copy()
    painted = mask > 0
    if painted.any():
        # a lookup table and a masked copy: numpy fancy indexing here took 12-20 ms a 640x480 frame, 1 ms now
        table = np.asarray([colours[min(i, len(colours) - 1)] for i in range(256)], np.uint8).reshape(256, 1, 3)
        colour_image = cv2.LUT(cv2.merge([mask.astype(np.uint8, copy=False)] * 3), table)
        cv2.copyTo(cv2.addWeighted(image, 1 - alpha, colour_image, alpha, 0), painted.view(np.uint8), out)
    # Plain 8-connected lines, 1 px up to 800 px frames: anti-aliased 2 px outlines of a noisy mask (190
    # polygons, 14k points at 640x480) took 16 ms a frame, longer than everything else detect.py adds
    thickness = max(1, round(max(image.shape[:2]) / 800))
    by_label = {}
    for region in regions:
        by_label.setdefault(region.label, []).extend([region.outline, *region.holes])
    for label, contours in by_label.items():
        cv2.drawContours(out, contours, -1, brighter(colours[min(label, len(colours) - 1)]), thickness, cv2.LINE_8)
    draw_text_block(out, lines, corner="top-left")
    if class_names is not None and len(class_names) > 2:
        draw_legend(out, class_names, colours)
    return out


def brighter(colour):
    return tuple(int(min(255, c * 0.6 + 110)) for c in colour)


def text_block_layout(image_shape, lines, swatches=False):
    """(scale, thickness, line height, pad, swatch side, width, height) of a text block drawn on an image of
    `image_shape`: what draw_text_block draws, measured first (legend_strip sizes its strip by it)."""
    scale = text_scale(image_shape)
    widest = max(cv2.getTextSize(line, FONT, 1.0, 1)[0][0] for line in lines) + (40 if swatches else 0)
    scale = max(MIN_TEXT_SCALE, min(scale, 0.95 * image_shape[1] / widest))  # narrow images: smaller text
    thickness = max(1, round(scale * 1.5))
    sizes = [cv2.getTextSize(line, FONT, scale, thickness)[0] for line in lines]
    line_height = max(h for _, h in sizes) + max(4, round(8 * scale))
    pad = max(3, round(6 * scale))
    swatch = line_height - pad if swatches else 0
    width = max(w for w, _ in sizes) + 2 * pad + (swatch + pad if swatches else 0)
    return scale, thickness, line_height, pad, swatch, width, line_height * len(lines) + pad


def draw_text_block(image, lines, corner="top-left", swatches=None, layout_shape=None):
    """White text on a dark box in a corner of `image` (in place); `swatches` puts a colour square per line.
    The text is sized for `image`, or for an image of `layout_shape` (legend_strip: the strip's own width)."""
    if not lines:
        return
    scale, thickness, line_height, pad, swatch, width, height = text_block_layout(layout_shape or image.shape, lines,
                                                                                  bool(swatches))
    x0 = 0 if corner == "top-left" else max(0, image.shape[1] - width)
    region = image[0:height, x0:x0 + width]
    region[:] = (region * 0.35).astype(np.uint8)
    for i, line in enumerate(lines):
        baseline = (i + 1) * line_height - pad // 2
        x = x0 + pad
        if swatches:
            cv2.rectangle(image, (x, baseline - swatch + 2), (x + swatch, baseline + 2), swatches[i], -1)
            x += swatch + pad
        cv2.putText(image, line, (x, baseline), FONT, scale, (255, 255, 255), thickness, cv2.LINE_AA)


def draw_legend(image, class_names, colours):
    """Class colour squares and names in the top-right corner (background omitted)."""
    draw_text_block(image, list(class_names[1:]), corner="top-right", swatches=list(colours[1:len(class_names)]))


def legend_strip(width, class_names, colours):
    """A dark RGB strip `width` wide listing every class: its index, colour square and name (below a
    preview grid, whose colours it explains). Background's black square is shown too: it says black means it."""
    lines = [f"{index} {name}" for index, name in enumerate(class_names)]
    height = text_block_layout((1, width), lines, True)[-1]
    strip = np.full((height, width, 3), 40, np.uint8)
    draw_text_block(strip, lines, swatches=[tuple(int(v) for v in colour) for colour in colours[:len(lines)]],
                    layout_shape=(1, width))
    return strip
