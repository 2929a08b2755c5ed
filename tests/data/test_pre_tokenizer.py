"""How new tokenizers cut text before BPE: Qwen2's way by default (llama.cpp's `qwen2`, Ollama's qwen3
engine), GPT-2's on request; both run as tiktoken with the same ids, and both round-trip exactly."""

import json
import random

import pytest

from homegpt.cli import main
from homegpt.data.fastenc import PROBE_TEXT, Encoder, build_tiktoken, choose_encoder, unconvertible
from homegpt.data.sources import Corpus
from homegpt.data.tokenizer import (
    EOT,
    GPT2_PATTERN,
    PRE_TOKENIZERS,
    QWEN2_PATTERN,
    llama_pre_tokenizer,
    load_tokenizer,
    train_tokenizer,
    train_tokenizer_on,
)
from homegpt.errors import UserError

# Qwen2's tokenizer.json (Qwen/Qwen2-0.5B and the Qwen3 models), its pre_tokenizer as the file spells it.
QWEN2_JSON = {
    "type": "Sequence",
    "pretokenizers": [
        {"type": "Split", "pattern": {"Regex": "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| "
                                               "?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"},
         "behavior": "Isolated", "invert": False},
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
    ],
}
GPT2_JSON = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}

HARD_TEXT = [
    "1234567890 3.14159 1,000,000 2026-12-04 0xDEADBEEF 1e-7 ٣٤٥ ０１２ ½ ² Ⅻ",
    "a  b   c    d\n\n\n\n  \n \t\t\n\r\n\r\n   \u00a0\u3000\u2009x",
    "日本語のテキスト、句読点。中文文本，标点！한국어 텍스트",
    "🙂🚀👩‍👩‍👧‍👦 🇫🇷 👍🏽 e\u0301 a\u0308\u0304",
    "def f(x):\n    return {'a': [1, 2, 3]}  # comment\n\n\tif x != 0:\n\t\tprint(f\"{x!r:>10}\")\n",
    "IT'S WE'LL 'Ve 'ſ don't they'll've \"quoted\" ’curly’",
    "",
    " ",
    "\n",
]


def _docs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pools = ["the of and to in is was for it with as his they'll we've".split(), HARD_TEXT[:6],
             ["0", "7", "42", "2026", "3.14", "x1", "v2.0", "$5", "100%", "#1", "--", "...", "=>", "::"],
             "über straße naïve 東京都 Москва العربية हिन्दी".split()]
    spaces = [" ", " ", "  ", "\n", "\n\n", "\t", " \n", "\r\n", "    ", "\u00a0"]
    return [PROBE_TEXT] + ["".join(rng.choice(rng.choice(pools)) + rng.choice(spaces)
                                   for _ in range(rng.randint(5, 300))) for _ in range(n)]


@pytest.fixture(scope="module")
def tokenizers(tmp_path_factory):
    """One tokenizer of each kind, trained on the same text, saved as tokenizer.json."""
    out = {}
    for name in PRE_TOKENIZERS:
        path = tmp_path_factory.mktemp(name) / "tokenizer.json"
        train_tokenizer_on(Corpus("d", _docs(300)[::2], []), 1500, name).save(str(path))
        out[name] = path
    return out


def test_qwen2_is_the_default_and_gpt2_is_a_keyword(source, tmp_path):
    info = train_tokenizer(source, 400, tmp_path / "q")
    spec = json.loads((tmp_path / "q" / "tokenizer.json").read_text())
    assert info["pre_tokenizer"] == "qwen2" and spec["pre_tokenizer"] == QWEN2_JSON and not spec["normalizer"]
    assert llama_pre_tokenizer(spec) == "qwen2"
    info = train_tokenizer(source, 400, tmp_path / "g", pre_tokenizer="gpt2")
    spec = json.loads((tmp_path / "g" / "tokenizer.json").read_text())
    assert info["pre_tokenizer"] == "gpt2" and spec["pre_tokenizer"] == GPT2_JSON
    assert llama_pre_tokenizer(spec) == "gpt-2"
    with pytest.raises(UserError, match="unknown pre-tokenizer"):
        train_tokenizer(source, 400, tmp_path / "x", pre_tokenizer="llama3")
    assert not (tmp_path / "x").exists()


def test_digits_one_at_a_time(tokenizers):
    tok = load_tokenizer(tokenizers["qwen2"])
    assert [p for p, _ in tok.pre_tokenizer.pre_tokenize_str("in 2026, x42")] == \
        ["in", "Ġ", "2", "0", "2", "6", ",", "Ġx", "4", "2"]
    assert all(len(tok.decode([i])) == 1 for i in tok.encode("1234567890").ids)


def test_cli_flag(source, tmp_path, capsys):
    for flag, want in ((None, "qwen2"), ("gpt2", "gpt-2"), ("qwen2", "qwen2")):
        out = tmp_path / str(flag)
        args = ["tokenizer", "--data", source, "--vocab-size", "300", "--out", str(out), "--json"]
        assert main(args + (["--pre-tokenizer", flag] if flag else [])) == 0
        info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        assert llama_pre_tokenizer(json.loads((out / "tokenizer.json").read_text())) == want
        assert info["pre_tokenizer"] == (flag or "qwen2")
    with pytest.raises(SystemExit):
        main(["tokenizer", "--data", source, "--out", str(tmp_path / "bad"), "--pre-tokenizer", "llama3"])
    capsys.readouterr()


def test_cli_choices_are_the_tokenizer_modules():
    import argparse

    from homegpt.cli.data import register

    parser = argparse.ArgumentParser()
    register(parser.add_subparsers())
    sub = parser._subparsers._group_actions[0].choices["tokenizer"]
    action = next(a for a in sub._actions if a.dest == "pre_tokenizer")
    assert tuple(action.choices) == PRE_TOKENIZERS and action.default == PRE_TOKENIZERS[0]


def _spec(pre, **extra):
    return {"normalizer": None, "pre_tokenizer": pre, **extra}


def test_llama_pre_tokenizer_names_only_the_two_exact_pipelines():
    assert llama_pre_tokenizer(_spec(QWEN2_JSON)) == "qwen2"
    assert llama_pre_tokenizer(_spec(GPT2_JSON)) == "gpt-2"
    old = {k: v for k, v in GPT2_JSON.items() if k != "use_regex"}  # tokenizers reads it as use_regex=True
    assert llama_pre_tokenizer(_spec(old)) == "gpt-2"

    def qwen(change):
        pre = json.loads(json.dumps(QWEN2_JSON))
        change(pre)
        return _spec(pre)

    others = {
        "normalizer": {"normalizer": {"type": "NFC"}, "pre_tokenizer": QWEN2_JSON},
        "gpt2 normalizer": {"normalizer": {"type": "NFC"}, "pre_tokenizer": GPT2_JSON},
        "no pre-tokenizer": _spec(None),
        "nothing": {},
        "prefix space": _spec(dict(GPT2_JSON, add_prefix_space=True)),
        "byte level without regex": _spec(dict(GPT2_JSON, use_regex=False)),
        "whitespace": _spec({"type": "Whitespace"}),
        "other pattern": qwen(lambda p: p["pretokenizers"][0].update(pattern={"Regex": GPT2_PATTERN})),
        "string pattern": qwen(lambda p: p["pretokenizers"][0].update(pattern={"String": QWEN2_PATTERN})),
        "removed": qwen(lambda p: p["pretokenizers"][0].update(behavior="Removed")),
        "inverted": qwen(lambda p: p["pretokenizers"][0].update(invert=True)),
        "regex twice": qwen(lambda p: p["pretokenizers"][1].update(use_regex=True)),
        "qwen prefix": qwen(lambda p: p["pretokenizers"][1].update(add_prefix_space=True)),
        "three steps": qwen(lambda p: p["pretokenizers"].append({"type": "Digits", "individual_digits": True})),
        "one step": qwen(lambda p: p["pretokenizers"].pop()),
        "gpt2 in a sequence": _spec({"type": "Sequence", "pretokenizers": [GPT2_JSON]}),
    }
    for name, spec in others.items():
        assert llama_pre_tokenizer(spec) is None, name


def test_round_trip_on_hard_text(tokenizers):
    for name, path in tokenizers.items():
        tok = load_tokenizer(path)
        for text in HARD_TEXT + [PROBE_TEXT, "".join(HARD_TEXT)]:
            assert tok.decode(tok.encode(text).ids, skip_special_tokens=False) == text, (name, text)


@pytest.mark.parametrize("name", PRE_TOKENIZERS)
def test_tiktoken_gives_the_same_ids(tokenizers, name):
    path = tokenizers[name]
    spec = json.loads(path.read_text())
    assert unconvertible(spec) is None
    assert choose_encoder(path) == ("tiktoken", "identical ids to tokenizers (every token checked, probe text checked)")
    tok = load_tokenizer(path)
    tt = build_tiktoken(spec, tok.token_to_id(EOT))
    assert tt._pat_str == (QWEN2_PATTERN if name == "qwen2" else GPT2_PATTERN)
    assert tt.encode(PROBE_TEXT, allowed_special="all") == tok.encode(PROBE_TEXT).ids
    texts = _docs(400, seed=1) + HARD_TEXT
    rng = random.Random(2)  # and random code points, from the tricky ranges and anywhere
    ranges = [(0, 0x80), (0x80, 0x250), (0x2000, 0x2070), (0x3000, 0x3040), (0x4E00, 0x4E80), (0x1F300, 0x1F700),
              (0, 0xD800), (0xE000, 0x30000)]
    texts += ["".join(chr(rng.randrange(*rng.choice(ranges))) for _ in range(rng.randint(1, 80))) for _ in range(2000)]
    for text in texts:
        assert tt.encode(text, allowed_special="all") == tok.encode(text).ids, text
    enc = Encoder(path, "tiktoken", "uint16", tok.token_to_id(EOT))
    assert enc.tt is not None and enc.encode(texts, [True] * len(texts))[0].tolist() == \
        enc.encode(texts, [True] * len(texts), use_hf=True)[0].tolist()


def test_qwen2_digits_are_tokens_of_their_own_in_tiktoken_too(tokenizers):
    tok = load_tokenizer(tokenizers["qwen2"])
    tt = build_tiktoken(json.loads(tokenizers["qwen2"].read_text()), tok.token_to_id(EOT))
    ids = tt.encode("x 1234567890")
    assert [tt.decode([i]) for i in ids][-10:] == list("1234567890")


def test_prepare_picks_tiktoken_for_a_new_tokenizer(data_dir, tokenizer_dir):
    """The session's tokenizer (trained with the default) is prepared with tiktoken, as the manifest says."""
    from homegpt.data.shards import read_manifest

    assert llama_pre_tokenizer(json.loads((tokenizer_dir / "tokenizer.json").read_text())) == "qwen2"
    assert read_manifest(data_dir)["encoder"] == "tiktoken"


def test_an_edited_qwen2_pipeline_falls_back_to_tokenizers(tokenizers, tmp_path):
    spec = json.loads(tokenizers["qwen2"].read_text())
    spec["pre_tokenizer"]["pretokenizers"][0]["pattern"]["Regex"] = QWEN2_PATTERN.replace(r"\p{N}|", r"\p{N}+|")
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec))
    kind, why = choose_encoder(path)
    assert kind == "hf" and "neither Qwen2's" in why and llama_pre_tokenizer(spec) is None
    with pytest.raises(ValueError, match="neither Qwen2's"):
        build_tiktoken(spec, 0)


def test_long_documents_cut_where_both_regexes_split(tokenizers):
    """prepare encodes a long document in pieces (sources.cut_pieces): the pieces' ids are the whole's with
    either pre-tokenizer, on text where the only places to cut are the tricky ones."""
    from homegpt.data.sources import cut_pieces

    texts = ["end.\n" * 4000, "日本語のテキスト。次の文" * 2000, "x = f(a, b);\n" * 2000, "abc\u0301\n" * 4000,
             "a.\n\n  b\n" * 2000, "。。次" * 3000, "x\n \n" * 3000, "文。" * 4000, "a\n\nb" * 3000, "9\n\n" * 3000]
    rng = random.Random(3)
    atoms = ["a", "word", "1", "42", ".", ";", "。", "次", "é", "\u0301", " ", "  ", "\n", "\n\n", "\t", " \n",
             "\r\n", "\u3000", "'s", "(", "🙂"]
    texts += ["".join(rng.choice(atoms[: rng.randint(3, len(atoms))]) for _ in range(6000)) for _ in range(12)]
    for name, path in tokenizers.items():
        tok = load_tokenizer(path)
        for text in texts:
            for piece_chars in (300, 1000):
                pieces = [p for p, _ in cut_pieces(text, piece_chars=piece_chars)]
                assert "".join(pieces) == text and len(pieces) > 2
                assert [i for p in pieces for i in tok.encode(p).ids] == tok.encode(text).ids, (name, text[:20])
