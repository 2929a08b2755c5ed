import pytest

from homegpt.data.tokenizer import EOT, load_tokenizer, round_vocab, token_byte_lengths, train_tokenizer
from homegpt.errors import UserError

UNICODE_TEXT = "Héllo wörld — naïve café\t日本語のテキスト 🙂🚀\n\n  spaces   and\ttabs\r\nend"


def test_round_vocab():
    assert round_vocab(50257) == 50304 and round_vocab(512) == 512 and round_vocab(513) == 576


def test_roundtrip_and_special_token(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    assert tok.decode(tok.encode(UNICODE_TEXT).ids) == UNICODE_TEXT
    assert tok.token_to_id(EOT) is not None
    assert tok.encode(EOT).ids == [tok.token_to_id(EOT)]


def test_token_byte_lengths_sum_to_utf8_bytes(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    lengths = token_byte_lengths(tok, round_vocab(tok.get_vocab_size()))
    ids = tok.encode(UNICODE_TEXT).ids
    assert sum(lengths[i] for i in ids) == len(UNICODE_TEXT.encode("utf-8"))
    assert lengths[tok.token_to_id(EOT)] == 0


def test_train_reports_bytes_per_token_and_refuses_overwrite(source, tmp_path):
    info = train_tokenizer(source, 300, tmp_path)
    assert info["vocab_size"] <= 300 and info["model_vocab_size"] % 64 == 0
    assert 1.0 < info["bytes_per_token"] < 3.0
    with pytest.raises(UserError, match="already exists"):
        train_tokenizer(source, 300, tmp_path)


@pytest.mark.parametrize("vocab", [100, 2_000_000])
def test_bad_vocab_size(source, tmp_path, vocab):
    with pytest.raises(UserError, match="vocab size"):
        train_tokenizer(source, vocab, tmp_path)


def test_bad_tokenizer_files(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_tokenizer(tmp_path / "missing.json")
    (tmp_path / "tokenizer.json").write_text("{not json")
    with pytest.raises(UserError, match="not a tokenizer.json"):
        load_tokenizer(tmp_path)


# ---- training on a bounded, seeded sample ---------------------------------------------------------------

import json  # noqa: E402
import random  # noqa: E402

from homegpt.data.tokenizer import sample_corpus  # noqa: E402


def _many_docs(tmp_path, n=400):
    rng = random.Random(0)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "über", "ñandú", "東京", "🙂"]
    lines = [json.dumps({"text": " ".join(rng.choice(words) for _ in range(rng.randint(20, 80)))}) for _ in range(n)]
    (tmp_path / "c.jsonl").write_text("\n".join(lines))
    return f"file:{tmp_path}/c.jsonl"


def test_sample_is_bounded_seeded_and_from_the_training_split(tmp_path):
    src = _many_docs(tmp_path)
    by_docs = sample_corpus(src, seed=1, sample_docs=25)
    assert len(by_docs.train) == 25 and by_docs.val
    assert sample_corpus(src, seed=1, sample_docs=25).train == by_docs.train  # same seed, same sample
    assert sample_corpus(src, seed=2, sample_docs=25).train != by_docs.train
    by_bytes = sample_corpus(src, seed=1, sample_bytes=5000)
    sizes = [len(t.encode()) for t in by_bytes.train]
    assert sum(sizes) <= 5000 and sum(sizes) > 5000 - max(sizes) - 1000
    # a bounded scan: 10x the sample, not the whole corpus
    assert by_bytes.scanned_bytes <= 10 * 5000 + max(sizes) and not by_bytes.complete
    held_out = set(sample_corpus(src, seed=1, sample_docs=10**6).val)
    assert held_out and not held_out & set(sample_corpus(src, seed=1, sample_docs=10**6).train)


def test_train_on_a_sample_reports_it(tmp_path):
    src = _many_docs(tmp_path)
    info = train_tokenizer(src, 300, tmp_path / "t", sample_docs=50, seed=3)
    assert info["sample_documents"] == 50 and info["seed"] == 3 and info["bytes_per_token"] > 1
    again = train_tokenizer(src, 300, tmp_path / "t2", sample_docs=50, seed=3)
    assert (tmp_path / "t" / "tokenizer.json").read_bytes() == (tmp_path / "t2" / "tokenizer.json").read_bytes()
    assert again["val_tokens"] == info["val_tokens"]
    with pytest.raises(UserError, match="sample-docs must be positive"):
        train_tokenizer(src, 300, tmp_path / "t3", sample_docs=0)


# ---- the fast encoder gives tokenizers' ids, exactly ------------------------------------------------------


def _unicode_heavy_text(n_chars: int, seed: int = 0) -> list[str]:
    """Documents mixing scripts, emoji (with ZWJ and flags), combining marks, digits, punctuation, contractions
    and every kind of whitespace: what the pre-tokenizer regex and byte-level BPE must agree on."""
    from homegpt.data.fastenc import PROBE_TEXT

    rng = random.Random(seed)
    pools = [
        "the of and to in is was he for it with as his on be at by I you they'll we've she'd it's don't".split(),
        "über straße façade naïve coöperate déjà vu élan Ærø smørrebrød".split(),
        "日本語 の テキスト 東京都 漢字 ひらがな カタカナ 中文 文本 标点 한국어 텍스트".split(),
        "Москва привет мир Ελληνικά γλώσσα العربية النص עברית हिन्दी पाठ ไทย".split(),
        ["🙂", "🚀", "👩‍👩‍👧‍👦", "🇫🇷", "👍🏽", "e\u0301", "a\u0308\u0304", "ﬁ", "½", "²", "Ⅻ", "０１２", "ｆｕｌｌ"],
        ["1", "42", "3.14159", "1,000,000", "2024-01-31", "$5", "#1", "@x", "<|endoftext|>", "--", "...", "?!", "’"],
    ]
    spaces = [" ", " ", " ", "  ", "\n", "\n\n", "\t", " \n", "\u00a0", "\u3000", "\u2009", "\r\n", "   \t "]
    docs, total = [PROBE_TEXT], len(PROBE_TEXT)
    while total < n_chars:
        words = [rng.choice(rng.choice(pools)) + rng.choice(spaces) for _ in range(rng.randint(5, 400))]
        doc = "".join(words)
        docs.append(doc)
        total += len(doc)
    return docs


@pytest.mark.parametrize("vocab", [320, 3000])
def test_tiktoken_encoder_is_identical_to_tokenizers(tmp_path, vocab):
    """On ~1.5 MB of unicode-heavy text, with a tokenizer trained on part of it (multi-byte merges), the fast
    encoder prepare uses gives exactly the ids HF tokenizers gives."""
    import numpy as np

    from homegpt.data.fastenc import Encoder, choose_encoder
    from homegpt.data.sources import Corpus
    from homegpt.data.tokenizer import train_tokenizer_on

    docs = _unicode_heavy_text(1_500_000)
    tok = train_tokenizer_on(Corpus("u", docs[::3], []), vocab)
    path = tmp_path / "tokenizer.json"
    tok.save(str(path))
    assert choose_encoder(path)[0] == "tiktoken"
    enc = Encoder(path, "tiktoken", "uint16", tok.token_to_id(EOT))
    ends = [True] * len(docs)
    fast, counts = enc.encode(docs, ends)
    ref, ref_counts = enc.encode(docs, ends, use_hf=True)
    assert len(fast) > 400_000 and np.array_equal(fast, ref) and np.array_equal(counts, ref_counts)


def _byte_level(pre: dict) -> dict:
    """The ByteLevel step of a pre-tokenizer: itself (GPT-2's) or the last of a Sequence (Qwen2's)."""
    return pre["pretokenizers"][-1] if pre["type"] == "Sequence" else pre


def test_encoder_falls_back_to_tokenizers_when_not_provably_identical(tmp_path, tokenizer_dir):
    from homegpt.data.fastenc import choose_encoder, unconvertible

    spec = json.loads((tokenizer_dir / "tokenizer.json").read_text())
    assert unconvertible(spec) is None and choose_encoder(tokenizer_dir / "tokenizer.json")[0] == "tiktoken"
    variants = {
        "prefix": lambda s: _byte_level(s["pre_tokenizer"]).update(add_prefix_space=True),
        "normalizer": lambda s: s.update(normalizer={"type": "NFC"}),
        "order": lambda s: s["model"]["merges"].reverse(),
    }
    for name, change in variants.items():
        s = json.loads(json.dumps(spec))
        change(s)
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(s))
        kind, why = choose_encoder(path)
        assert kind == "hf" and why.startswith("tiktoken not used"), name
        with pytest.raises(UserError, match="--encoder tiktoken is not possible"):
            choose_encoder(path, "tiktoken")


def test_sample_of_one_huge_file_reads_its_head_only_and_finds_its_tail(tmp_path):
    (tmp_path / "one.txt").write_text("a line of some text, numbered 12345\n" * 150_000)  # 5.4 MB, one document
    s = sample_corpus(f"file:{tmp_path}/one.txt", sample_bytes=100_000)
    assert not s.complete and s.scanned_bytes <= 10 * 100_000 + 2**18
    assert s.val and s.val[0].startswith("a line")  # the held-out tail, reached without reading the head
