"""Frame sampling by time stamp (video.py) against hand-computed frame numbers, on files and frame folders."""
import math
import os

import numpy as np
import pytest
from PIL import Image

from mmduet2.video import VideoError, iter_frames, probe_video, read_frames, video_duration
from shapewatch import write_video


def numbered_frames(n, size=32):
    """Frame j is grey level 8 * j, so a decoded frame tells which source frame it was (codec error ~3)."""
    return [np.full((size, size, 3), 8 * j, np.uint8) for j in range(n)]


def frame_number(frame):
    return int(round(frame.astype(float).mean() / 8))


def expected(n, fps, interval):
    """Source frame shown at k * interval: the last one with j / fps <= k * interval, else the last frame."""
    count = math.floor(n / fps / interval + 1e-9)
    return [min(math.floor(k * interval * fps + 1e-9), n - 1) for k in range(1, count + 1)]


@pytest.mark.parametrize("fps,interval", [(4, 1.0), (3, 1.0), (7.5, 1.0), (7.5, 0.5), (4, 2.0), (30, 1.0)])
def test_file_sampling_by_timestamp(tmp_path, fps, interval):
    n = 30
    path = str(tmp_path / "v.mp4")
    write_video(path, numbered_frames(n), fps)
    frames, times = read_frames(path, interval)
    want = expected(n, fps, interval)
    assert [frame_number(f) for f in frames] == want
    assert times == pytest.approx([k * interval for k in range(1, len(want) + 1)])
    assert video_duration(path) == pytest.approx(n / fps)
    assert frames[0].dtype == np.uint8 and frames[0].shape == (32, 32, 3)
    assert not [p for p in os.listdir(tmp_path) if p != "v.mp4"]        # the temp file was renamed away


def test_colours_survive_and_max_frames(tmp_path):
    colours = [(230, 30, 30), (30, 200, 50), (40, 90, 255), (240, 220, 30)]
    frames = []
    for j in range(16):                                   # 4 fps, a 40x40 block whose colour changes each second
        f = np.full((112, 112, 3), 24, np.uint8)
        f[20:60, 50:90] = colours[j // 4]
        frames.append(f)
    path = str(tmp_path / "c.mp4")
    write_video(path, frames, 4)
    got, times = read_frames(path, 1.0)
    assert times == [1.0, 2.0, 3.0, 4.0]
    for k, f in enumerate(got, 1):                        # stamp k shows source frame 4k (the last one for k = 4)
        want = colours[min(4 * k, 15) // 4]
        assert np.abs(f[30:50, 60:80].reshape(-1, 3).mean(0) - want).max() < 12
        assert np.abs(f[80:110, 0:30].reshape(-1, 3).mean(0) - 24).max() < 6
    head, head_times = read_frames(path, 1.0, max_frames=2)
    assert head_times == [1.0, 2.0] and all(np.array_equal(a, b) for a, b in zip(head, got))


def test_frame_folder(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for j, f in enumerate(numbered_frames(11)):           # 11 frames at 2.5 fps = 4.4 s
        Image.fromarray(f).save(folder / f"{j:04d}.png")
    (folder / "notes.txt").write_text("not a frame")
    frames, times = read_frames(str(folder), 1.0, fps=2.5)
    assert times == [1.0, 2.0, 3.0, 4.0]
    assert [frame_number(f) for f in frames] == expected(11, 2.5, 1.0) == [2, 5, 7, 10]
    assert video_duration(str(folder), fps=2.5) == pytest.approx(4.4)


def test_errors_name_the_file(tmp_path):
    missing = str(tmp_path / "nope.mp4")
    with pytest.raises(VideoError, match="nope.mp4 does not exist"):
        read_frames(missing, 1.0)
    with pytest.raises(VideoError, match="nope.mp4 does not exist"):
        video_duration(missing)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    with pytest.raises(VideoError, match="corrupt.mp4 could not be decoded.*re-encode"):
        read_frames(str(corrupt), 1.0)
    short = str(tmp_path / "short.mp4")
    write_video(short, numbered_frames(2), 4)             # 0.5 s
    with pytest.raises(VideoError, match=r"short.mp4 is 0.50 s long, shorter than one frame interval \(1.0 s\)"):
        read_frames(short, 1.0)
    empty = tmp_path / "empty_folder"
    empty.mkdir()
    with pytest.raises(VideoError, match="empty_folder is a folder without .jpg/.png frames"):
        read_frames(str(empty), 1.0, fps=2)
    Image.fromarray(numbered_frames(1)[0]).save(empty / "0.jpg")
    with pytest.raises(VideoError, match="empty_folder is a folder of frames.*pass fps"):
        read_frames(str(empty), 1.0)
    assert isinstance(VideoError("x"), ValueError)
    with pytest.raises(ValueError, match="must be even"):
        write_video(str(tmp_path / "odd.mp4"), [np.zeros((31, 32, 3), np.uint8)], 4)


def test_iter_frames_is_read_frames_decoded_lazily(tmp_path):
    path = str(tmp_path / "v.mp4")
    write_video(path, numbered_frames(30), 7.5)
    frames, times = read_frames(path, 0.5)
    pairs = list(iter_frames(path, 0.5))
    assert [t for _, t in pairs] == times and all(np.array_equal(f, g) for (f, _), g in zip(pairs, frames))
    folder = tmp_path / "frames"
    folder.mkdir()
    for j, f in enumerate(numbered_frames(6)):
        Image.fromarray(f).save(folder / f"{j:04d}.png")
    (folder / "0005.png").write_bytes(b"not a png")       # only the last frame is broken
    it = iter_frames(str(folder), 1.0, fps=2)             # 3 s: frames 2, 4 and the broken 5
    assert [frame_number(next(it)[0]) for _ in range(2)] == [2, 4]  # decoded as consumed: the first two come
    with pytest.raises(VideoError, match="0005.png is not a readable image"):
        next(it)


def test_corrupt_frames_and_bad_arguments_are_one_sentence(tmp_path):
    folder = tmp_path / "frames"
    folder.mkdir()
    for j, f in enumerate(numbered_frames(4)):
        Image.fromarray(f).save(folder / f"{j:04d}.png")
    good = (folder / "0002.png").read_bytes()
    (folder / "0002.png").write_bytes(good[:len(good) // 2])      # a truncated PNG
    with pytest.raises(VideoError, match=r"0002.png is not a readable image .*: replace it"):
        read_frames(str(folder), 0.5, fps=4)
    (folder / "0002.png").write_bytes(b"\xff\xd8\xff garbage")     # not an image at all (was UnidentifiedImageError)
    with pytest.raises(VideoError, match=r"0002.png is not a readable image"):
        read_frames(str(folder), 0.5, fps=4)
    path = str(tmp_path / "v.mp4")
    write_video(path, numbered_frames(8), 4)
    for interval in (0, -1.0, float("nan")):
        with pytest.raises(ValueError, match=rf"frame interval {interval} for .*v.mp4 must be a positive number"):
            read_frames(path, interval)
    with pytest.raises(VideoError, match=r"frames is a folder of frames.*pass fps .*not nan"):
        read_frames(str(folder), 1.0, fps=float("nan"))


def test_probe_video(tmp_path):
    path = str(tmp_path / "v.mp4")
    write_video(path, numbered_frames(8), 4)                 # 2 s
    assert probe_video(path, need_seconds=2.0) == pytest.approx(2.0)
    with pytest.raises(VideoError, match=r"v.mp4 is 2.00 s long but 3.00 s are needed: use the whole video"):
        probe_video(path, need_seconds=3.0)
    corrupt = tmp_path / "corrupt.mp4"
    corrupt.write_bytes(b"\x00\x00\x00\x18ftypmp42" + os.urandom(2000))
    with pytest.raises(VideoError, match="corrupt.mp4 could not be decoded"):
        probe_video(str(corrupt))
    folder = tmp_path / "frames"
    folder.mkdir()
    for j, f in enumerate(numbered_frames(4)):
        Image.fromarray(f).save(folder / f"{j:04d}.jpg")
    assert probe_video(str(folder), fps=2) == 2.0
    with pytest.raises(VideoError, match="pass fps"):
        probe_video(str(folder))
    (folder / "0000.jpg").write_bytes(b"broken")
    with pytest.raises(VideoError, match="0000.jpg is not a readable image"):
        probe_video(str(folder), fps=2)
    with pytest.raises(VideoError, match="nope.mp4 does not exist"):
        probe_video(str(tmp_path / "nope.mp4"))
