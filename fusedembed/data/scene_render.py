"""Pixels of a synthetic scene, in pure numpy so the bytes are the same on every machine.

Only integer draws from the ``Generator`` and IEEE-exact element-wise float operations
(+, −, ×, ÷, comparisons, ``rint``) are used — no trigonometry, no library resampling, no
fonts — so no SIMD/libm difference can change a byte. Shapes are antialiased by 4×4
supersampling: coverage = inside-subsamples / 16.
"""

import numpy as np

from .scene_layout import COLOURS, SHAPES, Obj

SS = 4                                  # supersampling factor per axis
RGB = {"red": (215, 40, 40), "orange": (240, 135, 20), "yellow": (235, 215, 40),
       "green": (40, 170, 60), "blue": (40, 80, 215), "purple": (145, 55, 195)}
_RGB = np.array([RGB[c] for c in COLOURS], dtype=np.float64)

# Unit polygons (y down), convex, listed clockwise on screen. Star = union of 5 convex kites
# (centre, inner vertex, tip, inner vertex); vertex coordinates precomputed (no sin/cos here).
_SQUARE = ((-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85))
_DIAMOND = ((0.0, -1.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0))
_TRIANGLE = ((0.0, -1.0), (0.95, 0.75), (-0.95, 0.75))
_STAR_TIPS = ((0.0, -1.0), (0.951057, -0.309017), (0.587785, 0.809017),
              (-0.587785, 0.809017), (-0.951057, -0.309017))
_STAR_INNER = ((0.264503, -0.364058), (0.427975, 0.139058), (0.0, 0.45),
               (-0.427975, 0.139058), (-0.264503, -0.364058))   # radius 0.45, between tips
_STAR_KITES = tuple(((0.0, 0.0), _STAR_INNER[k - 1], _STAR_TIPS[k], _STAR_INNER[k])
                    for k in range(5))


def _inside_convex(u, v, poly):
    """Points (u, v) inside (or on) a clockwise-on-screen convex polygon."""
    inside = np.ones(u.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(poly, poly[1:] + poly[:1]):
        # Cross product of the edge and the point: ≥ 0 on the inner side for this winding.
        inside &= (u - x0) * (y1 - y0) - (v - y0) * (x1 - x0) <= 0
    return inside


def _inside(shape, u, v):
    if shape in ("circle", "ring"):
        d2 = u * u + v * v
        return (d2 <= 1.0) & (d2 >= 0.3025) if shape == "ring" else d2 <= 1.0
    if shape == "star":
        inside = np.zeros(u.shape, dtype=bool)
        for kite in _STAR_KITES:
            inside |= _inside_convex(u, v, kite)
        return inside
    return _inside_convex(u, v, {"square": _SQUARE, "diamond": _DIAMOND,
                                 "triangle": _TRIANGLE}[shape])


def _coverage(obj: Obj, size: int):
    """(y0, x0, alpha) — the object's antialiased coverage over its pixel window."""
    cx, cy, r = obj.cx * size, obj.cy * size, obj.r * size
    x0, y0 = max(int(cx - r) - 1, 0), max(int(cy - r) - 1, 0)
    x1, y1 = min(int(cx + r) + 2, size), min(int(cy + r) + 2, size)
    sub = (np.arange(SS, dtype=np.float64) + 0.5) / SS
    xs = (np.arange(x0, x1, dtype=np.float64)[:, None] + sub).reshape(-1)
    ys = (np.arange(y0, y1, dtype=np.float64)[:, None] + sub).reshape(-1)
    u = (xs[None, :] - cx) / r
    v = (ys[:, None] - cy) / r
    u, v = np.broadcast_arrays(u, v)
    inside = _inside(SHAPES[obj.shape], u, v)
    count = inside.reshape(y1 - y0, SS, x1 - x0, SS).sum(axis=(1, 3))
    return y0, x0, count.astype(np.float64) / (SS * SS)


def _upsample(coarse, size):
    """Bilinear upsampling of a (g, g) grid to (size, size), corners aligned, by hand."""
    g = coarse.shape[0]
    t = np.arange(size, dtype=np.float64) * (g - 1) / (size - 1)
    i0 = np.minimum(t.astype(np.int64), g - 2)
    w = t - i0
    rows = coarse[i0] * (1 - w)[:, None] + coarse[i0 + 1] * w[:, None]
    return rows[:, i0] * (1 - w)[None, :] + rows[:, i0 + 1] * w[None, :]


def _background(rng, size):
    """Greyish tinted base + smooth blotches + faint stripes (orientation and period random)."""
    base = rng.integers(75, 166) + rng.integers(-15, 16, size=3)
    blotch = _upsample(rng.integers(-22, 23, size=(5, 5)).astype(np.float64), size)
    kind, period, amp = int(rng.integers(4)), int(rng.integers(3, 7)), int(rng.integers(3, 9))
    y, x = np.mgrid[0:size, 0:size]
    coord = (np.zeros_like(x), y, x, x + y)[kind]
    stripes = ((coord // period) % 2) * amp
    lum = blotch + stripes
    return base[None, None, :].astype(np.float64) + lum[:, :, None]


def render(objects: list[Obj], size: int, rng: np.random.Generator) -> np.ndarray:
    """(size, size, 3) uint8 image of the objects over a textured, noisy background."""
    img = _background(rng, size)
    for obj in objects:
        colour = _RGB[obj.colour] + rng.integers(-12, 13, size=3)
        y0, x0, alpha = _coverage(obj, size)
        a = alpha[:, :, None]
        win = img[y0:y0 + alpha.shape[0], x0:x0 + alpha.shape[1]]
        win[...] = win * (1 - a) + colour * a
    noise = rng.integers(-6, 7, size=img.shape) + rng.integers(-6, 7, size=img.shape)
    return np.clip(np.rint(img + noise), 0, 255).astype(np.uint8)
