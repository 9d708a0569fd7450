"""Proactive dialogues as ChatML: the rendering against a hand-written string and the chat template, the loss
mask against positions found independently, and chunk-by-chunk ids against the whole rendering."""
import pytest
import torch

from chat_template import apply_chat_template, expand_vision_pads, to_messages
from mmduet2.dialogue import NO_REPLY, SYSTEM_PROMPT, Turn, render_dialogue, reply_ids, user_chunk_ids, user_chunk_text
from mmduet2.tokenizer import train_toy_tokenizer

QUESTION = "Tell me every time a red shape appears."
TPF = 3  # visual tokens per frame, small so the strings stay readable
TURNS = [Turn(2.0, [1, 2], QUESTION, NO_REPLY), Turn(4.0, [3, 4], None, "A red circle appeared."),
         Turn(6.0, [5, 6], None, NO_REPLY)]
FRAME = "<|vision_start|>" + "<|image_pad|>" * TPF + "<|vision_end|>"
EXPECTED = ("<|im_start|>system\n" + SYSTEM_PROMPT + "<|im_end|>\n"
            "<|im_start|>user\n" + FRAME + FRAME + QUESTION + "<|im_end|>\n"
            "<|im_start|>assistant\nNO REPLY<|im_end|>\n"
            "<|im_start|>user\n" + FRAME + FRAME + "<|im_end|>\n"
            "<|im_start|>assistant\nA red circle appeared.<|im_end|>\n"
            "<|im_start|>user\n" + FRAME + FRAME + "<|im_end|>\n"
            "<|im_start|>assistant\nNO REPLY<|im_end|>")
MESSAGES = [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": QUESTION}]},
            {"role": "assistant", "content": NO_REPLY},
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}]},
            {"role": "assistant", "content": "A red circle appeared."},
            {"role": "user", "content": [{"type": "image"}, {"type": "image"}]},
            {"role": "assistant", "content": NO_REPLY}]


@pytest.fixture(scope="module")
def tok():
    return train_toy_tokenizer([SYSTEM_PROMPT, QUESTION, NO_REPLY, "A red circle appeared.",
                                "assistant\nNO REPLY", "assistant\nA red"] * 10, vocab_size=400)


def test_system_prompt_and_no_reply():
    assert NO_REPLY == "NO REPLY"
    for phrase in ["continuously incoming video frames", "since your last reply", 'output "NO REPLY"']:
        assert phrase in SYSTEM_PROMPT


def test_rendering_equals_hand_written_chatml_and_chat_template(tok):
    ids, mask = render_dialogue(tok, TURNS, TPF)
    assert ids.dtype == torch.long and mask.dtype == torch.bool and ids.shape == mask.shape == (len(ids),)
    assert tok.decode(ids.tolist(), skip_special_tokens=False) == EXPECTED
    assert ids.tolist() == tok.encode(EXPECTED)  # tokenizing chunk by chunk == tokenizing the whole text
    # Qwen's template ends each message with "\n"; the rendering stops at the last <|im_end|>.
    template = expand_vision_pads(apply_chat_template(MESSAGES), [TPF] * 6)
    assert template == EXPECTED + "\n" and to_messages(TURNS) == MESSAGES
    assert tok.encode(template) == ids.tolist() + tok.encode("\n")


def expected_mask(tok, ids):
    """True from just after each "<|im_start|>assistant\\n" through the next <|im_end|>, found by scanning."""
    header, out, i = tok.encode("assistant\n"), [False] * len(ids), 0
    while i < len(ids):
        if ids[i] == tok.im_start_id and ids[i + 1:i + 1 + len(header)] == header:
            start = i + 1 + len(header)
            end = ids.index(tok.im_end_id, start)
            out[start:end + 1] = [True] * (end + 1 - start)
            i = end
        i += 1
    return out


def test_loss_mask_is_exactly_the_replies(tok):
    ids, mask = render_dialogue(tok, TURNS, TPF)
    ids, mask = ids.tolist(), mask.tolist()
    assert mask == expected_mask(tok, ids)
    n_reply = sum(len(tok.encode(t.reply)) + 1 for t in TURNS)
    assert sum(mask) == n_reply
    assert tok.decode([t for t, m in zip(ids, mask) if m], skip_special_tokens=False) == (
        "NO REPLY<|im_end|>A red circle appeared.<|im_end|>NO REPLY<|im_end|>")
    # Silent turns are trained; the prompt, frames, template and the "\n" after <|im_end|> are not.
    assert [t for t, m in zip(ids, mask) if m].count(tok.im_end_id) == 3
    for special in [tok.im_start_id, tok.image_pad_id, tok.vision_start_id, tok.vision_end_id]:
        assert not any(m for t, m in zip(ids, mask) if t == special)
    newline = tok.encode("\n")[0]
    assert not any(mask[i] for i in range(len(ids)) if ids[i] == newline)


@pytest.mark.parametrize("replies", [[NO_REPLY, "A red circle appeared.", NO_REPLY],
                                     ["123 shapes, all red!", "'s fine (yes)", " leading space"],
                                     ["Nothing yet.", "\u00e9t\u00e9 中文 😀", "a\nb"]])
def test_chunks_concatenate_to_the_whole_rendering(tok, replies):
    turns = [Turn(2.0 * (k + 1), [1, 2][:2 - k % 2], QUESTION if k == 0 else ("Subtitle: hi" if k == 2 else None), r)
             for k, r in enumerate(replies)] + [Turn(8.0, [], "Any more?", NO_REPLY)]  # a text-only turn too
    ids, mask = render_dialogue(tok, turns, TPF)
    chunks = []
    for k, t in enumerate(turns):
        chunks += user_chunk_ids(tok, k == 0, len(t.frame_indices), TPF, t.user_text) + reply_ids(tok, t.reply)
    assert chunks == ids.tolist()
    whole = "".join(user_chunk_text(k == 0, len(t.frame_indices), TPF, t.user_text) + t.reply + "<|im_end|>"
                    for k, t in enumerate(turns))
    assert tok.encode(whole) == ids.tolist()  # chunk boundaries never change the tokenization
    assert mask.tolist() == expected_mask(tok, ids.tolist())


def test_chunks_by_hand(tok):
    assert tok.decode(user_chunk_ids(tok, False, 1, 2, None), skip_special_tokens=False) == (
        "\n<|im_start|>user\n<|vision_start|><|image_pad|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n")
    assert user_chunk_text(True, 0, TPF, "Hi", system_prompt="S") == (
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    r = reply_ids(tok, NO_REPLY)
    assert r[-1] == tok.im_end_id and tok.decode(r[:-1]) == NO_REPLY
    with pytest.raises(ValueError, match="no turns"):
        render_dialogue(tok, [], TPF)
