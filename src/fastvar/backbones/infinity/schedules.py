"""Infinity's dynamic-resolution scale schedules (``infinity/utils/dynamic_resolution.py``).

Every aspect ratio h/w has one 13-scale list of token grids (h, w); its prefixes of 7, 10, 12 and 13 scales are the
0.06M, 0.25M, 0.60M and 1M schedules (256, 512, 768 and 1024 pixels on a side for 1:1). The official ``t`` of each
scale is replaced by 1 (``run_infinity.py``), so a schedule here is a list of (h, w). The 2-D RoPE of every schedule
of a ratio is laid out on the grid of that ratio's LAST 1M scale, so each schedule also names its RoPE grid.

Zero-shot higher resolutions (FastVAR's extension; not in the official table): each template's list continues with
its last 1M grid times 1.3125, 1.625 and 2 (rounded), giving the 1.8M, 2.8M and 4M schedules (1344, 1664 and 2048
pixels on a side for 1:1; 14, 15 and 16 scales). The model never saw these scales: their RoPE positions come from
the official formula on the unchanged 1M grid (interpolated, so the image still spans the trained position range).
"""
from __future__ import annotations

from collections.abc import Sequence

from ...errors import FastVARError

# ratio2hws: h/w -> the 13 token grids (h, w) of that ratio; the ratios below 1 are the transposes (added below)
_RATIO2HWS: dict[float, list[tuple[int, int]]] = {
    1.000: [(1, 1), (2, 2), (4, 4), (6, 6), (8, 8), (12, 12), (16, 16),
            (20, 20), (24, 24), (32, 32), (40, 40), (48, 48), (64, 64)],
    1.250: [(1, 1), (2, 2), (3, 3), (5, 4), (10, 8), (15, 12), (20, 16),
            (25, 20), (30, 24), (35, 28), (45, 36), (55, 44), (70, 56)],
    1.333: [(1, 1), (2, 2), (4, 3), (8, 6), (12, 9), (16, 12), (20, 15),
            (24, 18), (28, 21), (36, 27), (48, 36), (60, 45), (72, 54)],
    1.500: [(1, 1), (2, 2), (3, 2), (6, 4), (9, 6), (15, 10), (21, 14),
            (27, 18), (33, 22), (39, 26), (48, 32), (63, 42), (78, 52)],
    1.750: [(1, 1), (2, 2), (3, 3), (7, 4), (11, 6), (14, 8), (21, 12),
            (28, 16), (35, 20), (42, 24), (56, 32), (70, 40), (84, 48)],
    2.000: [(1, 1), (2, 2), (4, 2), (6, 3), (10, 5), (16, 8), (22, 11),
            (30, 15), (38, 19), (46, 23), (60, 30), (74, 37), (90, 45)],
    2.500: [(1, 1), (2, 2), (5, 2), (10, 4), (15, 6), (20, 8), (25, 10),
            (30, 12), (40, 16), (50, 20), (65, 26), (80, 32), (100, 40)],
    3.000: [(1, 1), (2, 2), (6, 2), (9, 3), (15, 5), (21, 7), (27, 9),
            (36, 12), (45, 15), (54, 18), (72, 24), (90, 30), (111, 37)],
}

EXTENSION_FACTORS = (1.3125, 1.625, 2.0)  # zero-shot scales after the 1M list, relative to its last grid
for _hws in _RATIO2HWS.values():
    _h, _w = _hws[-1]
    _hws.extend((round(_h * f), round(_w * f)) for f in EXTENSION_FACTORS)

# Templates in the official dict order (1.0, 1.25, 0.8, 1.333, 0.75, ...): ``np.argmin`` resolves ties by this order.
TEMPLATES: dict[float, list[tuple[int, int]]] = {}
for _ratio, _hws in _RATIO2HWS.items():
    TEMPLATES[_ratio] = _hws
    if _ratio != 1.0:
        TEMPLATES[int(1 / _ratio * 1000) / 1000] = [(w, h) for h, w in _hws]

# pixel-count names -> number of scales; resolutions name them by the side of the 1:1 image
PN_LENGTHS = {"0.06M": 7, "0.25M": 10, "0.60M": 12, "1M": 13, "1.8M": 14, "2.8M": 15, "4M": 16}
RESOLUTIONS = {256: "0.06M", 512: "0.25M", 768: "0.60M", 1024: "1M", 1344: "1.8M", 1664: "2.8M", 2048: "4M"}
ZERO_SHOT = ("1.8M", "2.8M", "4M")  # schedules beyond what the released models were trained on


def nearest_template(h_div_w: float) -> float:
    """The template ratio nearest to ``h_div_w`` (first in table order on a tie, like the official argmin)."""
    if not (isinstance(h_div_w, (int, float)) and h_div_w > 0):
        raise FastVARError(f"h_div_w must be a positive number (height / width), got {h_div_w!r}")
    return min(TEMPLATES, key=lambda t: abs(float(h_div_w) - t))


def pn_name(resolution: int | str) -> str:
    """1024 / "1M" -> "1M" (also 256, 512, 768, 1344, 1664, 2048 and their pixel-count names)."""
    if isinstance(resolution, str) and resolution in PN_LENGTHS:
        return resolution
    if isinstance(resolution, int) and resolution in RESOLUTIONS:
        return RESOLUTIONS[resolution]
    raise FastVARError(
        f"resolution {resolution!r} has no Infinity schedule; use one of {sorted(RESOLUTIONS)} "
        f"(or {', '.join(PN_LENGTHS)}), or pass scale_schedule="
    )


def scale_schedule(h_div_w: float, resolution: int | str) -> list[tuple[int, int]]:
    """The official schedule ``dynamic_resolution_h_w[nearest template][pn]['scales']`` as (h, w) token grids."""
    return list(TEMPLATES[nearest_template(h_div_w)][: PN_LENGTHS[pn_name(resolution)]])


def check_schedule(scales: Sequence[Sequence[int]]) -> tuple[list[tuple[int, int]], float]:
    """Validate an explicit schedule of (h, w) or (1, h, w): it must be a prefix of a template's list.

    Returns the (h, w) list and the template it belongs to (which fixes the RoPE grid). Short prefixes shared by
    several templates resolve to the template nearest to the last scale's h/w.
    """
    hws = []
    for s in scales:
        if len(s) not in (2, 3) or (len(s) == 3 and s[0] != 1):
            raise FastVARError(f"scale {tuple(s)} is neither (h, w) nor (1, h, w)")
        hws.append((int(s[-2]), int(s[-1])))
    if not hws:
        raise FastVARError("empty scale schedule")
    matches = [t for t, full in TEMPLATES.items() if full[: len(hws)] == hws]
    if not matches:
        raise FastVARError(
            f"scale schedule {hws} is not a prefix of any Infinity template schedule "
            "(see fastvar.backbones.infinity.schedules.TEMPLATES)"
        )
    h, w = hws[-1]
    return hws, min(matches, key=lambda t: abs(h / w - t))


def rope_grid(template: float) -> tuple[int, int]:
    """The (h, w) grid every RoPE position of this template's schedules is normalised to (its last 1M scale)."""
    return TEMPLATES[template][PN_LENGTHS["1M"] - 1]
