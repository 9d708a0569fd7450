"""Small PNG plots drawn with Pillow: a reply timeline against gold spans, and training curves.

Pillow is already a dependency (frames), so the pictures cost no plotting library. They are plain on purpose:
enough to see when a model spoke and whether RL moved its replies earlier.
"""
from PIL import Image, ImageDraw

from .checkpoint import atomic_path

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


def _save(img, path):
    with atomic_path(path) as tmp:  # never leave a half-written picture behind
        img.save(tmp, format="PNG")


def draw_timeline(path, duration, replies, spans, title="", rows=None):
    """Gold reply spans as grey bars and each reply as a tick at its time.

    `replies`: [{"time", "content"}] for one model, or pass `rows={"sft": replies, "rl": replies}` to stack
    several models over the same spans."""
    rows = rows or {"model": replies}
    width, left, top, lane = 900, 70, 30, 34
    height = top + lane * (len(rows) + 1) + 30
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    scale = (width - left - 20) / max(duration, 1e-6)
    x = lambda t: left + t * scale
    d.text((left, 8), title[:120], fill="black")
    d.text((5, top + 10), "gold", fill="black")
    for a, b in spans:
        d.rectangle([x(a), top + 4, max(x(b), x(a) + 2), top + lane - 4], fill=(200, 200, 200), outline="grey")
    for k, (name, reps) in enumerate(rows.items()):
        y = top + lane * (k + 1)
        d.text((5, y + 10), name[:9], fill="black")
        for a, b in spans:  # faint span guides in every lane
            d.rectangle([x(a), y + 4, max(x(b), x(a) + 2), y + lane - 4], fill=(240, 240, 240))
        for r in reps:
            d.line([x(r["time"]), y + 4, x(r["time"]), y + lane - 4], fill=COLOURS[k % len(COLOURS)], width=3)
    axis = top + lane * (len(rows) + 1) + 4
    d.line([left, axis, width - 20, axis], fill="black")
    step = max(1, int(duration // 10))
    for t in range(0, int(duration) + 1, step):
        d.line([x(t), axis, x(t), axis + 4], fill="black")
        d.text((x(t) - 4, axis + 6), f"{t}s", fill="black")
    _save(img, path)


def draw_curves(path, series, title="", xlabel="step"):
    """Line plot of {name: [(x, y), ...]}, one panel per series with its own y range (labelled at the left)
    and a shared x axis from 0 (labelled under each panel)."""
    width, height, left, top, bottom = 900, 120 + 160 * len(series), 80, 30, 30
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    d.text((left, 8), title[:120], fill="black")
    panel = (height - top - bottom) / max(len(series), 1)
    for k, (name, pts) in enumerate(series.items()):
        y0, y1 = top + k * panel + 10, top + (k + 1) * panel - 10
        d.rectangle([left, y0, width - 20, y1], outline="grey")
        d.text((5, y0), name[:11], fill="black")
        d.text((5, y0 + 12), name[11:22], fill="black")
        if not pts:
            continue
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]
        lo, hi = min(ys), max(ys)
        hi = hi if hi > lo else lo + 1.0
        xmax = max(max(xs), 1)
        px = lambda v: left + (width - 20 - left) * v / xmax
        py = lambda v: y1 - (y1 - y0) * (v - lo) / (hi - lo)
        d.text((5, y0 + 28), f"{hi:.3g}", fill="black")
        d.text((5, y1 - 12), f"{lo:.3g}", fill="black")
        d.line([(px(a), py(b)) for a, b in pts], fill=COLOURS[k % len(COLOURS)], width=2)
        for a, b in pts[-1:]:
            d.text((px(a) - 40, py(b) - 14), f"{b:.3g}", fill="black")
        d.text((left - 3, y1 + 2), "0", fill="black")
        d.text((width - 20 - 6 * len(f"{xmax:g}"), y1 + 2), f"{xmax:g}", fill="black")
    d.text((width // 2, height - 20), xlabel, fill="black")
    _save(img, path)
