"""Conversations: ChatML rendering against transformers' apply_chat_template, the loss mask, packing, and bad
data (one line naming the file and line, exit 2, nothing written)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from homegpt.cli import main
from homegpt.data.conversations import CHATML_TEMPLATE, encode, marked_template, prompt_ids, render
from homegpt.data.packed import Packer
from homegpt.data.tokenizer import EOT, IM_END, IM_START, load_tokenizer

CONVERSATION = [
    {"role": "system", "content": "You are terse.\nVery terse."},
    {"role": "user", "content": "  Who made the heavens?\n"},
    {"role": "assistant", "content": "God, in the beginning — é ü 日本"},
    {"role": "user", "content": "And the earth?"},
    {"role": "assistant", "content": "\n\nThe earth too."},
]


@pytest.fixture(scope="module")
def hf_tokenizer(tokenizer_dir, tmp_path_factory):
    """The session's tokenizer as transformers loads it, with homegpt's ChatML template."""
    from transformers import AutoTokenizer

    from homegpt.share.export import tokenizer_files

    tok = load_tokenizer(tokenizer_dir)
    specials = {t.content: i for i, t in tok.get_added_tokens_decoder().items()}
    d = tmp_path_factory.mktemp("hf-tok")
    (d / "tokenizer.json").write_bytes((Path(tokenizer_dir) / "tokenizer.json").read_bytes())
    for name, content in tokenizer_files(tok.token_to_id(EOT), 64, specials, CHATML_TEMPLATE).items():
        (d / name).write_text(json.dumps(content), encoding="utf-8")
    return tok, AutoTokenizer.from_pretrained(d)


def test_the_tokenizer_reserves_chatml_tokens(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    assert [tok.token_to_id(t) for t in (EOT, IM_START, IM_END)] == [0, 1, 2]
    assert tok.encode(f"{IM_START}user\nhi{IM_END}").ids[0] == 1 and tok.encode("hi<|im_end|>").ids[-1] == 2


def test_rendering_equals_transformers_apply_chat_template(hf_tokenizer):
    tok, hf = hf_tokenizer
    text, _ = render(CONVERSATION)
    assert hf.apply_chat_template(CONVERSATION, tokenize=False) == text
    ids, mask = encode(tok, [CONVERSATION])[0]
    theirs = hf.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True)["input_ids"]
    assert list(ids) == list(theirs)
    for n in (2, 4):  # a prompt for the next answer, after one and after two exchanges
        assert prompt_ids(tok, CONVERSATION[:n]) == list(hf.apply_chat_template(
            CONVERSATION[:n], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"])
    assert hf.apply_chat_template(CONVERSATION[:4], add_generation_prompt=True, tokenize=False).endswith(
        f"{IM_END}\n{IM_START}assistant\n")
    # The same template with transformers' {% generation %} marks gives the same text and, as its assistant
    # mask, exactly homegpt's loss mask.
    marked = hf.apply_chat_template(CONVERSATION, tokenize=True, return_dict=True, chat_template=marked_template(),
                                    return_assistant_tokens_mask=True)
    assert marked["input_ids"] == list(ids) and list(marked["assistant_masks"]) == list(mask)


def test_only_the_assistants_content_and_im_end_carry_loss(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    ids, mask = encode(tok, [CONVERSATION])[0]
    im_end = tok.token_to_id(IM_END)
    runs, current = [], []
    for i, m in zip(ids.tolist(), mask.tolist(), strict=True):
        if m:
            current.append(i)
        elif current:
            runs.append(current)
            current = []
    assert len(runs) == 2 and all(r[-1] == im_end for r in runs)  # each answer ends with its <|im_end|>
    assert [tok.decode(r) for r in runs] == ["God, in the beginning — é ü 日本", "\n\nThe earth too."]
    unmasked = tok.decode([i for i, m in zip(ids, mask, strict=True) if not m], skip_special_tokens=False)
    assert "God" not in unmasked and "user\n  Who made" in unmasked and "terse" in unmasked
    assert mask.sum() == sum(len(r) for r in runs) and ids[0] == tok.token_to_id(EOT)


def test_packing_never_cuts_a_conversation():
    rng = np.random.default_rng(0)
    convs = [np.arange(n) + 1000 * k for k, n in enumerate(rng.integers(3, 34, 300))]
    convs += [np.arange(45) + 900_000]  # longer than a row
    packer = Packer(33, pad_id=-1)
    rows = []
    for c in convs:
        rows += packer.add(c, np.ones(len(c), np.uint8))
    rows += packer.flush()
    assert all(len(ids) == 33 for ids, _ in rows)
    found = []
    for ids, mask in rows:
        body = ids[ids != -1]
        assert (mask[ids == -1] == 0).all() and (mask[ids != -1] == 1).all()  # padding carries no loss
        for k in sorted(set((body // 1000).tolist())):
            part = body[body // 1000 == k]
            assert (part == convs[k]).all()  # whole, in order, in one row
            found.append(k)
    assert sorted(found) == list(range(300))  # every one that fits, once
    assert packer.counts["dropped_too_long"] == 1 and packer.counts["rows"] == len(rows)
    assert sum(len(c) for c in convs[:300]) / (33 * len(rows)) > 0.9  # best fit wastes little
    cut = Packer(33, pad_id=-1, too_long="cut")
    assert len(cut.add(convs[-1], np.ones(45, np.uint8)) + cut.flush()) == 1 and cut.counts["cut_too_long"] == 1


BAD = {
    "not JSON": ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "yo"}]}\n'
                 '{"messages": [oops\n', ":2 is not JSON"),
    "roles out of order": ('{"messages": [{"role": "user", "content": "hi"}, {"role": "user", "content": "hi"},'
                           ' {"role": "assistant", "content": "yo"}]}\n', ":1: roles out of order"),
    "no assistant turn": ('\n{"messages": [{"role": "system", "content": "be kind"}, {"role": "user", '
                          '"content": "hi"}]}\n', ":2: no assistant turn"),
    "empty conversation": ('{"messages": []}\n', ":1: the conversation is empty"),
    "empty message": ('{"prompt": "hi", "completion": "  "}\n', ":1: message 1 (assistant) is empty"),
    "unknown role": ('{"messages": [{"role": "tool", "content": "x"}]}\n', "has role 'tool'"),
    "empty file": ("", "holds no usable conversations"),
    "half a surrogate pair": ('{"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", '
                              '"content": "ok \\ud800"}]}\n', ":1: message 1 (assistant) is not valid text"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_data_is_one_line_naming_the_file_and_line(case, trained_run, tmp_path, capsys):
    data, expected = BAD[case]
    path = tmp_path / "chat.jsonl"
    path.write_text(data, encoding="utf-8")
    out = tmp_path / "sft"
    code = main(["sft", str(trained_run[0]), "--data", f"file:{path}", "--out", str(out), "--no-progress"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and str(path) in err[0] and expected in err[0], err
    assert not out.exists() and not list(tmp_path.glob(".sft*"))  # nothing written, nothing left behind


def test_bad_data_leaves_an_existing_run_untouched(trained_run, tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text(BAD["roles out of order"][0], encoding="utf-8")
    out = tmp_path / "sft"
    out.mkdir()
    (out / "run.json").write_text("{}")
    (out / "keep.txt").write_text("mine")
    proc = subprocess.run([sys.executable, "-m", "homegpt", "sft", str(trained_run[0]), "--data", f"file:{path}",
                           "--out", str(out), "--force"], capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().count("\n") == 0 and f"{path}:1: roles out of order" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt", "run.json"] and (out / "run.json").read_text() == "{}"


def test_parquet_files_and_hf_datasets_read_the_same_conversations(tokenizer_dir, tmp_path):
    """file: .jsonl and .parquet, and hf: (the datasets library's json and parquet builders on local files)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from homegpt.data.builtin_chat import task_conversations
    from homegpt.data.packed import write_packed

    rows = [{"messages": item.messages, "source": "task"} for item in task_conversations("train", 30)]
    rows[3] = {"prompt": rows[3]["messages"][-2]["content"], "completion": rows[3]["messages"][-1]["content"]}
    jsonl = tmp_path / "chat.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    table = pa.Table.from_pylist([r if "messages" in r else {"messages": [
        {"role": "user", "content": r["prompt"]}, {"role": "assistant", "content": r["completion"]}],
        "source": "task"} for r in rows])
    pq.write_table(table, tmp_path / "chat.parquet")
    shards = set()
    for i, spec in enumerate((f"file:{jsonl}", f"file:{tmp_path / 'chat.parquet'}",
                              f"hf:json?data_files={jsonl}", f"hf:parquet?data_files={tmp_path / 'chat.parquet'}")):
        out = tmp_path / f"packed{i}"
        out.mkdir()
        m = write_packed(spec, Path(tokenizer_dir) / "tokenizer.json", out, 512, 65)
        assert m["splits"]["train"]["documents"] + m["splits"]["val"]["documents"] + m["dropped_too_long"] == 30
        shards.add((out / "train-00000.bin").read_bytes() + (out / "train-mask-00000.bin").read_bytes())
    assert len(shards) == 1


def test_a_damaged_loss_mask_is_refused(trained_run, tmp_path, capsys):
    from homegpt.data.builtin_chat import task_conversations

    data = tmp_path / "chat.jsonl"
    data.write_text("".join(json.dumps({"messages": i.messages}) + "\n" for i in task_conversations("train", 40)))
    out = tmp_path / "sft"
    assert main(["sft", str(trained_run[0]), "--data", f"file:{data}", "--out", str(out), "--prepare-only"]) == 0
    capsys.readouterr()
    mask = out / "sft-data" / "train-mask-00000.bin"
    raw = bytearray(mask.read_bytes())
    raw[5] ^= 1
    mask.write_bytes(bytes(raw))
    assert main(["train", str(out), "--resume", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train-mask-00000.bin (a loss mask) is missing, truncated or corrupted" in err[0]
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-000000"]  # nothing trained, nothing written
