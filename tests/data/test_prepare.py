import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from homegpt.cli import main
from homegpt.data.prepare import prepare, token_dtype
from homegpt.data.shards import open_split, read_manifest, verify
from homegpt.data.sources import load_corpus
from homegpt.data.tokenizer import EOT, load_tokenizer
from homegpt.data.writer import STATE_FILE, OrderedWriter
from homegpt.errors import UserError


def test_shards_are_packed_documents_with_eot(source, data_dir):
    manifest = read_manifest(data_dir)
    tok = load_tokenizer(data_dir)
    corpus = load_corpus(source)
    assert manifest["dtype"] == "uint16"
    for split in ("train", "val"):
        tokens = open_split(data_dir, split)
        arr = np.asarray(tokens)
        info = manifest["splits"][split]
        assert tokens.dtype == np.uint16 and len(tokens) == info["tokens"] == len(arr)
        assert info["documents"] == len(getattr(corpus, split))
        assert info["bytes"] == corpus.nbytes(split)
        eot = tok.token_to_id(EOT)
        assert int((arr == eot).sum()) == info["documents"] and tokens[-1] == eot
        # no padding: decoding the shard gives the documents back, joined by end-of-text
        text = tok.decode(arr.tolist(), skip_special_tokens=False)
        assert text == EOT.join(getattr(corpus, split)) + EOT


def test_token_dtype_by_vocab():
    assert token_dtype(50304) == np.uint16 and token_dtype(65536) == np.uint16
    assert token_dtype(65600) == np.uint32


def test_refuses_to_overwrite_and_detects_truncation(source, tokenizer_dir, tmp_path):
    prepare(source, tokenizer_dir, tmp_path)
    with pytest.raises(UserError, match="already holds prepared data"):
        prepare(source, tokenizer_dir, tmp_path)
    shard = tmp_path / "train-00000.bin"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(UserError, match="truncated"):
        open_split(tmp_path, "train")


def test_manifest_must_match_tokenizer(source, tokenizer_dir, tmp_path):
    prepare(source, tokenizer_dir, tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    m["tokenizer_sha256"] = "0" * 64
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    with pytest.raises(UserError, match="does not match"):
        read_manifest(tmp_path)


def test_fixed_size_shards_read_as_one_sequence(source, tokenizer_dir, tmp_path):
    m = prepare(source, tokenizer_dir, tmp_path, shard_tokens=1024)
    shards = m["splits"]["train"]["shards"]
    assert len(shards) > 5 and all(s["tokens"] == 1024 for s in shards[:-1]) and 0 < shards[-1]["tokens"] <= 1024
    tokens = open_split(tmp_path, "train")
    whole = np.concatenate([np.fromfile(tmp_path / s["file"], dtype=np.uint16) for s in shards])
    assert np.array_equal(np.asarray(tokens), whole) and len(tokens) == len(whole) == m["splits"]["train"]["tokens"]
    for a, b in [(0, 10), (1000, 1100), (1023, 1025), (2040, 5000), (len(whole) - 5, len(whole) + 9), (7, 7)]:
        assert np.array_equal(tokens[a:b], whole[a:b])
    assert tokens[-1] == whole[-1] and tokens[1024] == whole[1024] and np.array_equal(tokens[::7], whole[::7])
    with pytest.raises(IndexError):
        tokens[len(whole)]


def test_corrupted_shard_is_detected_by_size_and_checksum(source, tokenizer_dir, tmp_path, capsys):
    prepare(source, tokenizer_dir, tmp_path, shard_tokens=2048)
    assert verify(tmp_path)["shards"] > 2
    code = main(["prepare", "--verify", "--out", str(tmp_path)])
    assert code == 0 and "match the manifest" in capsys.readouterr().out
    shard = tmp_path / "train-00001.bin"
    data = bytearray(shard.read_bytes())
    data[100] ^= 0xFF  # same size, one byte flipped: only the checksum can tell
    shard.write_bytes(bytes(data))
    open_split(tmp_path, "train")  # sizes are fine
    with pytest.raises(UserError, match="train-00001.bin is corrupted"):
        open_split(tmp_path, "train", verify=True)
    code = main(["prepare", "--verify", "--out", str(tmp_path)])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "corrupted" in err
    shard.write_bytes(bytes(data[:-2]))
    with pytest.raises(UserError, match="truncated or damaged"):
        open_split(tmp_path, "train")
    shard.unlink()
    with pytest.raises(UserError, match="missing"):
        verify(tmp_path)


def _docs_source(tmp_path, docs):
    (tmp_path / "c.jsonl").write_text("".join(json.dumps({"text": d}) + "\n" for d in docs))
    return f"file:{tmp_path}/c.jsonl"


def test_dedup_drops_exact_duplicates_keeping_the_first(tokenizer_dir, tmp_path):
    unique = [f"document {i}: " + "words of its own " * (i % 7 + 1) for i in range(60)]
    docs = unique[:30] + unique[:10] + unique[30:] + [unique[5]] * 3
    src = _docs_source(tmp_path, docs)
    m = prepare(src, tokenizer_dir, tmp_path / "d", dedup=True, shard_tokens=1024)
    assert m["duplicates_removed"] == 13 and m["dedup"]
    assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] == 60
    tok = load_tokenizer(tokenizer_dir)
    text = "".join(tok.decode(np.asarray(open_split(tmp_path / "d", s)).tolist(), skip_special_tokens=False)
                   for s in ("train", "val"))
    assert sorted(t for t in text.split(EOT) if t) == sorted(unique)
    plain = prepare(src, tokenizer_dir, tmp_path / "p")
    assert plain["duplicates_removed"] == 0
    assert plain["splits"]["train"]["documents"] + plain["splits"]["val"]["documents"] == len(docs)


def test_max_tokens_stops_after_a_whole_document(source, tokenizer_dir, tmp_path):
    full = prepare(source, tokenizer_dir, tmp_path / "full")
    m = prepare(source, tokenizer_dir, tmp_path / "part", max_tokens=5000, shard_tokens=1024)
    train = np.asarray(open_split(tmp_path / "part", "train"))
    assert m["stopped_at_max_tokens"] and 5000 <= len(train) < full["splits"]["train"]["tokens"]
    eot = load_tokenizer(tokenizer_dir).token_to_id(EOT)
    assert train[-1] == eot and int((train == eot).sum()) == m["splits"]["train"]["documents"]
    whole = np.asarray(open_split(tmp_path / "full", "train"))
    assert np.array_equal(train, whole[: len(train)])  # the same documents, in order, then a clean stop
    assert (train[:-1] == eot).sum() == m["splits"]["train"]["documents"] - 1


@pytest.mark.parametrize("max_tokens", [None, 30_000])
def test_one_and_two_workers_write_identical_bytes(tokenizer_dir, tmp_path, monkeypatch, max_tokens):
    """Different worker counts and chunkings, with duplicates, empty documents and a stop at max_tokens in
    the middle of a chunk: the same bytes, manifest included."""
    corpus = load_corpus("builtin").train[:60]
    docs = corpus + ["   ", corpus[3]] + corpus[:20] + [""] * 3 + corpus[40:]
    src = _docs_source(tmp_path, docs)
    outs = []
    for workers, chunk_chars in ((1, 30_000), (2, 7_000)):
        monkeypatch.setattr("homegpt.data.prepare.MAX_CHUNK_CHARS", chunk_chars)
        out = tmp_path / f"w{workers}"
        prepare(src, tokenizer_dir, out, workers=workers, shard_tokens=4096, dedup=True, max_tokens=max_tokens)
        outs.append({p.name: p.read_bytes() for p in sorted(out.iterdir())})
    assert outs[0] == outs[1] and len(outs[0]) > 5
    m = json.loads(outs[0]["manifest.json"])
    if max_tokens is None:
        assert m["empty_documents"] == 4 and m["duplicates_removed"] == 41 and not m["stopped_at_max_tokens"]
    else:
        assert m["stopped_at_max_tokens"] and m["splits"]["train"]["tokens"] >= max_tokens


@pytest.mark.parametrize("max_tokens", [None, 40_000])
def test_interrupted_prepare_resumes_and_refuses_other_settings(source, tokenizer_dir, tmp_path, monkeypatch,
                                                                max_tokens):
    settings = dict(shard_tokens=1024, dedup=True, max_tokens=max_tokens)
    reference = tmp_path / "ref"
    prepare(source, tokenizer_dir, reference, **settings)
    calls, original = [], OrderedWriter.write

    def crash_on_fourth(self, *args):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return original(self, *args)

    monkeypatch.setattr(OrderedWriter, "write", crash_on_fourth)
    monkeypatch.setattr("homegpt.data.prepare.MAX_CHUNK_CHARS", 20_000)
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        prepare(source, tokenizer_dir, out, **settings)
    assert (out / STATE_FILE).exists() and not (out / "manifest.json").exists()
    with pytest.raises(UserError, match=r"other settings \(seed differ\)"):
        prepare(source, tokenizer_dir, out, seed=5, **settings)
    monkeypatch.setattr(OrderedWriter, "write", original)
    monkeypatch.setattr("homegpt.data.prepare.MAX_CHUNK_CHARS", 9_000)  # resuming with other chunks changes nothing
    prepare(source, tokenizer_dir, out, **settings)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == {p.name: p.read_bytes() for p in reference.iterdir()}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"workers": 0}, "--workers must be at least 1"),
        ({"shard_tokens": 10}, "--shard-tokens must be at least 1024"),
        ({"memory_mb": 20}, "--memory-mb 20 is too small"),
        ({"memory_mb": 60, "workers": 4}, "fewer --workers"),
        ({"max_tokens": 0}, "--max-tokens must be positive"),
        ({"encoder": "fastest"}, "unknown encoder"),
    ],
)
def test_bad_settings_write_nothing(source, tokenizer_dir, tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        prepare(source, tokenizer_dir, tmp_path / "out", **kwargs)
    assert not (tmp_path / "out").exists()


def test_empty_corpus_and_bad_flags_via_cli(tokenizer_dir, tmp_path, capsys):
    (tmp_path / "e.jsonl").write_text('{"text": "   "}\n{"text": null}\n')
    cases = [
        (["--data", f"file:{tmp_path}/e.jsonl"], "the corpus is empty"),
        (["--data", f"file:{tmp_path}/e.jsonl", "--hf-config", "x"], "applies only to hf: sources"),
        (["--data", "builtin", "--max-tokens", "1.5"], "not a whole number"),
    ]
    for extra, message in cases:
        try:
            code = main(["prepare", "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "o"), *extra])
        except SystemExit as e:  # argparse's own errors
            code = e.code
        err = capsys.readouterr().err
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "o").exists()


def test_cli_shows_progress_and_takes_the_new_flags(source, tokenizer_dir, tmp_path, capsys):
    code = main(["prepare", "--data", source, "--tokenizer", str(tokenizer_dir), "--out", str(tmp_path / "o"),
                 "--workers", "1", "--shard-tokens", "2e3", "--max-tokens", "1e4", "--dedup", "--seed", "3",
                 "--memory-mb", "256", "--verify"])
    out, err = capsys.readouterr()
    assert code == 0 and "tok/s" in err and "MB/s" in err and "wrote" in out
    m = read_manifest(tmp_path / "o")
    assert (m["seed"], m["dedup"], m["shard_tokens"], m["max_tokens"]) == (3, True, 2000, 10000)


def test_version_1_folders_still_open(source, tokenizer_dir, tmp_path):
    prepare(source, tokenizer_dir, tmp_path)
    m = json.loads((tmp_path / "manifest.json").read_text())
    for split in ("train", "val"):
        (shard,) = m["splits"][split].pop("shards")
        (tmp_path / shard["file"]).rename(tmp_path / f"{split}.bin")
        m["splits"][split]["file"] = f"{split}.bin"
    m["version"] = 1
    (tmp_path / "manifest.json").write_text(json.dumps(m))
    assert len(open_split(tmp_path, "train")) == m["splits"]["train"]["tokens"]
    assert verify(tmp_path)["checksums"] is False


# ---- the loader ---------------------------------------------------------------------------------------


def test_loader_random_order_matches_the_trainer_and_resumes_from_json(data_dir):
    from homegpt.data.loader import TokenLoader

    tokens = open_split(data_dir, "train")
    gen = torch.Generator().manual_seed(3)  # the trainer's draw: one generator, all of a step's windows at once
    new = TokenLoader(tokens, 16, 4, 2, seed=3)
    for _ in range(3):
        starts = torch.randint(0, len(tokens) - 17, (8,), generator=gen).view(2, 1, 4)[:, 0]
        x, y = new.next_step()[1]
        assert torch.equal(x[0], torch.from_numpy(np.asarray(tokens[int(starts[1, 0]):][:16], dtype=np.int64)))
        assert torch.equal(x[:, 1:], y[:, :-1])
    saved = json.loads(json.dumps(new.state_dict()))
    ahead = [new.next_step() for _ in range(3)]
    resumed = TokenLoader(tokens, 16, 4, 2, seed=999)
    resumed.load_state_dict(saved)
    assert all(torch.equal(a[0][0], b[0][0]) for a, b in zip(ahead, [resumed.next_step() for _ in range(3)],
                                                          strict=True))
    legacy = TokenLoader(tokens, 16, 4, 2, seed=999)
    legacy.load_state_dict(gen.get_state())  # what the trainer's checkpoints hold today
    assert torch.equal(legacy.step_starts(), torch.randint(0, len(tokens) - 17, (8,), generator=gen).view(2, 4))


def test_loader_ranks_are_deterministic_and_disjoint(data_dir):
    from homegpt.data.loader import TokenLoader

    tokens = open_split(data_dir, "train")
    one = TokenLoader(tokens, 16, 8, 1, seed=1)
    ranks = [TokenLoader(tokens, 16, 4, 1, seed=1, rank=r, world=2) for r in range(2)]
    assert torch.equal(one.step_starts()[0].sort().values,
                       torch.cat([r.step_starts()[0] for r in ranks]).sort().values)  # same windows, shared
    seq = [TokenLoader(tokens, 16, 4, 2, seed=0, rank=r, world=2, order="sequential") for r in range(2)]
    windows = (len(tokens) - 1) // 16
    steps = windows // 16
    seen = [int(s) for _ in range(steps) for loader in seq for s in loader.step_starts().flatten()]
    assert len(seen) == len(set(seen)) == steps * 16 and sorted(seen) == [16 * w for w in range(steps * 16)]
    x, y = seq[0].next_step()[0]
    assert torch.equal(x[:, 1:], y[:, :-1])
    state = seq[1].state_dict()
    again = TokenLoader(tokens, 16, 4, 2, seed=0, rank=1, world=2, order="sequential")
    again.load_state_dict(state)
    assert torch.equal(again.step_starts(), seq[1].step_starts())
    regrouped = TokenLoader(tokens, 16, 8, 2, seed=0, order="sequential")  # one rank, same windows per step
    regrouped.load_state_dict(state)
    with pytest.raises(UserError, match="does not match this run"):
        TokenLoader(tokens, 16, 4, 1, seed=0, order="sequential").load_state_dict(state)


# ---- recipes --------------------------------------------------------------------------------------------

RECIPES = sorted((Path(__file__).parents[2] / "recipes").glob("*.toml"))


@pytest.mark.parametrize("path", RECIPES, ids=[p.stem for p in RECIPES])
def test_recipe_configs_are_valid_and_their_scripts_name_them(path):
    from homegpt.model.gpt import count_params
    from homegpt.train.config import load_config

    cfg = load_config(path)
    params = count_params(cfg.model_config(50304))["total"]
    assert cfg.data_dir.startswith("data/") and cfg.max_tokens > 0 and params > 1e6
    if path.stem == "bookcorpus-51m":
        assert round(params / 1e6, 1) == 51.5 and cfg.max_tokens == 1_100_000_000
    if path.stem == "bookcorpus-compute-optimal":  # what `homegpt plan` chose for the same compute
        stated = re.search(r"^# -> ([\d,]+) parameters .* on ([\d,]+) tokens", path.read_text(), re.MULTILINE)
        assert (params, cfg.max_tokens) == tuple(int(x.replace(",", "")) for x in stated.groups())
        assert 6 * params * cfg.max_tokens == pytest.approx(6 * 51.5e6 * 1.1e9, rel=0.05)
    scripts = " ".join(p.read_text() for p in path.parent.glob("*.sh"))
    assert f"recipes/{path.name}" in scripts or path.stem == "bookcorpus-compute-optimal"


def test_there_are_the_four_recipes():
    assert {p.stem for p in RECIPES} == {"bookcorpus-51m", "bookcorpus-compute-optimal", "tinystories", "fineweb-edu"}
