"""Small PNG plots drawn with Pillow: a reply timeline against gold spans (train_rl.py draws its curves the same way).

Pillow is already a dependency (frames), so the pictures cost no plotting library; they are plain on purpose.
"""
from PIL import Image, ImageDraw

from .checkpoint import atomic_path

COLOURS = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (255, 127, 14), (148, 103, 189)]


def save_png(img, path):
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
    save_png(img, path)
