"""Image/video preprocessing against Qwen's own processors (transformers) and a hand-built patch layout.

Tolerances (measured on transformers 5.24, Pillow 13): against the PIL image processor, the reference the
checkpoints were trained with, pixel_values are bit-identical (max |diff| 0.0); we allow 1e-6 for float
summation order. transformers' default (torchvision) image/video processors resample differently: when a
resize happens the values differ by at most 2 uint8 intensity levels for moderate scale factors (measured
max 0.0300 = 2 levels of the green channel, 1 level = 1 / (255 * 0.2613) = 0.0150 after normalisation;
mean ~1e-4), and without a resize they agree to 2.4e-7.
"""
import warnings
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mmduet2.processor import (CLIP_MEAN, CLIP_STD, FACTOR, MAX_PIXELS, MIN_PIXELS, TEMPORAL, _normalised, _patchify,
                               _to_pil, process_images, smart_resize)


def process_video(frames, min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS):
    """Qwen's video preprocessing from the package's pieces (the streaming model feeds frames as images): frames of
    one size -> (pixel_values_videos (N, 1176), video_grid_thw (1, 3)); consecutive frame pairs share a temporal
    patch, and an odd count is padded by repeating the last frame."""
    frames = [_to_pil(f, i) for i, f in enumerate(frames)]
    size = smart_resize(frames[0].height, frames[0].width, FACTOR, min_pixels, max_pixels)
    x = torch.stack([_normalised(f, size) for f in frames])  # (T, 3, h, w)
    if len(frames) % TEMPORAL:
        x = torch.cat([x, x[-1:].expand(TEMPORAL - len(frames) % TEMPORAL, -1, -1, -1)])
    rows, grid = _patchify(x)
    return rows, torch.tensor([grid], dtype=torch.long)

LEVEL = 1 / (255 * min(CLIP_STD))  # one uint8 intensity step after normalisation
TOKENS_128 = 128 * 28 * 28          # MMDuet2's per-frame budget


def picture(h, w, seed=0):
    """Gradients plus noise: smooth and sharp content so resampling differences would show."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([(3 * x + y) % 256, (5 * y) % 256, (x * y // 7) % 256], -1) * 0.5 + rng.integers(0, 128, (h, w, 3))
    return a.clip(0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def qwen():
    """(smart_resize, PIL image processor, torchvision image processor) of transformers."""
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen2_vl import image_processing_qwen2_vl as m
    try:  # transformers 5: the default class resizes with torchvision, the PIL one is a separate class
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil as pil
        return SimpleNamespace(smart_resize=m.smart_resize, pil=pil, torchvision=m.Qwen2VLImageProcessor)
    except ImportError:  # transformers 4: the default class is the PIL one, the torchvision one is "Fast"
        return SimpleNamespace(smart_resize=m.smart_resize, pil=m.Qwen2VLImageProcessor,
                               torchvision=transformers.Qwen2VLImageProcessorFast)


def test_smart_resize_by_hand():
    assert smart_resize(112, 112, max_pixels=TOKENS_128) == (112, 112)
    assert smart_resize(480, 640, max_pixels=TOKENS_128) == (252, 364)   # shrunk: floor of 480/beta, 640/beta
    assert smart_resize(20, 20) == (56, 56)                              # grown to min_pixels: ceil
    assert smart_resize(100, 150) == (112, 140)                          # plain rounding to multiples of 28


def test_smart_resize_matches_reference(qwen):
    sizes = [(1, 1), (27, 29), (28, 5600), (50, 50), (112, 112), (224, 225), (360, 640), (480, 640), (721, 1279),
             (1080, 1920), (1000, 90), (37, 500), (3, 599), (4000, 3000)]
    for min_p, max_p in [(56 * 56, 28 * 28 * 1280), (56 * 56, TOKENS_128), (TOKENS_128, 28 * 28 * 768)]:
        for h, w in sizes:
            for hh, ww in [(h, w), (w, h)]:
                assert smart_resize(hh, ww, 28, min_p, max_p) == qwen.smart_resize(hh, ww, 28, min_p, max_p), (hh, ww)


def test_extreme_aspect_ratio_is_an_error(qwen):
    for h, w in [(1, 201), (10, 2010), (3000, 14)]:
        with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
            qwen.smart_resize(h, w)
        with pytest.raises(ValueError, match="aspect ratio must be smaller than 200"):
            smart_resize(h, w)
    with pytest.raises(ValueError, match="aspect ratio"):
        process_images([np.zeros((2, 500, 3), np.uint8)])
    smart_resize(1, 200)  # exactly 200 is allowed, as in the reference


def test_patch_layout_by_hand():
    """Rows follow (merged row, merged col, row in 2x2 group, col in group); a row is (C, T, 14, 14) and a
    still image fills both temporal slots."""
    img = picture(56, 84)  # already a multiple of 28 and within limits: no resize, so we can invert exactly
    pv, grid = process_images([img])
    assert grid.tolist() == [[1, 4, 6]] and pv.shape == (24, 3 * 2 * 14 * 14) and pv.dtype == torch.float32
    rows = pv.view(24, 3, 2, 14, 14)
    restored = rows * torch.tensor(CLIP_STD).view(1, 3, 1, 1, 1) + torch.tensor(CLIP_MEAN).view(1, 3, 1, 1, 1)
    restored = (restored * 255).round().to(torch.uint8)
    for R in range(2):
        for C in range(3):
            for r in range(2):
                for c in range(2):
                    i = (R * 3 + C) * 4 + r * 2 + c
                    y, x = (2 * R + r) * 14, (2 * C + c) * 14
                    want = torch.from_numpy(img[y:y + 14, x:x + 14]).permute(2, 0, 1)  # (3, 14, 14)
                    assert torch.equal(restored[i, :, 0], want) and torch.equal(restored[i, :, 1], want), (R, C, r, c)


@pytest.mark.parametrize("h,w,max_pixels", [(112, 112, TOKENS_128), (480, 640, TOKENS_128), (50, 50, 28 * 28 * 1280),
                                            (37, 500, 28 * 28 * 1280), (1000, 90, 28 * 28 * 1280),
                                            (333, 777, TOKENS_128)])
def test_images_match_qwen_pil_processor(qwen, h, w, max_pixels):
    ref = qwen.pil(size={"shortest_edge": 56 * 56, "longest_edge": max_pixels})
    arrays = [picture(h, w, 1), picture(w, h, 2)]
    inputs = [arrays[0], Image.fromarray(arrays[1]).convert("RGBA")]  # arrays and PIL (RGBA -> RGB) both accepted
    pv, grid = process_images(inputs, max_pixels=max_pixels)
    want = ref([arrays[0], Image.fromarray(arrays[1])], return_tensors="pt")
    assert grid.dtype == torch.long and torch.equal(grid, want["image_grid_thw"])
    assert pv.dtype == torch.float32 and pv.shape == want["pixel_values"].shape
    torch.testing.assert_close(pv, want["pixel_values"], atol=1e-6, rtol=0)


def test_images_close_to_torchvision_processor(qwen):
    ref = qwen.torchvision(size={"shortest_edge": 56 * 56, "longest_edge": TOKENS_128})
    for h, w in [(480, 640), (720, 1280), (50, 50), (300, 200)]:
        img = picture(h, w, 3)
        pv, grid = process_images([img], max_pixels=TOKENS_128)
        want = ref([img], return_tensors="pt")
        assert torch.equal(grid, want["image_grid_thw"])
        diff = (pv - want["pixel_values"]).abs()
        assert diff.max() <= 2.5 * LEVEL and diff.mean() < 1e-3, (h, w, diff.max(), diff.mean())


@pytest.mark.parametrize("n", [3, 4])
def test_video_matches_qwen_video_processor(qwen, n):
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    ref = Qwen2VLVideoProcessor(size={"shortest_edge": 56 * 56, "longest_edge": TOKENS_128})
    for (h, w), tol in [((112, 112), 1e-6), ((100, 150), 2.5 * LEVEL)]:  # no resize: exact; resize: resampler
        frames = [picture(h, w, k) for k in range(n)]
        pv, grid = process_video(frames, max_pixels=TOKENS_128)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            want = ref(videos=[np.stack(frames)], return_tensors="pt", cap_pixels_per_frame=False)
        assert grid.tolist() == want["video_grid_thw"].tolist() and grid.tolist()[0][0] == 2  # odd n padded
        torch.testing.assert_close(pv, want["pixel_values_videos"], atol=tol, rtol=0)


def test_video_padding_and_still_image():
    a, b, c = picture(112, 112, 0), picture(112, 112, 1), picture(112, 112, 2)
    one, _ = process_video([a])
    assert torch.equal(one, process_images([a])[0])  # a still image is a 1-frame video padded by itself
    odd, grid = process_video([a, b, c])
    even, _ = process_video([a, b, c, c])
    assert grid.tolist() == [[2, 8, 8]] and torch.equal(odd, even)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        process_images([np.zeros((56, 56, 3), np.float32)])
    with pytest.raises(ValueError, match="uint8 HxWx3"):
        process_images([np.zeros((56, 56), np.uint8)])
    with pytest.raises(ValueError, match="no images"):
        process_images([])
