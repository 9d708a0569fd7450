"""The streaming engine against ground truth: one forward over the whole dialogue, and single-row runs."""
import warnings

import numpy as np
import pytest
import torch

from mmduet2.checkpoint import check_token_ids
from mmduet2.config import preset
from mmduet2.dialogue import NO_REPLY, SYSTEM_PROMPT, Turn, render_dialogue
from mmduet2.grpo import token_logprobs
from mmduet2.model import MMDuet2
from demo import main
from mmduet2.stream import StreamConfig, Streamer, unsayable_ids
from mmduet2.tokenizer import train_toy_tokenizer

QUESTION = "Tell me every time a red shape appears."


class EndBiased(MMDuet2):
    """A random model that says <|im_end|> often, so rows of a group end their replies at different lengths."""
    end_id = None

    def forward(self, *args, **kwargs):
        logits = super().forward(*args, **kwargs)
        logits[..., self.end_id] += 2.0
        return logits


@pytest.fixture(scope="module")
def setup():
    tok = train_toy_tokenizer([SYSTEM_PROMPT, QUESTION, NO_REPLY, "A red circle appeared."], vocab_size=400)
    cfg = preset("toy", vocab_size=tok.vocab_size, image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id,
                 vision_start_token_id=tok.vision_start_id, vision_end_token_id=tok.vision_end_id)
    torch.manual_seed(0)
    EndBiased.end_id = tok.im_end_id
    model = EndBiased(cfg).eval()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (56, 84, 3), dtype=np.uint8) for _ in range(8)]
    return model, tok, frames


def play(model, tok, frames, seed, group=None, context_turns=0, cfg=None):
    cfg = cfg or StreamConfig(max_new_tokens=5, temperature=1.0, top_k=20)
    s = Streamer(model, tok, cfg, seed=seed)
    for k in range(0, len(frames), 2):
        turn = k // 2
        text = QUESTION if turn == 0 else None
        if turn < context_turns:
            s.step(frames[k:k + 2], text, reply="A red circle appeared." if turn == 0 else NO_REPLY)
            continue
        if group and turn == context_turns:
            s.expand(group)
        s.step(frames[k:k + 2], text)
    return s


def toy_config(tok, **overrides):
    return preset("toy", vocab_size=tok.vocab_size, image_token_id=tok.image_pad_id, video_token_id=tok.video_pad_id,
                  vision_start_token_id=tok.vision_start_id, vision_end_token_id=tok.vision_end_id, **overrides)


def full_forward_logprobs(model, streamer, i, temperature):
    """Row i of a streamer recomputed in one forward over its whole sequence and every frame it saw, with the
    special tokens masked as the streamer masks them when it samples (what train_rl.py's update computes)."""
    ids = torch.tensor([streamer.rows[i].ids])
    with torch.no_grad():
        logits = model(ids, pixel_values=torch.cat(streamer.pixel_values[i]),
                       image_grid_thw=torch.cat(streamer.grids[i]))
    return token_logprobs(logits, ids, temperature, banned=streamer.banned)[0]


def test_forced_stream_is_the_rendered_dialogue(setup):
    model, tok, frames = setup
    replies = ["A red circle appeared.", NO_REPLY, NO_REPLY, "A red square appeared."]
    s = Streamer(model, tok, StreamConfig())
    for k in range(4):
        s.step(frames[2 * k:2 * k + 2], QUESTION if k == 0 else None, reply=replies[k])
    row = s.rows[0]
    tpf = int(s.grids[0][0][0].prod()) // 4  # row 0, first turn, first frame
    turns = [Turn(2.0 * (k + 1), [2 * k + 1, 2 * k + 2], QUESTION if k == 0 else None, r)
             for k, r in enumerate(replies)]
    ids, mask = render_dialogue(tok, turns, tpf)
    assert row.ids == ids.tolist()
    assert not any(row.sampled) and mask.sum() > 0
    assert row.turns == [(2.0 * (k + 1), r) for k, r in enumerate(replies)]


def test_stream_equals_full_forward(setup):
    model, tok, frames = setup
    s = play(model, tok, frames, seed=1)
    row = s.rows[0]
    assert [t for t, _ in row.turns] == [2.0, 4.0, 6.0, 8.0]
    # Sampled tokens sit exactly between each "<|im_start|>assistant\n" and the <|im_end|> that closes it.
    header = tok.encode("<|im_start|>assistant\n")
    for k in range(len(row.ids)):
        if row.ids[k - len(header):k] == header:
            end = row.ids.index(tok.im_end_id, k)
            capped = end - k == 5  # a reply that hit the cap is closed by a forced <|im_end|>
            assert all(row.sampled[k:end + (0 if capped else 1)])
            assert not row.sampled[k - 1] and (end + 1 == len(row.ids) or not row.sampled[end + 1])
    # Every sampled token's log-prob from the cached stream equals the one from a single full forward.
    full = full_forward_logprobs(model, s, 0, 1.0)
    sampled = torch.tensor(row.sampled)
    assert sampled.sum() >= 4
    torch.testing.assert_close(full[sampled], torch.tensor(row.logprobs)[sampled], atol=1e-4, rtol=0)


def test_group_rows_equal_single_runs(setup):
    model, tok, frames = setup
    group = play(model, tok, frames, seed=10, group=4, context_turns=1)
    lengths = set()
    for i, row in enumerate(group.rows):
        # a single run seeded like row i draws from a generator in the same state, so it samples the same
        single = play(model, tok, frames, seed=10 + i, context_turns=1).rows[0]
        assert row.ids == single.ids and row.sampled == single.sampled
        np.testing.assert_allclose(row.logprobs, single.logprobs, atol=1e-4)
        lengths.add(len(row.ids))
    assert len(lengths) > 1, "rows should end their replies at different lengths in this test"
    # each row of the group also matches a full forward over its own sequence
    row = group.rows[2]
    full = full_forward_logprobs(model, group, 2, 1.0)
    sampled = torch.tensor(row.sampled)
    torch.testing.assert_close(full[sampled], torch.tensor(row.logprobs)[sampled], atol=1e-4, rtol=0)


def test_concatenated_groups_equal_separate_groups(setup):
    """Two RL groups on different videos (different context lengths, one video shorter) played as one batch
    through concat + step_rows sample exactly what each group samples alone, and re-score like a full forward."""
    model, tok, frames = setup
    other = [f[::-1].copy() for f in frames[:6]]  # a second, shorter video
    cfg = StreamConfig(max_new_tokens=5, temperature=1.0, top_k=20)

    def group(video, seed, context_turns):
        s = Streamer(model, tok, cfg, seed=seed)
        for k in range(context_turns):
            s.step(video[2 * k:2 * k + 2], QUESTION if k == 0 else None, reply=NO_REPLY)
        s.expand(2)
        return s

    def play_alone(video, seed, context_turns):
        s = group(video, seed, context_turns)
        for k in range(context_turns, len(video) // 2):
            s.step(video[2 * k:2 * k + 2])
        return s

    videos, contexts = (frames, other), (1, 2)
    batch = Streamer.concat([group(v, 100 * j, c) for j, (v, c) in enumerate(zip(videos, contexts))])
    turn = list(contexts)  # each row's next turn index, rows 0-1 on video 0, rows 2-3 on video 1
    while any(t < len(v) // 2 for t, v in zip(turn, videos)):
        per_row = [videos[r // 2][2 * turn[r // 2]:2 * turn[r // 2] + 2] if turn[r // 2] < len(videos[r // 2]) // 2
                   else None for r in range(4)]
        batch.step_rows(per_row, [None] * 4, [None] * 4)
        turn = [t + 1 for t in turn]
    for j, (v, c) in enumerate(zip(videos, contexts)):
        alone = play_alone(v, 100 * j, c)
        for g in range(2):
            row, ref = batch.rows[2 * j + g], alone.rows[g]
            assert row.ids == ref.ids and row.sampled == ref.sampled and row.turns == ref.turns
            np.testing.assert_allclose(row.logprobs, ref.logprobs, atol=1e-4)
    assert batch.rows[2].turns[-1][0] == 6.0 and batch.rows[0].turns[-1][0] == 8.0  # each row keeps its clock
    full = full_forward_logprobs(model, batch, 3, 1.0)
    sampled = torch.tensor(batch.rows[3].sampled)
    assert sampled.sum() >= 2
    torch.testing.assert_close(full[sampled], torch.tensor(batch.rows[3].logprobs)[sampled], atol=1e-4, rtol=0)


def test_random_models_sample_only_what_a_dialogue_can_hold():
    """Fuzz: random toy models at temperature 1.5, 51 streams of 40 turns. Before every special token but
    <|im_end|> was masked, a sampled <|video_pad|> crashed the next chunk ("input_ids hold 1 <|video_pad|>
    tokens but video_grid_thw [] needs 0") and a sampled <|im_start|> left a dialogue that re-encodes otherwise."""
    tok = train_toy_tokenizer([SYSTEM_PROMPT, QUESTION, NO_REPLY], vocab_size=300)
    banned = set(unsayable_ids(tok, tok.vocab_size).tolist())
    assert banned == {tok.endoftext_id, tok.im_start_id, tok.vision_start_id, tok.vision_end_id, tok.image_pad_id,
                      tok.video_pad_id}
    assert unsayable_ids(tok, tok.vocab_size + 2).tolist()[-2:] == [tok.vocab_size, tok.vocab_size + 1]
    special = banned | {tok.im_end_id}
    cfg = StreamConfig(frames_per_turn=1, max_new_tokens=4, temperature=1.5, min_pixels=28 * 28, max_pixels=28 * 28)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (28, 28, 3), dtype=np.uint8) for _ in range(40)]
    for seed in range(3):
        torch.manual_seed(seed)
        model = MMDuet2(toy_config(tok, text_num_hidden_layers=2)).eval()  # 2 layers: random either way, faster
        s = Streamer(model, tok, cfg, seed=seed)
        s.step(frames[:1], QUESTION)
        s.expand(17)
        for k in range(1, 40):
            s.step(frames[k:k + 1])
        for row in s.rows:
            assert len(row.turns) == 40
            replies, cur = [], []
            for t, sampled in zip(row.ids + [None], row.sampled + [False]):
                if sampled:
                    cur.append(t)
                elif cur:
                    replies, cur = replies + [cur], []
            assert len(replies) == 40
            for r in replies:  # no special token, but the <|im_end|> that closes the reply (absent if capped)
                assert not special & set(r[:-1]) and (r[-1] == tok.im_end_id or r[-1] not in special), r
            text = tok.decode(row.ids, skip_special_tokens=False)
            again = tok.encode(text)
            assert [t for t in again if t in special] == [t for t in row.ids if t in special]
            assert tok.decode(again, skip_special_tokens=False) == text


def test_context_replies_are_forced_not_sampled(setup):
    model, tok, frames = setup
    s = play(model, tok, frames, seed=3, context_turns=2)
    row = s.rows[0]
    assert row.turns[0] == (2.0, "A red circle appeared.") and row.turns[1] == (4.0, NO_REPLY)
    end_of_context = [i for i, t in enumerate(row.ids) if t == tok.im_end_id][4]  # system, user, asst, user, asst
    assert not any(row.sampled[: end_of_context + 1])
    assert any(row.sampled[end_of_context + 1:])


def test_greedy_decode_uses_cache_one_token_at_a_time(setup):
    model, tok, frames = setup
    calls = []
    orig = model.forward

    def spy(ids, **kw):
        calls.append(ids.shape[1])
        return orig(ids, **kw)
    model.forward = spy
    try:
        s = Streamer(model, tok, StreamConfig(max_new_tokens=4))
        s.step(frames[:2], QUESTION)
        s.step(frames[2:4])
    finally:
        del model.forward
    chunk_calls = [n for n in calls if n > 1]
    assert len(chunk_calls) == 2  # one multi-token chunk per turn, the rest are single decoded tokens
    assert all(n == 1 for n in calls if n <= 1)


def test_keep_pixels_off_streams_the_same_and_keeps_no_frames(setup):
    model, tok, frames = setup
    kept = play(model, tok, frames, seed=None, cfg=StreamConfig(max_new_tokens=3))
    light = play(model, tok, frames, seed=None, cfg=StreamConfig(max_new_tokens=3, keep_pixels=False))
    assert light.rows[0].ids == kept.rows[0].ids and light.rows[0].turns == kept.rows[0].turns
    assert len(kept.pixel_values[0]) == 4 and light.pixel_values == [[]] and light.grids == [[]]


def test_warns_once_past_max_position_embeddings(setup):
    _, tok, frames = setup
    torch.manual_seed(0)
    short = MMDuet2(toy_config(tok, max_position_embeddings=120)).eval()  # passed before turn 4 (204)
    with pytest.warns(UserWarning, match="passed M-RoPE position 120") as caught:
        play(short, tok, frames, seed=None, cfg=StreamConfig(max_new_tokens=2))
    assert len([w for w in caught if "M-RoPE" in str(w.message)]) == 1   # once, not every turn after
    with warnings.catch_warnings():
        warnings.simplefilter("error")                                    # the toy's 32768 is never reached
        play(setup[0], tok, frames, seed=None, cfg=StreamConfig(max_new_tokens=2))


def test_bad_inputs_are_one_sentence(setup):
    model, tok, frames = setup
    for field, value, want in (("max_new_tokens", 0, "at least 1"), ("frames_per_turn", 0, "at least 1"),
                               ("frame_interval", 0.0, "positive"), ("frame_interval", -1.0, "positive")):
        with pytest.raises(ValueError, match=rf"StreamConfig.{field}={value} \(--{field.replace('_', '-')}\) must "
                                             rf"be {want}"):
            StreamConfig(**{field: value})
    s = Streamer(model, tok, StreamConfig(max_new_tokens=2))
    mixed = [frames[0], np.zeros((112, 112, 3), np.uint8)]          # 56x84 and 112x112 in one turn
    with pytest.raises(ValueError, match=r"the 2 frames of one turn of row 0 have different sizes .*resize"):
        s.step(mixed, QUESTION)


def test_token_id_drift_is_caught(setup):
    model, tok, _ = setup
    cfg = preset("toy", vocab_size=tok.vocab_size, image_token_id=tok.im_start_id,
                 video_token_id=tok.video_pad_id, vision_start_token_id=tok.vision_start_id,
                 vision_end_token_id=tok.vision_end_id)
    with pytest.raises(ValueError, match="image_token_id"):
        check_token_ids(cfg, tok)


def test_demo_with_random_weights(tmp_path, capsys, monkeypatch):
    from mmduet2 import video
    from shapewatch import write_video
    monkeypatch.setattr(video, "read_frames", None)  # the demo decodes lazily (iter_frames), never all at once
    frames = [np.full((56, 56, 3), 20 * k, dtype=np.uint8) for k in range(12)]
    write_video(str(tmp_path / "v.mp4"), frames, fps=2)
    main([str(tmp_path / "v.mp4"), "--question", QUESTION, "--max-new-tokens", "3",
          "--timeline", str(tmp_path / "t.png")])
    captured = capsys.readouterr()
    assert "RANDOM" in captured.err
    assert (tmp_path / "t.png").stat().st_size > 0
    assert "6 s of video" in captured.out
