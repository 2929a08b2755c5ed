import pytest

from homegpt.errors import UserError
from homegpt.tokenizer import EOT, load_tokenizer, round_vocab, token_byte_lengths, train_tokenizer

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
