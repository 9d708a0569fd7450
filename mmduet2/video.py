"""Reading frames from a video at a fixed interval (shapewatch.py writes the toy's mp4 files).

MMDuet2 (docs/method.md section 1) shows the model one frame per `interval` seconds. Frame k (k = 1..N, with
N = floor(duration / interval)) is the picture on screen at video time k * interval: the last decoded frame
whose presentation time is <= k * interval (past the last frame's time, that is the file's last frame), and
its time stamp is k * interval. A turn's time is therefore the time of its last frame, and an event that starts
at time a is first seen in the frame stamped with the first multiple of `interval` that is >= a. Frames are
picked by time stamp, never by frame index, so a 7.5 fps file and a 30 fps file give the same sampling.

Videos are decoded with PyAV, sequentially, keeping only the frames that are picked; time 0 is the first
decoded frame (a stream whose first pts is not 0 is shifted). A folder of jpg/png frames is also a video:
its files sorted by name are frames 0, 1, 2, ... shown at i / fps, and `fps` must be given.
"""
import itertools
import math
import os

import av
import numpy as np
from PIL import Image


EPS = 1e-6                                      # float slack when comparing times (0.1 * 3 != 0.3)
IMAGE_EXTS = (".jpg", ".jpeg", ".png")


class VideoError(ValueError):
    """A video that cannot be read (missing, corrupt, too short); the message names the file and the fix."""


def _folder_frames(path, fps):
    names = sorted(n for n in os.listdir(path) if n.lower().endswith(IMAGE_EXTS))
    if not names:
        raise VideoError(f"{path} is a folder without .jpg/.png frames: point to a video file or a frame folder.")
    if fps is None or not 0 < fps < math.inf:
        raise VideoError(f"{path} is a folder of frames, which has no frame rate: pass fps (e.g. fps=2.0), not {fps}.")
    return [os.path.join(path, n) for n in names]


def _read_image(file):
    try:
        with Image.open(file) as im:
            return np.asarray(im.convert("RGB"))
    except (OSError, SyntaxError, ValueError) as e:  # PIL: UnidentifiedImageError, truncated or broken files
        raise VideoError(f"{file} is not a readable image ({e}): replace it or re-extract the folder's "
                         "frames.") from None


def video_duration(path, fps=None):
    """Length of a video file or frame folder in seconds (container metadata; demuxing if it has none)."""
    if not os.path.exists(path):
        raise VideoError(f"{path} does not exist: check the path (relative paths resolve against the annotation).")
    if os.path.isdir(path):
        return len(_folder_frames(path, fps)) / fps
    try:
        with av.open(path) as container:
            stream = video_stream(container, path)
            if stream.duration:
                return float(stream.duration * stream.time_base)
            if container.duration:
                return container.duration / av.time_base
            ends = [(p.pts, p.pts + (p.duration or 0)) for p in container.demux(stream) if p.pts is not None]
            return float((max(e for _, e in ends) - min(s for s, _ in ends)) * stream.time_base) if ends else 0.0
    except av.FFmpegError as e:
        raise VideoError(f"{path} could not be decoded ({e}): re-encode it, e.g. ffmpeg -i IN -c:v libx264 OUT.mp4")


def video_stream(container, path):
    if not container.streams.video:
        raise VideoError(f"{path} has no video stream: point to a file that contains video.")
    return container.streams.video[0]


def read_frames(path, interval, fps=None, max_frames=None):
    """Frames 1..N of a video at `interval` seconds: (list of uint8 HxWx3 arrays, list of time stamps)."""
    pairs = list(itertools.islice(iter_frames(path, interval, fps), max_frames or None))
    return [f for f, _ in pairs], [t for _, t in pairs]


def iter_frames(path, interval, fps=None):
    """Frames 1..N of a video at `interval` seconds as (uint8 HxWx3 array, time stamp) pairs, decoded only as they
    are consumed. The path, the interval and a folder's fps are checked at the call; decoding errors come as
    VideoError while iterating."""
    if not 0 < interval < math.inf:
        raise ValueError(f"frame interval {interval} for {path} must be a positive number of seconds.")
    if not os.path.exists(path):
        raise VideoError(f"{path} does not exist: check the path (relative paths resolve against the annotation).")
    if not os.path.isdir(path):
        return _decode(path, interval)
    files = _folder_frames(path, fps)
    n = _count(path, len(files) / fps, interval)
    # the file shown at time t is number floor(t * fps), clipped to the last one
    return ((_read_image(files[min(int(math.floor(k * interval * fps + EPS)), len(files) - 1)]), k * interval)
            for k in range(1, n + 1))


def probe_video(path, fps=None, need_seconds=None):
    """Check that a video opens, decodes its first frame, has a frame rate (a frame folder needs `fps`) and, with
    `need_seconds`, lasts that long. Returns its duration (s); raises VideoError naming the file and the fix."""
    duration = video_duration(path, fps)
    next(iter_frames(path, 1e-3, fps))  # decodes the first frame (and at most one more)
    if need_seconds is not None and duration < need_seconds - EPS:
        raise VideoError(f"{path} is {duration:.2f} s long but {need_seconds:.2f} s are needed: use the whole video "
                         "or shorten the record's duration.")
    return duration


def _count(path, duration, interval):
    n = int(math.floor(duration / interval + EPS))
    if n == 0:
        raise VideoError(f"{path} is {duration:.2f} s long, shorter than one frame interval ({interval} s): "
                         "use a longer video or a smaller interval.")
    return n


def _decode(path, interval):
    """Decode sequentially, yielding (frame k, k * interval) once a later frame shows that frame k is the last one
    with time <= k * interval; after the last frame, the stamps up to the duration show it."""
    k, prev, prev_rgb, t0, t, step = 0, None, None, None, 0.0, 0.0
    try:
        with av.open(path) as container:
            stream = video_stream(container, path)
            step = 1 / float(stream.average_rate) if stream.average_rate else 0.0
            for frame in container.decode(stream):
                if frame.pts is None:
                    continue
                t0 = frame.time if t0 is None else t0
                t = frame.time - t0
                if frame.duration and frame.time_base:
                    step = float(frame.duration * frame.time_base)
                while prev is not None and t > (k + 1) * interval + EPS:
                    prev_rgb = prev.to_ndarray(format="rgb24") if prev_rgb is None else prev_rgb
                    k += 1
                    yield prev_rgb, k * interval            # the same array when a frame is shown twice
                prev, prev_rgb = frame, None
    except av.FFmpegError as e:
        raise VideoError(f"{path} could not be decoded ({e}): re-encode it, e.g. ffmpeg -i IN -c:v libx264 "
                         "OUT.mp4") from None
    if prev is None:
        raise VideoError(f"{path} contains no decodable video frames: re-encode it or check that it is a video.")
    n = _count(path, t + step, interval)            # the last frame stays on screen for one frame period
    last = prev.to_ndarray(format="rgb24") if prev_rgb is None else prev_rgb
    for k in range(k + 1, n + 1):
        yield last, k * interval                    # stamps past the last frame's time show the last frame
