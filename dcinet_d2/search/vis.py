"""The picture of a search: the query crop beside the top-k gallery images, each hit boxed and labelled."""
import os
from typing import List, Optional, Sequence

import cv2
import numpy as np
from detectron2.utils.visualizer import Visualizer

from ..fileio import atomic_open
from .index import Hit

__all__ = ["draw_search"]

PANEL_HEIGHT = 240  # pixels; every panel is scaled to this height
COLUMNS = 6


def _panel(image_bgr: np.ndarray, box: Optional[Sequence[float]], label: str, color) -> np.ndarray:
    """RGB panel of one image with ``box`` drawn and ``label`` written above it (Detectron2's Visualizer)."""
    vis = Visualizer(image_bgr[:, :, ::-1], scale=PANEL_HEIGHT / image_bgr.shape[0])
    font = max(8, min(image_bgr.shape[0] // 18, image_bgr.shape[1] // 5))
    if box is not None:
        vis.draw_box(box, edge_color=color, line_style="-")
    anchor = (box[0], max(0, box[1] - font * 1.4)) if box is not None else (2, 2)
    vis.draw_text(label, anchor, font_size=font, color=color, horizontal_alignment="left")
    return vis.get_output().get_image()


def _resize(panel, height):
    return cv2.resize(panel, (max(1, round(panel.shape[1] * height / panel.shape[0])), height))


def draw_search(query_bgr: np.ndarray, query_box: Sequence[float], hits: List[Hit], load_image, out_path: str,
                correct: Optional[List[bool]] = None) -> str:
    """Write a PNG: the query crop, then each hit's gallery image with its box, rank and similarity.

    Args:
        query_bgr: the query image, BGR uint8. query_box: XYXY in its pixels.
        hits: ranked hits. load_image: Hit -> BGR uint8 image of its gallery image (or frame).
        correct: optional per-hit truth (green: the queried identity, red: another); default all yellow.
    Returns:
        ``out_path`` (written atomically).
    """
    x1, y1, x2, y2 = [int(round(v)) for v in query_box]
    crop = query_bgr[max(0, y1):max(y1 + 1, y2), max(0, x1):max(x1 + 1, x2)]
    panels = [_panel(np.ascontiguousarray(crop), None, "query", "white")]
    for i, hit in enumerate(hits):
        color = "yellow" if correct is None else ("lime" if correct[i] else "red")
        panels.append(_panel(load_image(hit), hit.box, f"#{hit.rank} {hit.similarity:.2f}", color))
    panels = [_resize(p, PANEL_HEIGHT) for p in panels]
    rows = [panels[i:i + COLUMNS] for i in range(0, len(panels), COLUMNS)]
    width = max(sum(p.shape[1] for p in row) + 4 * (len(row) - 1) for row in rows)
    canvas = np.full((len(rows) * (PANEL_HEIGHT + 4) - 4, width, 3), 255, np.uint8)
    for r, row in enumerate(rows):
        x = 0
        for p in row:
            canvas[r * (PANEL_HEIGHT + 4):r * (PANEL_HEIGHT + 4) + PANEL_HEIGHT, x:x + p.shape[1]] = p
            x += p.shape[1] + 4
    ok, png = cv2.imencode(".png", canvas[:, :, ::-1])
    if not ok:
        raise ValueError(f"{out_path}: could not encode the picture")
    os.makedirs(os.path.dirname(os.path.abspath(out_path)), exist_ok=True)
    with atomic_open(out_path, "wb") as f:
        f.write(png.tobytes())
    return out_path
