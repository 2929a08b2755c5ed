"""Reading documents out of files and Hugging Face datasets, streaming, with bounded memory.

    .txt (or any other suffix)   one document per file; files over EAGER_BYTES are streamed (TextFile)
    .jsonl / .json               one JSON object per line with a text field; a .json file may instead hold
                                 one JSON array of objects or strings, parsed element by element
    .parquet                     a text column, read a batch of rows at a time
    .csv                         a text column named in the header row
    any of them + .gz / .zst     decompressed on the fly

Bad bytes are reported with the file and the byte offset (in the decompressed stream for .gz / .zst),
never replaced silently: a wrong encoding is something to fix, not to train on.
"""

from __future__ import annotations

import codecs
import csv
import glob as globlib
import gzip
import inspect
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from homegpt.errors import UserError

TEXT_FIELDS = ("text", "content", "body")
DATA_SUFFIXES = (".txt", ".jsonl", ".json", ".parquet", ".csv")
COMPRESSED = (".gz", ".zst")
EAGER_BYTES = 1 << 20  # text files up to 1 MiB are read whole; bigger ones are streamed
BLOCK_BYTES = 1 << 20  # read size when streaming
BINARY_PROBE = 65536  # a NUL byte in the first 64 KiB means the file is not text
PARQUET_BATCH_ROWS = 256


class Progress:
    """Raw input bytes consumed so far (compressed bytes for .gz / .zst), for a progress bar with an ETA."""

    def __init__(self, total: int | None = None) -> None:
        self.total, self.done, self._base = total, 0, 0

    @property
    def base(self) -> int:
        return self._base

    def start_file(self, base: int) -> None:
        self._base = base

    def at(self, pos: int) -> None:
        self.done = self._base + pos


def expand(spec: str) -> list[Path]:
    """The files a file: source names, sorted, so the corpus order never depends on the filesystem."""
    p = Path(spec).expanduser()
    if any(ch in spec for ch in "*?["):
        paths = [Path(x) for x in sorted(globlib.glob(str(p), recursive=True))]
    elif p.is_dir():
        paths = sorted(x for x in p.rglob("*") if x.is_file() and _is_data_file(x) and not _hidden(x, p))
    elif p.exists():
        paths = [p]
    else:
        raise UserError(f"file {spec} does not exist")
    paths = [x for x in paths if x.is_file()]
    if not paths:
        raise UserError(f"no {', '.join(DATA_SUFFIXES)} files (or .gz / .zst of them) found at {spec}")
    return paths


def _hidden(path: Path, root: Path) -> bool:
    return any(part.startswith(".") for part in path.relative_to(root).parts)


def _is_data_file(path: Path) -> bool:
    """In a directory only files with a known suffix count: a.txt, b.jsonl.gz, but not notes.md or x.gz."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in COMPRESSED:
        suffixes.pop()
    return bool(suffixes) and suffixes[-1] in DATA_SUFFIXES


def kind_of(path: Path) -> tuple[str, str | None]:
    """(format, compression): 'a.jsonl.gz' -> ('jsonl', 'gz'); unknown suffixes read as text."""
    suffixes = [s.lower() for s in path.suffixes]
    compression = None
    if suffixes and suffixes[-1] in COMPRESSED:
        compression = suffixes.pop()[1:]
    fmt = suffixes[-1][1:] if suffixes and suffixes[-1] in DATA_SUFFIXES else "txt"
    return fmt, compression


def open_binary(path: Path) -> tuple[BinaryIO, BinaryIO]:
    """(decompressed stream, raw file): the raw file's position measures progress."""
    raw = open(path, "rb")  # noqa: SIM115 -- closed by the caller, with the stream
    compression = kind_of(path)[1]
    if compression == "gz":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw
    if compression == "zst":
        try:
            import zstandard
        except ImportError:
            raw.close()
            raise UserError(f"reading {path} needs the zstandard package: pip install zstandard") from None
        return zstandard.ZstdDecompressor().stream_reader(raw, read_size=BLOCK_BYTES), raw
    return raw, raw


def _bad_bytes(path: Path, offset: int) -> UserError:
    where = " (in the decompressed text)" if kind_of(path)[1] else ""
    return UserError(f"{path} is not valid UTF-8 text: bad byte at offset {offset}{where}")


def _check_not_binary(path: Path, head: bytes) -> None:
    if b"\x00" in head[:BINARY_PROBE]:
        raise UserError(f"{path} looks binary (it contains NUL bytes), not text")


def read_stream(stream: BinaryIO, path: Path, n: int) -> bytes:
    try:
        return stream.read(n)
    except Exception as e:  # gzip raises OSError / EOFError, zstandard its own ZstdError
        raise UserError(f"{path} is damaged: {e}") from None


def decode(data: bytes, path: Path, offset: int = 0) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise _bad_bytes(path, offset + e.start) from None


# ---- plain text ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TextFile:
    """A text file too big to hold in memory, or a byte range of one: read block by block when needed.

    Offsets are in the decompressed byte stream, before "\\r\\n" becomes "\\n".
    """

    path: Path
    start: int = 0
    end: int | None = None
    progress: Progress | None = field(default=None, compare=False, repr=False)
    base: int = field(default=0, compare=False, repr=False)

    def size(self) -> int:
        end = self.end if self.end is not None else _stream_size(self.path)
        return end - self.start

    def blocks(self) -> Iterator[str]:
        """Decoded text in blocks of about BLOCK_BYTES, with "\\r\\n" turned into "\\n"."""
        stream, raw = open_binary(self.path)
        with stream, raw:
            pos = _skip(stream, self.path, self.start)
            decoder = codecs.getincrementaldecoder("utf-8")("strict")
            carry = ""  # a "\r" ending a block may be the first half of a "\r\n"
            while True:
                want = BLOCK_BYTES if self.end is None else min(BLOCK_BYTES, self.end - pos)
                data = read_stream(stream, self.path, want) if want > 0 else b""
                if pos == 0:
                    _check_not_binary(self.path, data)
                pending = len(decoder.getstate()[0])
                try:
                    text = carry + decoder.decode(data, final=not data)
                except UnicodeDecodeError as e:
                    raise _bad_bytes(self.path, pos - pending + e.start) from None
                pos += len(data)
                if self.progress is not None:
                    self.progress.done = self.base + raw.tell()
                carry = "\r" if data and text.endswith("\r") else ""
                text = text[:-1] if carry else text
                if text:
                    yield text.replace("\r\n", "\n")
                if not data:
                    return

    def read(self) -> str:
        return "".join(self.blocks())

    def window(self, lo: int, hi: int) -> bytes:
        """Raw bytes [lo, hi) of the decompressed stream (relative to the whole file)."""
        stream, raw = open_binary(self.path)
        with stream, raw:
            _skip(stream, self.path, lo)
            return read_stream(stream, self.path, hi - lo)


def _skip(stream: BinaryIO, path: Path, n: int) -> int:
    if n and stream.seekable() and not kind_of(path)[1]:
        stream.seek(n)
        return n
    done = 0
    while done < n:
        data = read_stream(stream, path, min(BLOCK_BYTES, n - done))
        if not data:
            break
        done += len(data)
    return done


def _stream_size(path: Path) -> int:
    if not kind_of(path)[1]:
        return path.stat().st_size
    stream, raw = open_binary(path)
    with stream, raw:
        return _skip(stream, path, 1 << 62)


def text_document(path: Path, progress: Progress | None = None, base: int = 0) -> str | TextFile:
    """A small text file as a string (read whole), a big one as a TextFile (streamed later)."""
    stream, raw = open_binary(path)
    with stream, raw:
        data = read_stream(stream, path, EAGER_BYTES + 1)
    if len(data) > EAGER_BYTES:
        return TextFile(path, progress=progress, base=base)
    _check_not_binary(path, data)
    return decode(data, path).replace("\r\n", "\n")


# ---- records: JSON Lines, JSON arrays, CSV, parquet ---------------------------------------------------


def _record_text(record, where: str, column: str | None) -> str | None:
    """The document in one record: a string, or the text field of an object (None: no text, skipped)."""
    if isinstance(record, str):
        return _no_lone_surrogates(record)
    if isinstance(record, dict):
        keys = (column,) if column else TEXT_FIELDS
        for key in keys:
            if key in record:
                value = record[key]
                if value is None or isinstance(value, str):
                    return _no_lone_surrogates(value)
                raise UserError(f"{where}: field {key!r} is {type(value).__name__}, not text")
    wanted = repr(column) if column else " or ".join(TEXT_FIELDS)
    raise UserError(f"{where} has no string field named {wanted}: name the text field with --text-column")


def _no_lone_surrogates(text: str | None) -> str | None:
    """JSON may escape half a surrogate pair ("\\ud800"), which no UTF-8 text can hold: it becomes U+FFFD."""
    if text is None or text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def text_lines(path: Path, progress: Progress | None) -> Iterator[tuple[int, str]]:
    """(line number, decoded line) of a text file, with exact byte offsets in encoding errors."""
    stream, raw = open_binary(path)
    with stream, raw:
        reader = io.BufferedReader(stream, BLOCK_BYTES) if not isinstance(stream, io.BufferedReader) else stream
        offset = 0
        for lineno, line in enumerate(_safe_iter(reader, path), 1):
            if lineno == 1:
                _check_not_binary(path, line)
            text = decode(line, path, offset)
            offset += len(line)
            if progress is not None and lineno % 1024 == 0:
                progress.at(raw.tell())
            yield lineno, text


def _safe_iter(reader, path: Path) -> Iterator[bytes]:
    while True:
        try:
            line = reader.readline()
        except Exception as e:  # gzip raises OSError / EOFError, zstandard its own ZstdError
            raise UserError(f"{path} is damaged: {e}") from None
        if not line:
            return
        yield line


def jsonl_records(path: Path, progress: Progress | None = None,
                  problem: str = "is not a JSON object (JSON Lines needs one per line)",
                  ) -> Iterator[tuple[int, object]]:
    """(line number, parsed value) of each non-blank line of a JSON Lines file; a line that does not parse is
    a UserError "{path}:{line} {problem}"."""
    for lineno, line in text_lines(path, progress):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            raise UserError(f"{path}:{lineno} {problem}") from None
        yield lineno, record


def jsonl_documents(path: Path, column: str | None, progress: Progress | None = None) -> Iterator[str | None]:
    for lineno, record in jsonl_records(path, progress):
        yield _record_text(record, f"{path}:{lineno}", column)


def json_documents(path: Path, column: str | None, progress: Progress | None = None) -> Iterator[str | None]:
    """A .json file: one JSON array (streamed element by element) or JSON Lines."""
    stream, raw = open_binary(path)
    with stream, raw:
        head = read_stream(stream, path, 4096).lstrip()
    if not head.startswith(b"["):
        yield from jsonl_documents(path, column, progress)
        return
    yield from _json_array(path, column, progress)


def _json_array(path: Path, column: str | None, progress: Progress | None) -> Iterator[str | None]:
    decoder = json.JSONDecoder()
    text_blocks = TextFile(path, progress=progress, base=progress.base if progress else 0).blocks()
    buf, pos, index, eof = "", 0, 0, False

    def more() -> bool:
        nonlocal buf, pos, eof
        block = next(text_blocks, None)
        if block is None:
            eof = True
            return False
        buf, pos = buf[pos:] + block, 0
        return True

    more()
    pos = buf.index("[") + 1
    while True:
        while True:  # skip whitespace and the comma between elements
            while pos < len(buf) and buf[pos] in " \t\r\n,":
                pos += 1
            if pos < len(buf) or not more():
                break
        if pos >= len(buf):
            raise UserError(f"{path} is not valid JSON: the array is not closed with ]")
        if buf[pos] == "]":
            return
        try:
            record, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError:
            if more():
                continue
            raise UserError(f"{path} is not valid JSON near element {index}") from None
        if end == len(buf) and not eof and more():  # a number or literal may continue in the next block
            continue
        pos = end
        yield _record_text(record, f"{path} element {index}", column)
        index += 1


def csv_documents(path: Path, column: str | None, progress: Progress | None = None) -> Iterator[str | None]:
    csv.field_size_limit(2**31 - 1)  # documents are long; the default 128 KiB limit is for small fields
    lines = (line for _, line in text_lines(path, progress))
    reader = csv.reader(lines)
    header = next(reader, None)
    if header is None:
        return
    header = [h.lstrip("\ufeff") for h in header]
    names = (column,) if column else TEXT_FIELDS
    index = next((header.index(n) for n in names if n in header), None)
    if index is None:
        wanted = repr(column) if column else " or ".join(TEXT_FIELDS)
        raise UserError(f"{path} has no column named {wanted} (columns: {', '.join(header)}): use --text-column")
    try:
        for row in reader:
            yield row[index] if index < len(row) else None
    except csv.Error as e:
        raise UserError(f"{path} line {reader.line_num} is not valid CSV: {e}") from None


def parquet_documents(path: Path, column: str | None, progress: Progress | None = None) -> Iterator[str | None]:
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError("reading .parquet needs pyarrow: pip install pyarrow") from None
    try:
        pf = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise UserError(f"{path} is not a readable parquet file: {e}") from None
    names = pf.schema_arrow.names
    col = pick_column(names, column, str(path))
    if not (pa.types.is_string(pf.schema_arrow.field(col).type) or pa.types.is_large_string(
            pf.schema_arrow.field(col).type)):
        raise UserError(f"{path}: column {col!r} is {pf.schema_arrow.field(col).type}, not text")
    done = 0
    try:
        for group in range(pf.num_row_groups):
            for batch in pf.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=[group], columns=[col]):
                yield from batch.column(0).to_pylist()
            done += pf.metadata.row_group(group).total_byte_size
            if progress is not None:
                progress.at(min(done, path.stat().st_size))
    except OSError as e:
        raise UserError(f"{path} is not a readable parquet file: {e}") from None


def pick_column(names: list[str], column: str | None, where: str) -> str:
    if column:
        if column not in names:
            raise UserError(f"{where} has no column {column!r} (columns: {', '.join(names)})")
        return column
    for name in TEXT_FIELDS:
        if name in names:
            return name
    raise UserError(f"{where} has no column named {' or '.join(TEXT_FIELDS)} (columns: {', '.join(names)}): "
                    f"name it with --text-column")


READERS = {"jsonl": jsonl_documents, "json": json_documents, "csv": csv_documents, "parquet": parquet_documents}


def file_documents(paths: list[Path], column: str | None, progress: Progress | None = None
                   ) -> Iterator[str | TextFile | None]:
    """Every document of every file, in order; None for a record with no text (counted as empty)."""
    base = 0
    for path in paths:
        if progress is not None:
            progress.start_file(base)
        fmt = kind_of(path)[0]
        if fmt == "txt":
            yield text_document(path, progress, base)
        else:
            if fmt == "parquet" and kind_of(path)[1]:
                raise UserError(f"{path}: compressed parquet files are not supported (parquet compresses itself)")
            yield from READERS[fmt](path, column, progress)
        base += path.stat().st_size
        if progress is not None:
            progress.done = base


# ---- Hugging Face datasets ------------------------------------------------------------------------------


def hf_documents(name: str, config: str | None = None, split: str | None = None, column: str | None = None,
                 revision: str | None = None, data_files: str | None = None) -> Iterator[str | None]:
    """Rows of a Hugging Face dataset, streamed (nothing is downloaded whole), never running remote code."""
    where = f"hf:{name}"
    ds = open_hf(name, config, split, revision, data_files)
    features = getattr(ds, "features", None)
    col = pick_column(list(features), column, where) if features else None
    for n, row in enumerate(hf_rows(ds, where), 1):
        if col is None:
            col = pick_column(list(row), column, where)
        yield _record_text(row, f"{where} row {n}", col)


def open_hf(name: str, config: str | None = None, split: str | None = None, revision: str | None = None,
            data_files: str | None = None):
    """A Hugging Face dataset opened for streaming (nothing is downloaded whole), never running remote code."""
    try:
        import datasets
    except ImportError:
        raise UserError("hf: sources need the datasets package: pip install datasets") from None
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
    try:  # its retry warnings would break the one-line error rule
        import huggingface_hub.utils.logging as hub_logging

        hub_logging.set_verbosity_error()
    except ImportError:
        pass
    kwargs: dict = {"split": split or "train", "streaming": True}
    if config:
        kwargs["name"] = config
    if revision:
        kwargs["revision"] = revision
    if data_files:
        kwargs["data_files"] = data_files.split(",") if "," in data_files else data_files
    if "trust_remote_code" in inspect.signature(datasets.load_dataset).parameters:
        kwargs["trust_remote_code"] = False  # older `datasets`: refuse dataset scripts explicitly
    where = f"hf:{name}"
    try:
        return datasets.load_dataset(name, **kwargs)
    except Exception as e:  # the Hub, fsspec and the builders raise many unrelated types
        raise UserError(f"could not open {where}: {_first_line(e)}") from None


def hf_rows(ds, where: str) -> Iterator[dict]:
    """An opened dataset's rows as dicts; a failure mid-stream is one line."""
    rows = iter(ds)
    n = 0
    while True:
        try:
            row = next(rows)
        except StopIteration:
            return
        except Exception as e:  # a dropped connection or a damaged file mid-stream
            raise UserError(f"reading {where} failed after {n:,} rows: {_first_line(e)}") from None
        n += 1
        yield row


def _first_line(e: Exception) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__
