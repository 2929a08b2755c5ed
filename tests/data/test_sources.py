import json

import pytest

from homegpt.data.sources import BUILTIN_VAL_BOOKS, load_corpus, split_documents
from homegpt.errors import UserError


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


# ---- every format, streamed -------------------------------------------------------------------------------

import csv  # noqa: E402
import gzip  # noqa: E402

from homegpt.data.formats import EAGER_BYTES, TextFile  # noqa: E402
from homegpt.data.sources import (  # noqa: E402
    cut_pieces,
    iter_assigned,
    iter_documents,
    parse_source,
    source_spec,
    split_tail,
)

DOCS = [
    "Plain English, with 'quotes', \"double quotes\", commas, and a newline\nin the middle.",
    "日本語のテキストと中文文本，한국어 텍스트 — mixed scripts 🙂🚀👩‍👩‍👧‍👦 and e\u0301 combining marks",
    "العربية من اليمين إلى اليسار with numbers 1,234.56 and tabs\tand\ttabs",
    "  leading and trailing whitespace, \r\n windows line end and a lone \r carriage return  ",
    "<|endoftext|> appears literally inside this document<|endoftext|>",
]


def _write_format(tmp_path, fmt: str):
    """DOCS written in one format; returns the source string."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    import zstandard

    jsonl = "".join(json.dumps({"text": d}, ensure_ascii=False) + "\n" for d in DOCS).encode()
    if fmt == "txt-dir":
        for i, d in enumerate(DOCS):
            (tmp_path / f"d{i}.txt").write_bytes(d.encode())
        (tmp_path / "notes.md").write_text("not a data file: skipped in a directory")
        return f"file:{tmp_path}"
    if fmt == "txt-glob":
        for i, d in enumerate(DOCS):
            (tmp_path / f"d{i}.txt.gz").write_bytes(gzip.compress(d.encode()))
        return f"file:{tmp_path}/d?.txt.gz"
    path = tmp_path / {"jsonl": "c.jsonl", "jsonl.gz": "c.jsonl.gz", "jsonl.zst": "c.jsonl.zst",
                       "json-array": "c.json", "json-lines": "c.json", "parquet": "c.parquet", "csv": "c.csv",
                       "csv.zst": "c.csv.zst"}[fmt]
    if fmt in ("jsonl", "json-lines"):
        path.write_bytes(jsonl)
    elif fmt == "jsonl.gz":
        path.write_bytes(gzip.compress(jsonl))
    elif fmt == "jsonl.zst":
        path.write_bytes(zstandard.ZstdCompressor().compress(jsonl))
    elif fmt == "json-array":  # objects and bare strings, pretty-printed across lines
        path.write_text(json.dumps([{"text": d} if i % 2 else d for i, d in enumerate(DOCS)], indent=2))
    elif fmt == "parquet":
        pq.write_table(pa.table({"id": list(range(len(DOCS))), "text": DOCS}), path, row_group_size=2)
    else:
        import io

        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["id", "text"])
        w.writerows([i, d] for i, d in enumerate(DOCS))
        data = buf.getvalue().encode()
        path.write_bytes(zstandard.ZstdCompressor().compress(data) if fmt == "csv.zst" else data)
    return f"file:{path}"


@pytest.mark.parametrize("fmt", ["txt-dir", "txt-glob", "jsonl", "jsonl.gz", "jsonl.zst", "json-array",
                                 "json-lines", "parquet", "csv", "csv.zst"])
def test_every_format_gives_the_documents_back_exactly(tmp_path, fmt):
    docs = list(iter_documents(_write_format(tmp_path, fmt)))
    # .txt files normalise \r\n to \n (as they always did); records keep their text as stored
    expected = [d.replace("\r\n", "\n") for d in DOCS] if fmt.startswith("txt") else DOCS
    assert docs == expected


@pytest.mark.parametrize("builder, fmt", [("parquet", "parquet"), ("json", "jsonl"), ("csv", "csv")])
def test_hf_sources_stream_through_datasets(tmp_path, builder, fmt):
    """The hf: code path (datasets.load_dataset(..., streaming=True)) on local files made here."""
    pytest.importorskip("datasets")
    path = _write_format(tmp_path, fmt)[len("file:"):]
    docs = list(iter_documents(f"hf:{builder}?data_files={path}"))
    assert docs == DOCS


def test_hf_source_options_reach_load_dataset(monkeypatch):
    """The Hub path: name, config, split and revision go to datasets.load_dataset with streaming on and no
    remote code; rows are read from the column asked for."""
    datasets = pytest.importorskip("datasets")

    calls = []

    def fake_load_dataset(path, **kwargs):
        calls.append((path, kwargs))
        return iter([{"story": "once upon a time", "text": "not this column"}, {"story": None}])

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    spec = source_spec("hf:someone/stories", hf_config="small", split="validation", text_column="story",
                       revision="v1.0")
    assert list(iter_documents(spec)) == ["once upon a time", None]
    name, kwargs = calls[0]
    assert name == "someone/stories" and kwargs["streaming"] is True
    assert kwargs["name"] == "small" and kwargs["split"] == "validation" and kwargs["revision"] == "v1.0"
    assert kwargs.get("trust_remote_code", False) is False


def test_count_text_streams_the_same_numbers_as_load_corpus(corpus_dir):
    from homegpt.data.sources import count_text

    c, n = load_corpus(f"file:{corpus_dir}"), count_text(f"file:{corpus_dir}")
    assert (n["train_bytes"], n["val_bytes"]) == (c.nbytes("train"), c.nbytes("val"))
    assert (n["train_documents"], n["val_documents"]) == (len(c.train), len(c.val))


def test_source_strings_round_trip_and_bad_options():
    src = parse_source("hf:HuggingFaceFW/fineweb-edu?config=sample-10BT&split=train")
    assert (src.kind, src.target, src.options) == ("hf", "HuggingFaceFW/fineweb-edu",
                                                   {"config": "sample-10BT", "split": "train"})
    assert parse_source(src.spec) == src
    assert source_spec("hf:a/b", hf_config="c") == "hf:a/b?config=c"
    assert parse_source("file:data/part-?.txt").target == "data/part-?.txt"  # a glob's ? is not options
    assert parse_source("file:data/*.csv?column=body").options == {"column": "body"}
    with pytest.raises(UserError, match="did you mean 'config'"):
        parse_source("hf:a/b?confg=x")
    with pytest.raises(UserError, match="only to hf: sources"):
        source_spec("file:x.txt", split="train")
    with pytest.raises(UserError, match="use builtin, file:PATH or hf:NAME"):
        parse_source("s3://bucket/x")


def test_empty_and_textless_records_are_skipped(tmp_path):
    lines = [{"text": "a real document " * 5}, {"text": "   \n "}, {"text": None}, {"text": ""},
             {"text": "another real one " * 5}]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n\n")
    empties = []
    assigned = list(iter_assigned(f"file:{tmp_path}/c.jsonl", on_empty=lambda: empties.append(1)))
    assert len(empties) == 3
    assert [d for _, d in assigned if d] != [] and all(d.strip() for _, d in assigned)


def test_json_lone_surrogate_becomes_replacement_character(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"text": "half a pair \\ud83d here, a whole one \\ud83d\\ude00"}\n')
    assert list(iter_documents(f"file:{tmp_path}/c.jsonl")) == ["half a pair \ufffd here, a whole one 😀"]


@pytest.mark.parametrize(
    "name, data, message",
    [
        ("bad.jsonl.gz", gzip.compress(b'{"text": "ok"}\n{"text": "caf\xe9"}\n'),
         r"not valid UTF-8 text: bad byte at offset 28 \(in the decompressed text\)"),
        ("bad.jsonl", b'{"text": "ok"}\n{"text": "caf\xe9"}\n', "bad byte at offset 28$"),
        ("trunc.jsonl.gz", gzip.compress(b'{"text": "ok"}\n' * 1000)[:-30], "damaged"),
        ("nocol.csv", b"id,story\n1,hello\n", "has no column named text or content or body"),
        ("nofield.jsonl", b'{"body2": "x"}\n', "has no string field"),
        ("num.jsonl", b'{"text": 5}\n', "field 'text' is int, not text"),
        ("bad.json", b'[{"text": "a"}, {"text": ', "not valid JSON"),
        ("bad.parquet", b"PAR1 not really", "not a readable parquet file"),
    ],
)
def test_bad_files_name_the_file_and_the_place(tmp_path, name, data, message):
    (tmp_path / name).write_bytes(data)
    with pytest.raises(UserError, match=message):
        list(iter_documents(f"file:{tmp_path / name}"))


def test_big_text_file_streams_in_blocks_and_pieces(tmp_path, tokenizer_dir):
    """A text file over EAGER_BYTES is streamed; its pieces join back to the text (\\r\\n normalised across
    block boundaries) and encode to exactly the ids of the whole, because cuts fall where the pre-tokenizer
    splits anyway."""
    from homegpt.data.formats import BLOCK_BYTES
    from homegpt.data.tokenizer import load_tokenizer

    line = "In the beginning, God's   words were\tcounted: 12 345 — naïve 日本語テキスト。次の文\r\n"
    reps = (EAGER_BYTES + BLOCK_BYTES) // len(line.encode()) + 3
    (tmp_path / "big.txt").write_bytes((line * reps).encode())
    (doc,) = iter_documents(f"file:{tmp_path}/big.txt")
    assert isinstance(doc, TextFile)
    text = doc.read()
    assert text == (line * reps).replace("\r\n", "\n") and "\r" not in text
    pieces = list(cut_pieces(doc, piece_chars=50_000))
    assert "".join(p for p, _ in pieces) == text and [last for _, last in pieces][-1] and len(pieces) > 20
    tok = load_tokenizer(tokenizer_dir)
    whole = tok.encode(text[:400_000]).ids
    parts = [i for p, _ in cut_pieces(text[:400_000], piece_chars=30_000) for i in tok.encode(p).ids]
    assert parts == whole


def test_big_text_file_bad_byte_offset_and_tail_split(tmp_path):
    good = ("a line of text\n" * (EAGER_BYTES // 15 + 10)).encode()
    (tmp_path / "bad.txt").write_bytes(good + b"caf\xe9\n")
    with pytest.raises(UserError, match=f"bad byte at offset {len(good) + 3}$"):
        list(iter_documents(f"file:{tmp_path}/bad.txt"))[0].read()
    # one streamed document: its held-out tail is cut exactly where the in-memory rule cuts it
    (tmp_path / "one.txt").write_bytes(good)
    (doc,) = iter_documents(f"file:{tmp_path}/one.txt")
    head, tail = split_tail(doc)
    h2, t2 = split_tail(good.decode())
    assert (head.read(), tail.read()) == (h2, t2) and t2.startswith("a line") and 0.03 < len(t2) / len(good) < 0.08


def test_crlf_split_between_blocks_and_ranges(tmp_path):
    from homegpt.data.formats import BLOCK_BYTES

    data = b"a" * (BLOCK_BYTES - 1) + b"\r\n" + "é".encode() * 10 + b"\r"
    (tmp_path / "x.txt").write_bytes(data)
    assert TextFile(tmp_path / "x.txt").read() == "a" * (BLOCK_BYTES - 1) + "\n" + "é" * 10 + "\r"
    assert TextFile(tmp_path / "x.txt", 0, BLOCK_BYTES).read() == "a" * (BLOCK_BYTES - 1) + "\r"
    assert TextFile(tmp_path / "x.txt", BLOCK_BYTES + 1, len(data) - 1).read() == "é" * 10
