"""Synthetic person-search datasets, written in the exact CUHK-SYSU or PRW layout.

Scenes hold several drawn people over cluttered backgrounds. Each labelled identity has a fixed
appearance (shirt colour and pattern, trousers, hair, build, bag, shoes) drawn from small palettes, so
identities are learnable from appearance yet confusable (many pairs differ in only two attributes, e.g.
navy vs. blue shirt). Every appearance is rendered with pose variation (stride, arm swing, lean, facing),
under per-image lighting (gain, colour cast, illumination ramp, noise, blur), partly occluded by other
people and by scene objects, beside unlabelled people (random appearances) and non-person distractors
(poles, crates, cars, trees, signs) that are not annotated. Training and test identities are disjoint;
every identity appears in at least two images of its split.

    python -m dcinet_d2.data.synthetic --out datasets/synthetic_cuhk --format cuhk_sysu
    python -m dcinet_d2.data.synthetic --out datasets/synthetic_prw --format prw --seed 1

The output is deterministic for a seed (the images byte for byte).
"""
import argparse
import logging
import os
import shutil
from dataclasses import dataclass, replace
from typing import Optional

import cv2
import numpy as np

from ..cli import report_error
from ..fileio import folder_write_problem

logger = logging.getLogger(__name__)

FORMATS = ("cuhk_sysu", "prw")
DEFAULT_SIZE = (240, 320)
DEFAULT_IDENTITIES = 60
DEFAULT_IMAGES = 300
# Fractions of identities and of images in the test split (CUHK-SYSU: 34% / 38%; PRW: 48% / 52%).
TEST_IDENTITY_FRACTION = 0.4
TEST_IMAGE_FRACTION = 0.4
# CUHK-SYSU galleries need this many test images besides the query image.
CUHK_GALLERY_SIZES = (50, 100)
# Labelled people per image: the identity assignment aims at MEAN and never exceeds MAX.
MEAN_LABELLED_PER_IMAGE = 2.0
MAX_LABELLED_PER_IMAGE = 5
MAX_UNLABELLED_PER_IMAGE = 2
PRW_CAMERAS = 6
# PRW's raw identities are not contiguous: identity i is written as PRW_ID_STRIDE * i + 1.
PRW_ID_STRIDE = 3
UNLABELLED_ID = {"cuhk_sysu": -1, "prw": -2}
# What each layout writes at its root (replaced by --overwrite; nothing else under the root is touched).
LAYOUT_ENTRIES = {
    "cuhk_sysu": ("Image", "annotation"),
    "prw": ("frames", "annotations", "frame_train.mat", "frame_test.mat", "ID_train.mat", "ID_test.mat",
            "query_info.txt"),
}

# Clothing palette (RGB): near neighbours (navy/blue, red/maroon, black/charcoal, beige/white) are
# deliberate, so that colour alone rarely identifies a person.
SHIRT_COLOURS = (
    (28, 28, 30), (72, 72, 78), (128, 128, 128), (190, 190, 192), (236, 236, 230), (30, 40, 100),
    (45, 85, 180), (125, 170, 220), (190, 32, 32), (112, 26, 36), (230, 140, 170), (232, 122, 34),
    (230, 200, 52), (40, 130, 60), (112, 122, 52), (30, 130, 130), (110, 50, 140), (122, 80, 40),
    (212, 190, 150),
)
TROUSER_COLOURS = (
    (25, 25, 28), (70, 70, 74), (30, 38, 90), (60, 90, 150), (130, 160, 200), (128, 128, 128),
    (200, 185, 150), (110, 75, 40), (100, 110, 50), (225, 225, 220),
)
SKIN_COLOURS = ((242, 204, 170), (222, 170, 130), (170, 120, 80), (110, 72, 46))
HAIR_COLOURS = ((20, 16, 14), (70, 45, 25), (130, 90, 50), (220, 190, 120), (160, 160, 160), (150, 60, 30))
SHOE_COLOURS = ((20, 20, 20), (235, 235, 235), (100, 60, 30), (120, 120, 125))
PATTERNS = ("plain", "hstripes", "vstripes", "checks", "block")
HAIR_STYLES = ("short", "long", "cap", "bald")
BAGS = ("none", "backpack", "handbag", "messenger")
# (height / shoulder width, legs / height): broad, normal, slim.
BUILDS = ((2.7, 0.46), (3.1, 0.48), (3.5, 0.5))


@dataclass(frozen=True)
class Appearance:
    """What a person looks like; colours are RGB uint8 triples."""

    shirt: tuple
    shirt2: tuple  # second colour of the shirt's pattern (unused when plain)
    pattern: str
    trousers: tuple
    skin: tuple
    hair: tuple
    hair_style: str
    bag: str
    bag_colour: tuple
    shoes: tuple
    aspect: float  # person height / shoulder width
    leg_fraction: float  # leg length / person height

    def key(self):
        """The attribute groups two labelled identities must differ in (at least two of them)."""
        return (
            self.shirt,
            (self.pattern, self.shirt2 if self.pattern != "plain" else None),
            self.trousers,
            (self.hair, self.hair_style),
            (self.bag, self.bag_colour if self.bag != "none" else None),
            self.aspect,
        )


@dataclass
class Person:
    """A person to draw in a scene: `pid` is the identity written to the annotations."""

    pid: int
    appearance: Appearance


def _pick(rng, options):
    return options[int(rng.integers(len(options)))]


def _palette_appearance(rng):
    """An appearance drawn from the discrete palettes (labelled identities)."""
    shirt = _pick(rng, SHIRT_COLOURS)
    shirt2 = _pick(rng, [c for c in SHIRT_COLOURS if c != shirt])
    aspect, legs = _pick(rng, BUILDS)
    bag = _pick(rng, BAGS)
    return Appearance(
        shirt=shirt, shirt2=shirt2, pattern=_pick(rng, PATTERNS), trousers=_pick(rng, TROUSER_COLOURS),
        skin=_pick(rng, SKIN_COLOURS), hair=_pick(rng, HAIR_COLOURS), hair_style=_pick(rng, HAIR_STYLES),
        bag=bag, bag_colour=_pick(rng, SHIRT_COLOURS), shoes=_pick(rng, SHOE_COLOURS), aspect=aspect,
        leg_fraction=legs,
    )


def make_identities(n, rng):
    """`n` palette appearances, every two differing in at least two attribute groups (list[Appearance])."""
    identities, keys = [], []
    attempts = 0
    while len(identities) < n:
        app = _palette_appearance(rng)
        key = app.key()
        attempts += 1
        # The palettes hold far more than 2-distinct combinations than any sane n; the attempt budget
        # only guards against an infinite loop, after which a 1-attribute difference is accepted.
        required = 2 if attempts < 200 * n else 1
        if all(sum(a != b for a, b in zip(key, other)) >= required for other in keys):
            identities.append(app)
            keys.append(key)
    return identities


def random_appearance(rng):
    """An appearance with continuous random colours (unlabelled passers-by)."""

    def colour():
        return tuple(int(v) for v in rng.integers(0, 256, size=3))

    base = _palette_appearance(rng)
    return replace(base, shirt=colour(), shirt2=colour(), trousers=colour(), bag_colour=colour())


def _jitter(colour, rng, amount=10):
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in colour)


class _Sprite:
    """Draws shapes on a colour patch and its mask at once (local pixel coordinates)."""

    def __init__(self, height, width):
        self.rgb = np.zeros((height, width, 3), np.uint8)
        self.mask = np.zeros((height, width), np.uint8)

    def draw(self, fn, colour, *args, **kwargs):
        fn(self.rgb, *args, color=tuple(int(c) for c in colour), **kwargs)
        fn(self.mask, *args, color=255, **kwargs)

    def fill_pattern(self, polygon, app, period):
        """Fill `polygon` (int32[k, 2]) with the shirt colour and pattern; `period` in pixels."""
        region = np.zeros_like(self.mask)
        cv2.fillPoly(region, [polygon], 255)
        x0, y0 = polygon.min(axis=0)
        yy, xx = np.mgrid[: region.shape[0], : region.shape[1]]
        rows, cols = ((yy - y0) // period) % 2 == 0, ((xx - x0) // period) % 2 == 0
        second = {
            "plain": np.zeros_like(rows),
            "hstripes": rows,
            "vstripes": cols,
            "checks": rows ^ cols,
            "block": yy < y0 + (polygon[:, 1].max() - y0) * 0.45,
        }[app.pattern]
        inside = region > 0
        self.rgb[inside & ~second] = app.shirt
        self.rgb[inside & second] = app.shirt2
        self.mask[inside] = 255


def render_person(app, height, rng):
    """Draw one person `height` pixels tall with a random pose.

    Returns:
        rgb (ndarray[h, w, 3] uint8), mask (ndarray[h, w] bool): the person's tight sprite.
    """
    h = float(height)
    bw = h / app.aspect  # shoulder width
    width = int(h * 0.9) + 8
    s = _Sprite(int(h) + 8, width)
    cx, top = width / 2.0, 3.0
    feet = top + h
    lean = rng.uniform(-0.04, 0.04) * h
    stride = rng.uniform(-1.0, 1.0) * 0.11 * h
    swing = rng.uniform(-1.0, 1.0) * 0.08 * h
    facing = 1 if rng.random() < 0.5 else -1  # side the bag hangs on
    r = 0.075 * h  # head radius
    head = (cx + lean, top + r)
    torso_top, hip = top + 2.2 * r, feet - app.leg_fraction * h
    thick = lambda f: max(1, int(round(f * bw)))  # noqa: E731
    P = lambda x, y: (int(round(x)), int(round(y)))  # noqa: E731
    shirt_colour, trousers = _jitter(app.shirt, rng), _jitter(app.trousers, rng)
    app = replace(app, shirt=shirt_colour, shirt2=_jitter(app.shirt2, rng))

    if app.bag == "backpack":
        side = cx + lean * 0.8 + facing * 0.18 * bw
        s.draw(cv2.rectangle, app.bag_colour, P(side - 0.6 * bw, torso_top + 0.05 * h),
               P(side + 0.6 * bw, hip - 0.02 * h), thickness=-1)
    if app.hair_style == "long":
        s.draw(cv2.ellipse, app.hair, P(*head), P(1.15 * r, 2.2 * r), 0, 0, 360, thickness=-1)
    for sign in (-1, 1):  # legs
        foot_x = cx + sign * 0.22 * bw + sign * stride * 0.5
        # The line's round cap reaches half its thickness past the end point: stop above the shoe.
        s.draw(cv2.line, trousers, P(cx + lean * 0.3 + sign * 0.22 * bw, hip),
               P(foot_x, feet - 0.02 * h - thick(0.34) / 2), thickness=thick(0.34))
        s.draw(cv2.ellipse, app.shoes, P(foot_x + facing * 0.04 * h, feet - 0.025 * h),
               P(0.07 * h, 0.025 * h), 0, 0, 360, thickness=-1)
    torso = np.array([P(cx + lean - bw / 2, torso_top), P(cx + lean + bw / 2, torso_top),
                      P(cx + lean * 0.3 + 0.42 * bw, hip + 0.02 * h),
                      P(cx + lean * 0.3 - 0.42 * bw, hip + 0.02 * h)], np.int32)
    s.fill_pattern(torso, app, max(2, int(round(bw / 5))))
    for sign in (-1, 1):  # arms swing in opposite directions
        shoulder = (cx + lean + sign * 0.45 * bw, torso_top + 0.04 * h)
        hand = (shoulder[0] + sign * 0.08 * bw + sign * swing * 0.4, hip + 0.06 * h)
        s.draw(cv2.line, shirt_colour, P(*shoulder), P(*hand), thickness=thick(0.2))
        s.draw(cv2.circle, app.skin, P(*hand), max(1, int(0.1 * bw)), thickness=-1)
    if app.bag == "handbag":
        hx = cx + lean + facing * 0.62 * bw
        s.draw(cv2.rectangle, app.bag_colour, P(hx - 0.2 * bw, hip), P(hx + 0.2 * bw, hip + 0.12 * h),
               thickness=-1)
    elif app.bag == "messenger":
        s.draw(cv2.line, app.bag_colour, P(cx + lean - facing * 0.4 * bw, torso_top),
               P(cx + lean * 0.5 + facing * 0.45 * bw, hip - 0.04 * h), thickness=thick(0.08))
        bx = cx + lean * 0.5 + facing * 0.5 * bw
        s.draw(cv2.rectangle, app.bag_colour, P(bx - 0.25 * bw, hip - 0.1 * h), P(bx + 0.25 * bw, hip),
               thickness=-1)
    s.draw(cv2.circle, app.skin, P(*head), max(2, int(round(r))), thickness=-1)
    if app.hair_style in ("short", "long"):
        s.draw(cv2.ellipse, app.hair, P(*head), P(1.05 * r, 0.8 * r), 0, 180, 360, thickness=-1)
    elif app.hair_style == "cap":
        s.draw(cv2.ellipse, app.hair, P(head[0], head[1] - 0.2 * r), P(1.1 * r, 0.9 * r), 0, 180, 360,
               thickness=-1)
        s.draw(cv2.line, app.hair, P(head[0], head[1] - 0.2 * r), P(head[0] + facing * 1.7 * r, head[1] - 0.2 * r),
               thickness=max(1, int(0.25 * r)))
    ys, xs = np.nonzero(s.mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    return s.rgb[y0:y1, x0:x1], s.mask[y0:y1, x0:x1] > 0


def _ramp(h, w, c0, c1, angle):
    """A linear colour gradient (float32[h, w, 3]) from c0 to c1 along direction `angle` (radians)."""
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    t = xx * np.cos(angle) + yy * np.sin(angle)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    return np.asarray(c0, np.float32) * (1 - t[..., None]) + np.asarray(c1, np.float32) * t[..., None]


def render_background(h, w, rng, style_rng):
    """A cluttered background (uint8[h, w, 3]): sky/wall gradient, ground, buildings, texture, shapes.

    `style_rng` sets the scene's layout and colours (shared by the frames of one PRW camera); `rng`
    the per-image variation.
    """
    horizon = int(h * style_rng.uniform(0.3, 0.5))
    wall = style_rng.integers(40, 230, size=(2, 3))
    ground = style_rng.integers(50, 200, size=(2, 3))
    img = _ramp(h, w, wall[0], wall[1], style_rng.uniform(0, np.pi))
    img[horizon:] = _ramp(h - horizon, w, ground[0], ground[1], np.pi / 2 + style_rng.uniform(-0.3, 0.3))
    for _ in range(int(style_rng.integers(1, 4))):  # buildings with windows
        x0 = int(style_rng.integers(0, w - 20))
        bw, bh = int(style_rng.integers(30, w // 2)), int(style_rng.integers(horizon // 2, horizon + 1))
        colour = [int(c) for c in style_rng.integers(40, 220, size=3)]
        cv2.rectangle(img, (x0, horizon - bh), (x0 + bw, horizon), colour, -1)
        window = [int(c) for c in style_rng.integers(0, 255, size=3)]
        for wy in range(horizon - bh + 6, horizon - 10, 14):
            for wx in range(x0 + 5, x0 + bw - 8, 12):
                cv2.rectangle(img, (wx, wy), (wx + 6, wy + 7), window, -1)
    for _ in range(int(rng.integers(4, 12))):  # clutter: random shapes
        colour = [int(c) for c in rng.integers(0, 256, size=3)]
        x, y = int(rng.integers(0, w)), int(rng.integers(0, h))
        kind = int(rng.integers(3))
        if kind == 0:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(5, 40)), y + int(rng.integers(5, 25))), colour, -1)
        elif kind == 1:
            cv2.circle(img, (x, y), int(rng.integers(3, 15)), colour, -1)
        else:
            cv2.line(img, (x, y), (int(rng.integers(0, w)), int(rng.integers(0, h))), colour,
                     int(rng.integers(1, 4)))
    # Low-frequency texture (stains, shadows), then fine grain.
    coarse = rng.normal(0, 1, size=(max(2, h // 16), max(2, w // 16), 3)).astype(np.float32)
    img += cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC) * rng.uniform(6, 20)
    img += rng.normal(0, rng.uniform(2, 8), size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), horizon


def draw_distractor(img, rng, foot_y, size):
    """Draw one unannotated non-person object standing at `foot_y`, about `size` pixels tall, in place."""
    h, w = img.shape[:2]
    kind = _pick(rng, ("pole", "crate", "car", "tree", "sign"))
    colour = [int(c) for c in rng.integers(0, 256, size=3)]
    dark = [int(c * 0.4) for c in colour]
    x = int(rng.integers(0, w))
    size = int(size)
    if kind == "pole":
        top = foot_y - int(size * 1.4)
        cv2.rectangle(img, (x, top), (x + max(2, size // 14), foot_y), colour, -1)
        cv2.circle(img, (x + size // 28, top), max(2, size // 10), [255, 240, 180], -1)
    elif kind == "crate":
        s = size // 3
        cv2.rectangle(img, (x, foot_y - s), (x + s, foot_y), colour, -1)
        cv2.line(img, (x, foot_y - s), (x + s, foot_y), dark, 2)
        cv2.line(img, (x + s, foot_y - s), (x, foot_y), dark, 2)
    elif kind == "car":
        cw, ch = int(size * 1.4), size // 2
        cv2.rectangle(img, (x, foot_y - ch), (x + cw, foot_y - ch // 4), colour, -1)
        cv2.rectangle(img, (x + cw // 5, foot_y - ch - ch // 2), (x + cw * 4 // 5, foot_y - ch), colour, -1)
        cv2.rectangle(img, (x + cw // 4, foot_y - ch - ch // 3), (x + cw * 3 // 4, foot_y - ch),
                      [150, 190, 210], -1)
        for wx in (x + cw // 5, x + cw * 4 // 5):
            cv2.circle(img, (wx, foot_y - ch // 5), max(2, ch // 4), [20, 20, 20], -1)
    elif kind == "tree":
        cv2.rectangle(img, (x, foot_y - size), (x + max(2, size // 10), foot_y), [90, 60, 30], -1)
        cv2.circle(img, (x + size // 20, foot_y - size), size // 3, [30, int(rng.integers(90, 170)), 40], -1)
    else:  # sign on a post
        sw = size // 2
        cv2.rectangle(img, (x + sw // 2 - 1, foot_y - size), (x + sw // 2 + 1, foot_y), [90, 90, 90], -1)
        cv2.rectangle(img, (x, foot_y - size), (x + sw, foot_y - size + sw // 2), colour, -1)


def apply_lighting(img, rng, gain=1.0, cast=(1.0, 1.0, 1.0)):
    """Scene lighting: brightness `gain` and colour `cast` (per RGB channel, further jittered per image),
    an illumination ramp, sensor noise and a slight blur. Returns uint8[h, w, 3]."""
    h, w = img.shape[:2]
    out = img.astype(np.float32) * gain * rng.uniform(0.85, 1.15)
    out *= np.asarray(cast, np.float32) * rng.uniform(0.94, 1.06, size=3).astype(np.float32)
    angle, strength = rng.uniform(0, 2 * np.pi), rng.uniform(0.0, 0.3)
    yy, xx = np.mgrid[:h, :w].astype(np.float32)
    t = (xx / w - 0.5) * np.cos(angle) + (yy / h - 0.5) * np.sin(angle)
    out *= 1.0 + strength * t[..., None]
    out += rng.normal(0, rng.uniform(1.5, 5.0), size=out.shape).astype(np.float32)
    out = np.clip(out, 0, 255).astype(np.uint8)
    return cv2.GaussianBlur(out, (3, 3), rng.uniform(0.4, 0.9))


def _overlap_ok(box, boxes, limit):
    """No existing box covers more than `limit` of `box`, nor `box` more than `limit` of one of them."""
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw <= 0 or ih <= 0:
            continue
        inter = iw * ih
        area = lambda b: (b[2] - b[0]) * (b[3] - b[1])  # noqa: E731
        if inter > limit * area(box) or inter > limit * area(other):
            return False
    return True


def _place(sprite_size, feet_range, boxes, rng, attempts, w, must):
    """A free position for a sprite (height, width) with its feet in `feet_range`; None if none found.

    The allowed overlap grows with the attempts, and a labelled person (`must`) is always placed.
    """
    ph, pw = sprite_size
    for attempt in range(attempts):
        feet = int(rng.integers(feet_range[0], feet_range[1] + 1))
        x0, y0 = int(rng.integers(0, max(1, w - pw + 1))), feet - ph
        box = [x0, max(y0, 0), min(x0 + pw, w), feet]
        if _overlap_ok(box, boxes, 0.3 + 0.6 * attempt / attempts):
            return x0, y0
    return (x0, y0) if must else None


def render_scene(people, size, rng, style_rng, lighting=None):
    """Draw a scene with `people` (labelled first) plus unannotated distractors and occluders.

    Returns:
        image (ndarray[H, W, 3] uint8 RGB), boxes (ndarray[n, 4] float XYWH pixels), pids (list[int])
        of the people placed (every labelled one; unlabelled ones that did not fit are dropped).
    """
    h, w = size
    img, horizon = render_background(h, w, rng, style_rng)
    h_min, h_max = 0.21 * h, 0.62 * h
    feet_lo = max(horizon + 4, int(h_min) + 4)

    def height_at(feet):  # perspective: nearer (lower) people are taller
        t = (feet - feet_lo) / max(h - 2 - feet_lo, 1)
        return float(np.clip((h_min + t * (h_max - h_min)) * rng.uniform(0.9, 1.1), 16, feet - 2))

    for _ in range(int(rng.integers(1, 5))):  # distractors behind the people
        feet = int(rng.integers(horizon, h))
        draw_distractor(img, rng, feet, height_at(max(feet, feet_lo)) * rng.uniform(0.5, 1.2))
    placed = []  # (feet, x0, y0, rgb, mask, pid)
    boxes = []
    for person in people:
        must = person.pid >= 0
        feet = int(rng.integers(feet_lo, h - 1))
        rgb, mask = render_person(person.appearance, height_at(feet), rng)
        if rng.random() < 0.5:  # facing the other way
            rgb, mask = rgb[:, ::-1], mask[:, ::-1]
        # People of this height stand within a few pixels of `feet` (perspective stays plausible).
        lo, hi = max(feet - 6, mask.shape[0]), min(feet + 6, h - 1)
        spot = _place(mask.shape, (min(lo, hi), hi), boxes, rng, 40 if must else 15, w, must)
        if spot is None:
            continue
        x0, y0 = spot
        boxes.append([x0, max(y0, 0), x0 + mask.shape[1], y0 + mask.shape[0]])
        placed.append((y0 + mask.shape[0], x0, y0, rgb, mask, person.pid))
    for _, x0, y0, rgb, mask, _ in sorted(placed, key=lambda p: p[0]):  # far (higher feet) first
        _paste(img, rgb, mask, x0, y0)
    out_boxes, pids = _tight_boxes(placed, w, h)
    if placed and rng.random() < 0.35:  # an object in front of someone's legs
        _, x0, y0, _, mask, _ = placed[int(rng.integers(len(placed)))]
        ph, pw = mask.shape
        oh = int(ph * rng.uniform(0.12, 0.3))
        ox = x0 + int(pw * rng.uniform(-0.3, 0.5))
        colour = [int(c) for c in rng.integers(0, 256, size=3)]
        cv2.rectangle(img, (ox, y0 + ph - oh), (ox + int(pw * rng.uniform(0.5, 1.0)), y0 + ph + 2), colour, -1)
    gain, cast = lighting if lighting is not None else (1.0, (1.0, 1.0, 1.0))
    return apply_lighting(img, rng, gain, cast), out_boxes, pids


def _paste(img, rgb, mask, x0, y0):
    h, w = img.shape[:2]
    ys, xs = slice(max(y0, 0), min(y0 + mask.shape[0], h)), slice(max(x0, 0), min(x0 + mask.shape[1], w))
    sub = (slice(ys.start - y0, ys.stop - y0), slice(xs.start - x0, xs.stop - x0))
    region = img[ys, xs]
    region[mask[sub]] = rgb[sub][mask[sub]]


def _tight_boxes(placed, w, h):
    """XYWH boxes of the visible extent (inside the image) of each placed sprite, and their pids."""
    boxes, pids = [], []
    for _, x0, y0, _, mask, pid in placed:
        ys, xs = np.nonzero(mask)
        x1, y1 = max(x0 + xs.min(), 0), max(y0 + ys.min(), 0)
        x2, y2 = min(x0 + xs.max() + 1, w), min(y0 + ys.max() + 1, h)
        boxes.append([x1, y1, x2 - x1, y2 - y1])
        pids.append(pid)
    return np.asarray(boxes, np.float64).reshape(-1, 4), pids


def assign_identities(num_images, identities, rng, cameras=None):
    """Which labelled identities appear in which image of one split.

    Every identity gets at least 2 distinct images (and, when `cameras` is given, images of at least two
    cameras if the split has them); images are load-balanced so each holds at least one identity when
    there are enough appearances, and none more than MAX_LABELLED_PER_IMAGE.

    Args:
        num_images (int): images in the split.
        identities (list[int]): the split's identities.
        cameras (ndarray[num_images] int or None): camera of each image.
    Returns:
        list[list[int]]: the identities of each image.
    """
    n = len(identities)
    if num_images < 2 or 2 * n > num_images * MAX_LABELLED_PER_IMAGE:
        raise ValueError(
            f"{n} identities need at least 2 images each, at most {MAX_LABELLED_PER_IMAGE} identities per "
            f"image: {num_images} images cannot hold them (use more images or fewer identities)"
        )
    total = max(2 * n, int(round(num_images * MEAN_LABELLED_PER_IMAGE)))
    total = min(total, num_images * MAX_LABELLED_PER_IMAGE, n * num_images)
    counts = np.full(n, 2) + np.bincount(rng.integers(0, n, size=total - 2 * n), minlength=n)
    counts = np.minimum(counts, num_images)
    load = np.zeros(num_images)
    members = [[] for _ in range(num_images)]
    for i in rng.permutation(n):
        chosen, cams = [], set()
        for _ in range(int(counts[i])):
            score = load + rng.uniform(0, 1.5, size=num_images)
            score[load >= MAX_LABELLED_PER_IMAGE] += 1e6
            score[chosen] += 1e9
            if cameras is not None and len(cams) == 1:
                score[cameras == next(iter(cams))] += 100.0  # prefer a second camera
            j = int(np.argmin(score))
            chosen.append(j)
            load[j] += 1
            if cameras is not None:
                cams.add(int(cameras[j]))
        for j in chosen:
            members[j].append(identities[i])
    return members


def _split_sizes(fmt, identities, images):
    """(test identities, test images) for the requested totals; ValueError if they cannot fit."""
    if identities < 2:
        raise ValueError(f"--identities {identities}: need at least 2 (training and test are disjoint)")
    n_test_ids = min(max(1, int(round(identities * TEST_IDENTITY_FRACTION))), identities - 1)
    n_test_images = int(round(images * TEST_IMAGE_FRACTION))
    if fmt == "cuhk_sysu":
        n_test_images = max(n_test_images, CUHK_GALLERY_SIZES[0] + 1)
    if images - n_test_images < 2 or n_test_images < 2:
        need = CUHK_GALLERY_SIZES[0] + 3 if fmt == "cuhk_sysu" else 4
        raise ValueError(f"--images {images} is too small for {fmt}: need at least {need}")
    return n_test_ids, n_test_images


def build_scenes(fmt, seed=0, identities=DEFAULT_IDENTITIES, images=DEFAULT_IMAGES, size=DEFAULT_SIZE):
    """Generate a whole dataset in memory.

    Returns:
        dict with "scenes" (list of dict(name, image uint8[H, W, 3] RGB, boxes float[n, 4] XYWH pixels,
        pids list[int], and for PRW camera)), "train_names", "test_names" (sets), "queries"
        (list of (pid, image name)), "train_identities", "test_identities" (lists of pids as written).
    """
    if fmt not in FORMATS:
        raise ValueError(f"format {fmt!r}: expected one of {FORMATS}")
    h, w = size
    if h < 96 or w < 96:
        raise ValueError(f"size {h}x{w}: expected at least 96x96 pixels")
    n_test_ids, n_test_images = _split_sizes(fmt, identities, images)
    rng = np.random.default_rng(seed)
    appearances = make_identities(identities, rng)
    order = rng.permutation(identities)
    split_ids = {"test": sorted(order[:n_test_ids].tolist()), "train": sorted(order[n_test_ids:].tolist())}
    is_test = np.zeros(images, bool)
    is_test[rng.permutation(images)[:n_test_images]] = True
    cameras = rng.integers(1, PRW_CAMERAS + 1, size=images) if fmt == "prw" else None
    names = _image_names(fmt, images, cameras, rng)
    members = np.empty(images, object)
    for split, ids in split_ids.items():
        idx = np.flatnonzero(is_test == (split == "test"))
        for j, m in zip(idx, assign_identities(len(idx), ids, rng, None if cameras is None else cameras[idx])):
            members[j] = m
    to_pid = (lambda i: PRW_ID_STRIDE * i + 1) if fmt == "prw" else (lambda i: i)
    styles = _camera_styles(seed) if fmt == "prw" else None
    scenes = []
    for j in range(images):
        img_rng = np.random.default_rng([seed, 1, j])
        people = [Person(to_pid(i), appearances[i]) for i in members[j]]
        people += [Person(UNLABELLED_ID[fmt], random_appearance(img_rng))
                   for _ in range(int(img_rng.integers(0, MAX_UNLABELLED_PER_IMAGE + 1)))]
        if styles is None:  # CUHK-SYSU: every image its own scene and light
            style_rng = np.random.default_rng([seed, 2, j])
            lighting = (float(style_rng.uniform(0.8, 1.15)), tuple(style_rng.uniform(0.88, 1.12, size=3).tolist()))
        else:
            cam_seed, lighting = styles[int(cameras[j])]
            style_rng = np.random.default_rng(cam_seed)
        image, boxes, pids = render_scene(people, size, img_rng, style_rng, lighting)
        scene = {"name": names[j], "image": image, "boxes": boxes, "pids": pids}
        if cameras is not None:
            scene["camera"] = int(cameras[j])
        scenes.append(scene)
    test_names = {names[j] for j in np.flatnonzero(is_test)}
    return {
        "scenes": scenes,
        "train_names": set(names) - test_names,
        "test_names": test_names,
        "queries": _queries(fmt, scenes, test_names, [to_pid(i) for i in split_ids["test"]], rng),
        "train_identities": [to_pid(i) for i in split_ids["train"]],
        "test_identities": [to_pid(i) for i in split_ids["test"]],
    }


def _image_names(fmt, images, cameras, rng):
    if fmt == "cuhk_sysu":
        return [f"s{j + 1}.jpg" for j in range(images)]
    frame = {c: int(rng.integers(0, 500)) for c in range(1, PRW_CAMERAS + 1)}
    names = []
    for c in cameras:
        frame[int(c)] += int(rng.integers(20, 80))  # frames are sampled sparsely from each video
        names.append(f"c{int(c)}s1_{frame[int(c)]:06d}.jpg")
    return names


def _camera_styles(seed):
    """Per PRW camera: the seed of its fixed scene layout and its lighting (gain, RGB cast)."""
    styles = {}
    for c in range(1, PRW_CAMERAS + 1):
        r = np.random.default_rng([seed, 3, c])
        styles[c] = ([seed, 4, c], (float(r.uniform(0.8, 1.15)), tuple(r.uniform(0.88, 1.12, size=3).tolist())))
    return styles


def _queries(fmt, scenes, test_names, test_pids, rng):
    """CUHK-SYSU: one query per test identity; PRW: one per camera the identity appears in, at most 3."""
    where = {pid: [] for pid in test_pids}
    for scene in scenes:
        if scene["name"] in test_names:
            for pid in scene["pids"]:
                if pid in where:
                    where[pid].append(scene)
    queries = []
    for pid in test_pids:
        found = where[pid]
        if fmt == "cuhk_sysu":
            queries.append((pid, found[int(rng.integers(len(found)))]["name"]))
            continue
        by_camera = {}
        for scene in found:
            by_camera.setdefault(scene["camera"], []).append(scene["name"])
        cams = sorted(by_camera)
        for c in sorted(rng.permutation(cams)[:3].tolist()):
            queries.append((pid, by_camera[c][int(rng.integers(len(by_camera[c])))]))
    return queries


def _clear_layout(out, fmt, overwrite):
    """Refuse (FileExistsError) or, with `overwrite`, remove a previous dataset of layout `fmt` in `out`."""
    present = [e for e in LAYOUT_ENTRIES[fmt] if os.path.lexists(os.path.join(out, e))]
    if present and not overwrite:
        raise FileExistsError(f"{out}: already holds a {fmt} dataset ({', '.join(present)}); "
                              "use another folder or overwrite it (--overwrite)")
    for entry in present:
        path = os.path.join(out, entry)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        else:
            os.remove(path)


def generate(out, fmt, seed=0, identities=DEFAULT_IDENTITIES, images=DEFAULT_IMAGES, size=DEFAULT_SIZE,
             overwrite=False):
    """Generate a synthetic dataset and write it under `out` in the layout of `fmt`.

    A previous dataset of the same layout in `out` is an error (FileExistsError) unless `overwrite`:
    then its files are replaced (a stale TestG100.mat, say, would otherwise survive a smaller dataset).
    An `out` that cannot be a writable folder (a file, a read-only folder) is a ValueError before anything
    is generated.

    Returns:
        dict: summary with "format", "root", "images", "train_images", "test_images", "boxes",
        "labelled_boxes", "identities", "train_identities", "test_identities", "queries" and, for
        CUHK-SYSU, "gallery_sizes".
    """
    from . import writers  # noqa: PLC0415 (the writers pull in scipy.io; keep the scene code light)

    out = os.fspath(out)
    problem = folder_write_problem(out)
    if problem:
        raise ValueError(f"{out}: {problem} (expected a folder to write the dataset in)")
    data = build_scenes(fmt, seed, identities, images, size)
    _clear_layout(out, fmt, overwrite)
    scenes = data["scenes"]
    summary = {
        "format": fmt,
        "root": out,
        "images": len(scenes),
        "train_images": len(data["train_names"]),
        "test_images": len(data["test_names"]),
        "boxes": int(sum(len(s["pids"]) for s in scenes)),
        "labelled_boxes": int(sum(p >= 0 for s in scenes for p in s["pids"])),
        "identities": len(data["train_identities"]) + len(data["test_identities"]),
        "train_identities": len(data["train_identities"]),
        "test_identities": len(data["test_identities"]),
        "queries": len(data["queries"]),
    }
    if fmt == "cuhk_sysu":
        sizes = tuple(g for g in CUHK_GALLERY_SIZES if g + 1 <= len(data["test_names"]))
        writers.write_cuhk_sysu(out, scenes, test_names=data["test_names"], queries=data["queries"],
                                gallery_sizes=sizes, seed=seed)
        summary["gallery_sizes"] = list(sizes)
    else:
        writers.write_prw(out, scenes, train_names=data["train_names"], queries=data["queries"])
    logger.info("Synthetic %s dataset written to %s: %s", fmt, out, summary)
    return summary


def _parse_size(text):
    try:
        h, w = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected HxW, e.g. 240x320") from None
    if h < 96 or w < 96:
        raise argparse.ArgumentTypeError(f"size {text!r}: expected at least 96x96 pixels")
    return h, w


def _positive(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a positive integer")
    return value


def _non_negative(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a non-negative integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r}: expected a non-negative integer")
    return value


def main(argv: Optional[list] = None):
    """Command line; bad arguments exit with code 2: argparse's usage and error for malformed values, one
    ``error: ...`` line naming the folder or value otherwise (never a traceback)."""
    parser = argparse.ArgumentParser(
        prog="python -m dcinet_d2.data.synthetic",
        description="Write a synthetic person-search dataset in the CUHK-SYSU or PRW layout.",
    )
    parser.add_argument("--out", required=True, help="dataset root to create")
    parser.add_argument("--format", required=True, choices=FORMATS, dest="fmt")
    parser.add_argument("--seed", type=_non_negative, default=0)
    parser.add_argument("--identities", type=_positive, default=DEFAULT_IDENTITIES,
                        help="labelled identities, training and test together")
    parser.add_argument("--images", type=_positive, default=DEFAULT_IMAGES)
    parser.add_argument("--size", type=_parse_size, default=DEFAULT_SIZE, help="image size HxW (240x320)")
    parser.add_argument("--overwrite", action="store_true", help="replace a dataset already in --out")
    args = parser.parse_args(argv)
    try:
        s = generate(args.out, args.fmt, args.seed, args.identities, args.images, args.size, args.overwrite)
    except (ValueError, OSError) as e:  # OSError: a write that failed (a full disk, say)
        raise SystemExit(report_error(e)) from None
    print(
        f"{s['format']}: {s['images']} images ({s['train_images']} train, {s['test_images']} test), "
        f"{s['boxes']} boxes ({s['labelled_boxes']} labelled), {s['identities']} identities "
        f"({s['train_identities']} train, {s['test_identities']} test), {s['queries']} queries -> {s['root']}"
    )
    return s


if __name__ == "__main__":
    main()
