"""Tokenizer and chat rendering against ground truth: Qwen2.5-VL's Jinja chat template rendered by
transformers, Qwen2_5_VLProcessor's pad expansion, Qwen2's tokenizer.json pipeline, and round trips."""
import json
import random
import unicodedata

import numpy as np
import pytest

from chat_template import apply_chat_template, expand_vision_pads
from mmduet2.tokenizer import SPECIAL_TOKENS, Tokenizer, qwen_pipeline, train_toy_tokenizer

# chat_template of Qwen/Qwen2.5-VL-3B-Instruct (chat_template.json), verbatim.
QWEN25_VL_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content "
    "%}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}")

# The pre-tokenizer and normaliser of Qwen2/Qwen2.5-VL's tokenizer.json, verbatim.
QWEN_PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?"
                                           "[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
     "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}]}

CORPUS = ["Tell me every time a red shape appears.", "A red circle appeared.", "NO REPLY", "Nothing yet.",
          "assistant\nNO REPLY", "user\nTell me", "assistant\nA blue square appeared."] * 20
MESSAGES = [
    [{"role": "user", "content": "Hi there!"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "What is 2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?\nThanks."}],
    [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "What changed?"}]},
     {"role": "assistant", "content": "NO REPLY"},
     {"role": "user", "content": [{"type": "video"}, {"type": "text", "text": "And now?"}]},
     {"role": "assistant", "content": [{"type": "text", "text": "A red circle appeared."}]}],
]


@pytest.fixture(scope="module")
def tok():
    return train_toy_tokenizer(CORPUS, vocab_size=400)


@pytest.fixture(scope="module")
def hf_tok(tok):
    transformers = pytest.importorskip("transformers")
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok.tk, chat_template=QWEN25_VL_TEMPLATE)


def test_chat_template_by_hand():
    assert apply_chat_template(MESSAGES[0], add_generation_prompt=True) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi there!<|im_end|>\n"
        "<|im_start|>assistant\n")
    assert apply_chat_template(MESSAGES[2][:2]) == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|>"
        "<|vision_end|><|vision_start|><|image_pad|><|vision_end|>What changed?<|im_end|>\n"
        "<|im_start|>assistant\nNO REPLY<|im_end|>\n")


@pytest.mark.parametrize("messages", MESSAGES)
@pytest.mark.parametrize("add_generation_prompt", [False, True])
def test_chat_template_matches_qwen_jinja(hf_tok, messages, add_generation_prompt):
    want = hf_tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    assert apply_chat_template(messages, add_generation_prompt) == want


def test_pad_expansion_matches_qwen_processor(tok, hf_tok):
    transformers = pytest.importorskip("transformers")
    from transformers.models.qwen2_vl.video_processing_qwen2_vl import Qwen2VLVideoProcessor
    size = {"shortest_edge": 56 * 56, "longest_edge": 128 * 28 * 28}
    proc = transformers.Qwen2_5_VLProcessor(image_processor=transformers.Qwen2VLImageProcessor(size=size),
                                            video_processor=Qwen2VLVideoProcessor(size=size), tokenizer=hf_tok,
                                            chat_template=QWEN25_VL_TEMPLATE)
    text = apply_chat_template(MESSAGES[2], add_generation_prompt=True)
    images = [np.zeros((112, 112, 3), np.uint8), np.zeros((200, 100, 3), np.uint8)]
    out = proc(text=[text], images=images, videos=[np.zeros((4, 56, 84, 3), np.uint8)], return_tensors="pt",
               videos_kwargs={"cap_pixels_per_frame": False})
    image_counts = [int(g.prod()) // 4 for g in out["image_grid_thw"]]
    video_counts = [int(g.prod()) // 4 for g in out["video_grid_thw"]]
    assert image_counts == [16, 28] and video_counts == [12]
    assert tok.encode(expand_vision_pads(text, image_counts, video_counts)) == out["input_ids"][0].tolist()
    with pytest.raises(ValueError, match="2 <\\|image_pad\\|> placeholders but 1"):
        expand_vision_pads(text, [16], [12])


def test_special_tokens_are_single_ids_after_the_vocabulary(tok):
    ids = {attr: getattr(tok, attr) for attr in SPECIAL_TOKENS}
    assert len(set(ids.values())) == len(ids)
    learned = tok.tk.get_vocab_size(with_added_tokens=False)
    for attr, token in SPECIAL_TOKENS.items():
        assert tok.encode(token) == [ids[attr]] and tok.tk.token_to_id(token) == ids[attr]
        assert learned <= ids[attr] < tok.vocab_size  # appended after the learned vocabulary, like Qwen
    assert tok.vocab_size == learned + len(SPECIAL_TOKENS) <= 400
    ids_ = tok.encode("<|im_start|>user\nhi<|im_end|>")
    assert ids_[0] == tok.im_start_id and ids_[-1] == tok.im_end_id
    assert tok.decode(ids_) == "user\nhi"
    assert tok.decode(ids_, skip_special_tokens=False) == "<|im_start|>user\nhi<|im_end|>"


def test_toy_tokenizer_has_qwens_pipeline(tok, tmp_path):
    saved = json.loads(open(tok.save(tmp_path)).read())
    assert saved["pre_tokenizer"] == QWEN_PRE_TOKENIZER and saved["normalizer"] == {"type": "NFC"}
    assert saved["model"]["type"] == "BPE" and saved["decoder"]["type"] == "ByteLevel"
    assert all(t["special"] for t in saved["added_tokens"])
    assert tok.encode("e\u0301") == tok.encode("\u00e9")  # NFC: a combining accent becomes one character


def test_round_trips(tok, tmp_path):
    rng = random.Random(0)
    alphabet = "abcXYZ019 .,!?'\"\n\t\r  -_()[]{}<>|/\\éüßñ中文日本語한국어😀🚀∑∫€\u200b"
    texts = ["", " ", "\n\n", "NO REPLY", "A red circle appeared.", "It's 3:45pm -- don't!", "  leading and trailing  ",
             "emoji 😀🚀 and 中文 mixed\twith tabs\r\n"]
    texts += ["".join(rng.choice(alphabet) for _ in range(rng.randint(1, 60))) for _ in range(200)]
    tok.save(tmp_path)
    loaded = Tokenizer.from_dir(tmp_path)
    for text in texts:
        text = unicodedata.normalize("NFC", text)
        ids = tok.encode(text)
        assert tok.decode(ids) == text and loaded.encode(text) == ids, repr(text)


def test_newline_is_split_from_following_letters(tok):
    pieces = [p for p, _ in tok.tk.pre_tokenizer.pre_tokenize_str("assistant\nNO REPLY")]
    assert pieces == ["assistant", "Ċ", "NO", "ĠREPLY"]
    # The corpus is full of "assistant\nNO REPLY"; still no token may straddle the newline.
    for head in ["<|im_start|>assistant\n", "assistant\n", "user\nTell me\n"]:
        for reply in ["NO REPLY", "A red circle appeared.", "123 shapes", "'s fine", "(yes)", " leading space",
                      "\u00e9t\u00e9", "中文", "... ok", "Nothing yet."]:
            assert tok.encode(head) + tok.encode(reply) == tok.encode(head + reply), (head, reply)


def test_errors_name_the_problem(tmp_path):
    from tokenizers import Tokenizer as HFTokenizer, models, trainers
    bare = qwen_pipeline(HFTokenizer(models.BPE()))
    bare.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, show_progress=False))
    bare.add_special_tokens(["<|im_start|>", "<|im_end|>"])
    bare.save(str(tmp_path / "tokenizer.json"))
    with pytest.raises(ValueError, match="lacks the special tokens <\\|endoftext\\|>, <\\|vision_start\\|>") as e:
        Tokenizer.from_dir(tmp_path)
    assert "<|im_start|>" not in str(e.value) and "train_toy_tokenizer" in str(e.value)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Tokenizer.from_dir(tmp_path / "nowhere")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="not a valid tokenizer.json"):
        Tokenizer.from_file(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="too small"):
        train_toy_tokenizer(CORPUS, vocab_size=100)
