"""The dSprites geometry: one renderer for the whole 737,280-image grid and for any subset of it.

No generator for dSprites was ever published (the heart exists only as
bitmaps), so the geometry below was fitted to the 320 real frames shipped in
`tasks/data/dsprites.gif` (`tests/test_dsprites.py` checks the fit):

- a 64×64 image; pixel (row r, column c) is on iff its centre lies inside the
  sprite (no anti-aliasing, as in the real frames);
- the sprite's centre is at row 15.5 + 32·posY, column 15.5 + 32·posX in
  pixel-index units, i.e. positions 0..1 span the middle half of the image;
- `orientation` (radians) turns the sprite counter-clockwise on screen about
  its centre;
- sizes at scale s, in pixels: square of side 19.2·s (0.3 of the image);
  ellipse with semi-axes 12.75·s (horizontal at orientation 0) and 7.25·s;
  heart pointing down, made of two lobes (circles of radius HEART_R·s centred
  at (±HEART_CX·s, HEART_CY·s) from the sprite centre, y down) joined by their
  outer tangents to the tip (0, HEART_TIP·s).

Pixel centres lie on a 1/31-pixel lattice: position class k puts the centre at
15.5 + 32k/31, so column c sees the offset (31c − 32k)/31 − 15.5. A sprite
(shape, scale, orientation) is therefore evaluated once on that lattice and its
1,024 positions are strided views of the same mask. The grid costs 720 lattice
renders instead of 737,280 image renders, and `render_indices` evaluates the
same integers with the same float32 operations, so both paths give identical
pixels.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

GENERATOR_VERSION = "dsprites-generated-v1"
FACTOR_NAMES = ("shape", "scale", "orientation", "posX", "posY")
FACTOR_SIZES = (3, 6, 40, 32, 32)
N_IMAGES = math.prod(FACTOR_SIZES)  # 737,280
IMAGE = 64
SPRITES_PER_SHAPE = FACTOR_SIZES[1] * FACTOR_SIZES[2]
POSITIONS = FACTOR_SIZES[3] * FACTOR_SIZES[4]

# official factor values (the npz's latents_values without its constant colour column)
SHAPE_VALUES = np.array([1.0, 2.0, 3.0])  # square, ellipse, heart
SCALE_VALUES = np.linspace(0.5, 1.0, 6)
ORIENTATION_VALUES = np.linspace(0.0, 2 * math.pi, 40)
POSITION_VALUES = np.linspace(0.0, 1.0, 32)

# geometry at scale 1, in pixels (fitted to the reference frames)
SQUARE_HALF = 9.6
ELLIPSE_AXES = (12.75, 7.25)
HEART_CX, HEART_CY, HEART_R, HEART_TIP = 4.77, -4.11, 5.1, 8.8

# the lattice: an offset n (integer) means n/31 − 15.5 pixels from the sprite centre
LATTICE = 31
STEP = 32  # lattice units between neighbouring position classes
CENTRE = 15.5
N_MIN = -STEP * 31  # column 0 at position class 31
N_SPAN = LATTICE * (IMAGE - 1) + STEP * 31 + 1  # every offset an image can see
REACH = 14.0  # no sprite reaches further than this many pixels (at scale 1) from its centre


def _heart_tangent() -> tuple[float, float]:
    """Where the outer tangent from the tip touches the right lobe (scale 1)."""
    dx, dy = HEART_CX, HEART_CY - HEART_TIP
    d = math.hypot(dx, dy)
    length, turn = math.sqrt(d * d - HEART_R**2), math.asin(HEART_R / d)
    candidates = []
    for sign in (1, -1):
        c, s = math.cos(sign * turn), math.sin(sign * turn)
        candidates.append(
            (length * (dx * c - dy * s) / d, HEART_TIP + length * (dx * s + dy * c) / d)
        )
    return max(candidates)


def _f32(values: np.ndarray | float) -> Tensor:
    return torch.tensor(np.asarray(values), dtype=torch.float32)


def _tables() -> dict[str, Tensor]:
    """float32 tables both render paths index, so they share every rounded constant."""
    s = SCALE_VALUES
    tx, ty = _heart_tangent()
    return {
        "offset": _f32(np.arange(N_MIN, N_MIN + N_SPAN) / LATTICE - CENTRE),
        "cos": _f32(np.cos(ORIENTATION_VALUES)),
        "sin": _f32(np.sin(ORIENTATION_VALUES)),
        # per scale class
        "square_half": _f32(SQUARE_HALF * s),
        "ellipse_inv_a": _f32(1 / (ELLIPSE_AXES[0] * s)),
        "ellipse_inv_b": _f32(1 / (ELLIPSE_AXES[1] * s)),
        "heart_cx": _f32(HEART_CX * s),
        "heart_cy": _f32(HEART_CY * s),
        "heart_r2": _f32((HEART_R * s) ** 2),
        "heart_tip": _f32(HEART_TIP * s),
        # the tangent's slopes do not depend on scale
        "heart_upper_slope": _f32((tx - HEART_CX) / (ty - HEART_CY)),
        "heart_lower_slope": _f32(tx / (HEART_TIP - ty)),
    }


TABLES = _tables()


def _inside(shape: int, u: Tensor, v: Tensor, scale: Tensor) -> Tensor:
    """Is the offset (u, v) (sprite frame, pixels, y down) inside `shape` at scale class `scale`?"""
    if shape == 0:
        half = TABLES["square_half"][scale]
        return (u.abs() <= half) & (v.abs() <= half)
    if shape == 1:
        inv_a, inv_b = TABLES["ellipse_inv_a"][scale], TABLES["ellipse_inv_b"][scale]
        return (u * inv_a).square() + (v * inv_b).square() <= 1
    cx, cy, tip = (TABLES[k][scale] for k in ("heart_cx", "heart_cy", "heart_tip"))
    side, dy = u.abs(), v - cy
    lobe = (side - cx).square() + dy.square() <= TABLES["heart_r2"][scale]
    upper = cx + TABLES["heart_upper_slope"] * dy
    lower = TABLES["heart_lower_slope"] * (tip - v)
    body = (dy >= 0) & (v <= tip) & (side <= torch.minimum(upper, lower))
    return lobe | body


def _rotate(x: Tensor, y: Tensor, orientation: Tensor) -> tuple[Tensor, Tensor]:
    """Image offsets → sprite frame: undo a counter-clockwise (on screen, y down) turn."""
    c, s = TABLES["cos"][orientation], TABLES["sin"][orientation]
    return x * c - y * s, x * s + y * c


def _sprite_lattice(shape: int, scale: int, orientation: int) -> np.ndarray:
    """(N_SPAN, N_SPAN) uint8 mask of one sprite over every lattice offset (rows: y, cols: x)."""
    reach = math.ceil((REACH * SCALE_VALUES[scale] + 1) * LATTICE)
    lo, hi = round(-N_MIN + CENTRE * LATTICE) - reach, round(-N_MIN + CENTRE * LATTICE) + reach
    offsets = TABLES["offset"][lo:hi]
    u, v = _rotate(offsets.view(1, -1), offsets.view(-1, 1), torch.tensor(orientation))
    mask = np.zeros((N_SPAN, N_SPAN), dtype=np.uint8)
    mask[lo:hi, lo:hi] = _inside(shape, u, v, torch.tensor(scale)).numpy()
    return mask


def sprite_positions(shape: int, scale: int, orientation: int) -> np.ndarray:
    """(32 posX, 32 posY, 64, 64) uint8 view: one sprite at all of its 1,024 positions."""
    mask = _sprite_lattice(shape, scale, orientation)
    row = mask.strides[0]
    # position class k' = 31 − k reads lattice row/column 31·pixel + 32·k'
    view = np.lib.stride_tricks.as_strided(
        mask,
        shape=(32, 32, IMAGE, IMAGE),
        strides=(STEP, STEP * row, LATTICE * row, LATTICE),
        writeable=False,
    )
    return view[::-1, ::-1]


def iter_grid() -> Iterator[tuple[int, np.ndarray]]:
    """(first index, (1024, 64, 64) uint8) for each sprite, in the official index order.

    Runs torch on one thread: a lattice is too small to share, and on a busy
    machine two threads waiting on each other made it 20× slower.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for sprite in range(FACTOR_SIZES[0] * SPRITES_PER_SHAPE):
            shape, rest = divmod(sprite, SPRITES_PER_SHAPE)
            scale, orientation = divmod(rest, FACTOR_SIZES[2])
            block = sprite_positions(shape, scale, orientation).reshape(POSITIONS, IMAGE, IMAGE)
            yield sprite * POSITIONS, block
    finally:
        torch.set_num_threads(threads)


def factor_classes(indices: np.ndarray) -> np.ndarray:
    """(N, 5) int64 classes of grid indices (index = shape·245760 + … + posX·32 + posY)."""
    return np.stack(np.unravel_index(indices, FACTOR_SIZES), axis=1).astype(np.int64)


def factor_values(classes: np.ndarray) -> np.ndarray:
    """(N, 5) float32 official factor values of (N, 5) classes."""
    tables = (SHAPE_VALUES, SCALE_VALUES, ORIENTATION_VALUES, POSITION_VALUES, POSITION_VALUES)
    return np.stack([t[classes[:, i]] for i, t in enumerate(tables)], axis=1).astype(np.float32)


def render_indices(indices: np.ndarray) -> np.ndarray:
    """(N, 64, 64) uint8 images of arbitrary grid indices, without building the grid."""
    classes = torch.from_numpy(factor_classes(np.asarray(indices, dtype=np.int64)))
    out = torch.zeros(len(classes), IMAGE, IMAGE, dtype=torch.uint8)
    pixel = torch.arange(IMAGE) * LATTICE - N_MIN
    for shape in range(FACTOR_SIZES[0]):
        rows = (classes[:, 0] == shape).nonzero().flatten()
        if len(rows) == 0:
            continue
        scale, orientation, px, py = (classes[rows, i].view(-1, 1, 1) for i in range(1, 5))
        x = TABLES["offset"][pixel.view(1, 1, -1) - STEP * px]
        y = TABLES["offset"][pixel.view(1, -1, 1) - STEP * py]
        u, v = _rotate(x, y, orientation)
        out[rows] = _inside(shape, u, v, scale).to(torch.uint8)
    return out.numpy()
