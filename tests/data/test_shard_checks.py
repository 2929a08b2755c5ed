"""Shards are checked before they reach the trainer or the evaluator: one line naming the file, exit 2, and
nothing of the run touched. Every case corrupts a copy of the fixtures' data, never the fixtures."""

import hashlib
import json
import shutil

import numpy as np
import pytest
from conftest import tiny_config

from homegpt.cli import main
from homegpt.data.prepare import prepare
from homegpt.data.shards import check_prepared, verify
from homegpt.errors import UserError
from homegpt.train.loop import train


def _tree(path):
    """Every file under path with its bytes' hash: to show that a refusal wrote nothing."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def small_shards(source, tokenizer_dir, tmp_path_factory):
    """The fixture corpus prepared into 1,024-token shards, and a second preparation (other documents, same
    tokenizer, same shard size) to swap a shard from."""
    root = tmp_path_factory.mktemp("shards")
    prepare(source, tokenizer_dir, root / "a", force=True, shard_tokens=1024, log=lambda m: None)
    other = root / "other-text"
    other.mkdir()
    from homegpt.data.sources import load_corpus

    for i, doc in enumerate(load_corpus("builtin").train[100:130]):
        (other / f"d{i:03d}.txt").write_text(doc, encoding="utf-8")
    prepare(f"file:{other}", tokenizer_dir, root / "b", force=True, shard_tokens=1024, log=lambda m: None)
    return root / "a", root / "b"


def _flip(path, token):
    data = bytearray(path.read_bytes())
    data[2 * token] ^= 1  # the low bit of a uint16 id: still a valid id, so only the checksum can tell
    path.write_bytes(bytes(data))


def _truncate(path, token):
    path.write_bytes(path.read_bytes()[:-2])


def _beyond_vocab(path, token):
    ids = np.fromfile(path, dtype="<u2")
    ids[token] = 60000
    ids.tofile(path)


CASES = {
    "flipped_byte": (_flip, "its SHA-256 differs"),
    "truncated": (_truncate, "truncated"),
    "ids_beyond_vocab": (_beyond_vocab, "token id 60,000 at token 700, beyond the 512-token vocabulary"),
}


def _damaged_copy(small_shards, tmp_path, case):
    good, other = small_shards
    data = tmp_path / "data"
    shutil.copytree(good, data)
    shard = data / "train-00003.bin"
    if case == "swapped":
        shutil.copyfile(other / "train-00001.bin", shard)  # same size, valid ids, another preparation's text
        return data, shard, "comes from another preparation"
    damage, expect = CASES[case]
    damage(shard, 700)
    return data, shard, expect


@pytest.mark.parametrize("case", [*CASES, "swapped"])
def test_training_refuses_a_damaged_shard_before_writing_anything(small_shards, tmp_path, capsys, case):
    data, shard, expect = _damaged_copy(small_shards, tmp_path, case)
    check_prepared(small_shards[0])  # the undamaged preparation passes
    with pytest.raises(UserError, match=expect.replace("(", r"\(")) as e:
        train(tiny_config(data), tmp_path / "run", progress=False, log=lambda m: None)
    assert str(shard) in str(e.value)
    assert not (tmp_path / "run").exists()
    # the same through the command line: one line on stderr, exit code 2
    config = tmp_path / "c.toml"
    config.write_text(f'data_dir = "{data}"\npreset = "cpu-tiny"\nmax_steps = 2\ndevice = "cpu"\n')
    assert main(["train", str(config), "--out", str(tmp_path / "run"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(shard) in err and "Traceback" not in err
    assert not (tmp_path / "run").exists()
    with pytest.raises(UserError):  # prepare --verify says the same
        verify(data)


def test_a_resumed_run_is_untouched_when_its_data_went_bad(small_shards, tmp_path, one_thread):
    good, _ = small_shards
    data = tmp_path / "data"
    shutil.copytree(good, data)
    run = tmp_path / "run"
    train(tiny_config(data, max_steps=1, sample_tokens=0), run, progress=False, log=lambda m: None)
    before = _tree(run)
    _beyond_vocab(data / "train-00002.bin", 5)
    with pytest.raises(UserError, match="train-00002.bin holds token id 60,000 at token 5"):
        train(tiny_config(data, max_steps=2, sample_tokens=0), run, resume=True, progress=False, log=lambda m: None)
    assert _tree(run) == before


def test_eval_refuses_a_damaged_held_out_shard(trained_run, data_dir, tmp_path, capsys):
    run, _ = trained_run
    copy, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(run, copy)
    shutil.copytree(data_dir, data)
    info = json.loads((copy / "run.json").read_text())
    info["data_dir"] = str(data)
    (copy / "run.json").write_text(json.dumps(info))
    _flip(data / "val-00000.bin", 10)
    before = _tree(copy)
    assert main(["eval", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "val-00000.bin is corrupted" in err
    assert _tree(copy) == before
