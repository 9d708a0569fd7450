"""Qwen2.5-VL image preprocessing: pictures -> `pixel_values` rows + `grid_thw` (docs/method.md section 2).

Follows transformers' Qwen2VLImageProcessor (PIL flavour, the one the released checkpoints were trained with):
`smart_resize` to multiples of 28 px with the pixel count in [min_pixels, max_pixels], bicubic resize in PIL,
rescale by 1/255, CLIP mean/std normalisation, then patch flattening in Qwen's order. One row of
`pixel_values` is one 2 x 14 x 14 patch (time x height x width) of all 3 channels; rows are ordered by
2 x 2 merge group so the vision merger can fold 4 consecutive rows into one decoder token.

Departures: frames of a video are resized one by one with PIL (transformers' video processor resizes with
torchvision, which differs by a few intensity levels); frame sampling belongs to mmduet2.video, not here.
"""
import math

import numpy as np
import torch
from PIL import Image

PATCH, MERGE, TEMPORAL = 14, 2, 2              # Qwen2.5-VL vision: 14 px patches, 2x2 merge, 2-frame patches
FACTOR = PATCH * MERGE                         # sides are multiples of 28 px
MIN_PIXELS, MAX_PIXELS = 56 * 56, 28 * 28 * 1280  # Qwen's defaults; MMDuet2 frames use max_pixels = 128 * 28 * 28
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def smart_resize(height, width, factor=FACTOR, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS):
    """Qwen's target size: both sides divisible by `factor`, pixels within [min_pixels, max_pixels],
    aspect ratio kept as well as possible. Same rounding as the reference (round, then floor when shrinking
    and ceil when growing), so grids match it exactly."""
    if max(height, width) / min(height, width) > 200:
        ratio = max(height, width) / min(height, width)
        raise ValueError(f"absolute aspect ratio must be smaller than 200, got {ratio} for a {height}x{width} image: "
                         "crop or pad it before processing.")
    h_bar, w_bar = round(height / factor) * factor, round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def _to_pil(image, index):
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    a = np.asarray(image)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"image {index} is an array of dtype {a.dtype} and shape {a.shape}: pass a PIL image or a "
                         "uint8 HxWx3 RGB array.")
    return Image.fromarray(a)


def _normalised(image, size):
    """Resize one picture to `size` = (h, w) and normalise it -> float32 (3, h, w)."""
    h, w = size
    if image.size != (w, h):  # PIL returns an identical copy for a same-size resize anyway
        image = image.resize((w, h), Image.BICUBIC)
    # Same arithmetic as the reference: rescale in float64, cast, then normalise in float32.
    x = torch.from_numpy((np.asarray(image, dtype=np.float64) * (1 / 255)).astype(np.float32))  # (h, w, 3)
    x = (x - torch.tensor(CLIP_MEAN, dtype=torch.float32)) / torch.tensor(CLIP_STD, dtype=torch.float32)
    return x.permute(2, 0, 1)  # (3, h, w)


def _patchify(frames):
    """(T, 3, H, W) with T even -> rows (T/2 * H/14 * W/14, 3*2*14*14) in Qwen's order, and (t, h, w)."""
    T, C, H, W = frames.shape
    t, h, w = T // TEMPORAL, H // PATCH, W // PATCH
    x = frames.reshape(t, TEMPORAL, C, h // MERGE, MERGE, PATCH, w // MERGE, MERGE, PATCH)
    # rows run over (t, merged row, merged col, row in group, col in group); a row's values are (C, T, ph, pw)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)  # (t, h/2, w/2, 2, 2, C, 2, 14, 14)
    return x.reshape(t * h * w, C * TEMPORAL * PATCH * PATCH), (t, h, w)


def process_images(images, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS):
    """A list of PIL images or uint8 HxWx3 arrays -> (pixel_values float32 (N, 1176), grid_thw long (n, 3)).
    Each image is its own grid (t = 1): the still picture is repeated to fill the 2-frame temporal patch."""
    if isinstance(images, Image.Image) or (isinstance(images, np.ndarray) and images.ndim == 3):
        images = [images]  # one picture
    if len(images) == 0:
        raise ValueError("process_images got no images: pass a list with at least one picture.")
    rows, grids = [], []
    for i, image in enumerate(images):
        image = _to_pil(image, i)
        x = _normalised(image, smart_resize(image.height, image.width, FACTOR, min_pixels, max_pixels))
        r, g = _patchify(x[None].expand(TEMPORAL, -1, -1, -1))
        rows.append(r)
        grids.append(g)
    return torch.cat(rows), torch.tensor(grids, dtype=torch.long)
