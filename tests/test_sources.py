import json

import pytest

from homegpt.errors import UserError
from homegpt.sources import BUILTIN_VAL_BOOKS, load_corpus, split_documents


def test_builtin_corpus_is_clean_and_holds_out_whole_books():
    c = load_corpus("builtin")
    assert 3_500_000 < c.nbytes("train") < 4_500_000
    assert 0.03 < c.nbytes("val") / (c.nbytes("train") + c.nbytes("val")) < 0.08
    assert all("`" not in d for d in c.train + c.val)  # backticks were apostrophes
    assert any("God's" in d for d in c.train)
    # whole books: Ruth's first chapter is held out and appears nowhere in training
    ruth = next(d for d in c.val if d.startswith("It happened in the days when the judges judged"))
    assert all(ruth[:80] not in d for d in c.train)
    assert len(BUILTIN_VAL_BOOKS) == 5


def test_file_sources_txt_jsonl_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    (tmp_path / "a.txt").write_text("héllo wörld\n" * 50, encoding="utf-8")
    (tmp_path / "b.jsonl").write_text("\n".join(json.dumps({"text": f"doc {i} 日本"}) for i in range(30)))
    pq.write_table(pa.table({"text": [f"row {i} 🙂" for i in range(30)]}), tmp_path / "c.parquet")
    c = load_corpus(f"file:{tmp_path}")
    docs = c.train + c.val
    assert len(docs) == 61 and any("🙂" in d for d in docs) and any("日本" in d for d in docs)
    assert c.val and c.train
    glob = load_corpus(f"file:{tmp_path}/*.jsonl")
    assert len(glob.train + glob.val) == 30


def test_single_file_holds_out_its_contiguous_tail(tmp_path):
    lines = [f"line {i} of the only document" for i in range(400)]
    (tmp_path / "one.txt").write_text("\n".join(lines), encoding="utf-8")
    c = load_corpus(f"file:{tmp_path}/one.txt")
    assert c.train[0] + c.val[0] == "\n".join(lines)
    assert c.val[0].startswith("line ") and 0.03 < len(c.val[0]) / len("\n".join(lines)) < 0.08


def test_document_split_is_seeded_and_disjoint():
    docs = [f"document number {i} " * 20 for i in range(100)]
    t1, v1 = split_documents(docs, 0)
    t2, v2 = split_documents(docs, 0)
    assert (t1, v1) == (t2, v2) and not set(t1) & set(v1) and len(t1) + len(v1) == 100


@pytest.mark.parametrize(
    "setup, source, message",
    [
        (None, "file:/nonexistent/x.txt", "does not exist"),
        ("empty", "file:{d}/e.txt", "empty"),
        ("binary", "file:{d}/b.txt", "binary"),
        ("latin1", "file:{d}/l.txt", "not valid UTF-8 text: bad byte at offset 6"),
        ("badjson", "file:{d}/j.jsonl", "not a JSON object"),
        (None, "nope", "unknown source"),
    ],
)
def test_bad_sources(tmp_path, setup, source, message):
    if setup == "empty":
        (tmp_path / "e.txt").write_text("   \n")
    elif setup == "binary":
        (tmp_path / "b.txt").write_bytes(b"\x00\x01\x02binary")
    elif setup == "latin1":
        (tmp_path / "l.txt").write_bytes("caf\u00e9 ok \u00e9".encode("utf-8")[:6] + b"\xe9 rest")
    elif setup == "badjson":
        (tmp_path / "j.jsonl").write_text('{"text": "ok"}\nnot json\n')
    with pytest.raises(UserError, match=message):
        load_corpus(source.format(d=tmp_path))
