"""Bits per byte on any text: which text each command scores, the two definitions, and batch-size invariance."""

import json
import math
import shutil

import numpy as np
import pytest
import torch

from homegpt.cli import main
from homegpt.data.shards import file_sha256
from homegpt.data.sources import cut_pieces, load_corpus
from homegpt.data.tokenizer import EOT, load_tokenizer, round_vocab, token_byte_lengths
from homegpt.eval.evaluate import evaluate_run
from homegpt.eval.textscore import Piece, Tally, document_windows, score_windows
from homegpt.model.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models on a shared 2-core machine: see conftest


def _jsonl(path, texts):
    path.write_text("".join(json.dumps({"text": t}) + "\n" for t in texts), encoding="utf-8")
    return f"file:{path}"


@pytest.fixture(scope="module")
def other_text(tmp_path_factory):
    """30 documents the tiny run never saw (held-out books of the built-in corpus), one with non-ASCII text."""
    docs = [d[:700] for d in load_corpus("builtin").val[:29]] + ["Café naïve 🙂 — “quoted” text, ünïcödé."]
    return docs, _jsonl(tmp_path_factory.mktemp("other") / "other.jsonl", docs)


def test_own_source_scores_its_held_out_split_as_training_did(trained_run, source, corpus_dir, capsys):
    run, result = trained_run
    default = evaluate_run(run)
    assert default["bpb"] == pytest.approx(result["val_bpb"], rel=1e-9)  # eval.json's figure, unchanged
    assert default["definition"] == "stream" and default["scope"] == "held-out"
    for spec in (source, f"file:{corpus_dir}/../{corpus_dir.name}/"):  # the run's source, however it is named
        named = evaluate_run(run, spec)
        assert named["scope"] == "held-out" and named["bpb"] == default["bpb"], spec
    assert main(["eval", str(run), "--data", source]) == 0
    first = capsys.readouterr().out.splitlines()[0]
    assert first.startswith("the held-out split prepared in") and "2 documents" in first


def test_whole_scores_every_document_and_byte(trained_run, source, data_dir):
    run, _ = trained_run
    manifest = json.loads((data_dir / "manifest.json").read_text())
    whole = evaluate_run(run, source, scope="whole")
    splits = manifest["splits"]
    assert whole["definition"] == "documents"
    assert whole["documents"] == splits["train"]["documents"] + splits["val"]["documents"] == 40
    assert whole["bytes"] == splits["train"]["bytes"] + splits["val"]["bytes"]  # every byte of the text
    # every token of every document, none of the <|endoftext|> between them
    assert whole["tokens"] == splits["train"]["tokens"] + splits["val"]["tokens"] - 40


def test_another_source_is_scored_whole_unless_held_out_is_asked(trained_run, other_text):
    run, _ = trained_run
    docs, spec = other_text
    whole = evaluate_run(run, spec)
    assert whole["scope"] == "whole" and whole["documents"] == len(docs)
    assert whole["bytes"] == sum(len(d.encode("utf-8")) for d in docs)
    held = evaluate_run(run, spec, scope="held-out")
    assert 0 < held["documents"] < len(docs) and held["bytes"] < whole["bytes"]
    assert held["scored"].startswith("the held-out documents of")


def test_same_figures_for_any_batch_size(trained_run, other_text):
    run, _ = trained_run
    _, spec = other_text
    for kwargs in ({"source": spec}, {}):  # documents (padded windows) and the held-out stream
        ref = evaluate_run(run, batch_size=1, **kwargs)
        for b in (3, 16):
            r = evaluate_run(run, batch_size=b, **kwargs)
            assert (r["tokens"], r["bytes"], r["documents"]) == (ref["tokens"], ref["bytes"], ref["documents"])
            for k in ("loss", "perplexity", "bpb"):
                assert r[k] == pytest.approx(ref[k], rel=1e-6), (kwargs, b, k)


def test_documents_definition_is_lm_evals_rolling_windows(tokenizer_dir):
    """Each document from <|endoftext|>, in the windows lm-eval's own get_rolling_token_windows makes."""
    from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

    tok = load_tokenizer(tokenizer_dir)
    eot = tok.token_to_id(EOT)
    vocab = round_vocab(tok.get_vocab_size())
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=vocab)).eval()
    texts = ["In the beginning was the word.", "Café 🙂", "x", "And the end. " * 5]
    docs = [tok.encode(t).ids for t in texts]
    assert any(len(d) > 16 for d in docs) and any(len(d) == 1 for d in docs)  # several windows; one token
    lengths = torch.tensor(token_byte_lengths(tok, vocab))
    tally = Tally()
    windows = document_windows((Piece(d, True, True) for d in docs), 8, eot, tally)
    score_windows(model, windows, lengths, tally, batch_size=3)

    nats = 0.0
    for d in docs:
        for context, pred in map(make_disjoint_window, get_rolling_token_windows(d, eot, 8, 1)):
            seq = (context + pred)[-9:]
            with torch.no_grad():
                logits, _ = model(torch.tensor([seq[:-1]]))
            logp = torch.log_softmax(logits[0].double(), -1)[-len(pred):]
            nats -= sum(float(logp[i, t]) for i, t in enumerate(pred))
    assert tally.documents == 4 and tally.tokens == sum(map(len, docs))
    assert tally.bytes == sum(len(t.encode("utf-8")) for t in texts)
    assert math.isclose(tally.nats, nats, rel_tol=1e-5)


def test_long_documents_stream_in_pieces_with_the_same_windows(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    text = " ".join(load_corpus("builtin").val[:3])
    whole = list(document_windows([Piece(tok.encode(text).ids, True, True)], 64, 0, Tally()))
    parts = list(cut_pieces(text, piece_chars=500))
    assert len(parts) > 10
    pieces = [Piece(tok.encode(t).ids, k == 0, last) for k, (t, last) in enumerate(parts)]
    tally = Tally()
    streamed = list(document_windows(pieces, 64, 0, tally))
    assert tally.documents == 1 and len(streamed) == len(whole)
    assert all(np.array_equal(a, b) and m == n for (a, m), (b, n) in zip(streamed, whole, strict=True))


def test_without_its_prepared_data_a_run_re_encodes_the_same_held_out_stream(trained_run, tmp_path):
    run, result = trained_run
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    info = json.loads((copy / "run.json").read_text())
    info["data_dir"] = str(tmp_path / "gone")
    (copy / "run.json").write_text(json.dumps(info))
    r = evaluate_run(copy)
    assert r["definition"] == "stream" and "re-encoded" in r["where"]
    assert r["bpb"] == pytest.approx(result["val_bpb"], rel=1e-6)  # the very tokens prepare wrote
    assert r["tokens"] == result["val_tokens"]


def test_eval_refuses_prepared_data_that_is_no_longer_the_runs(trained_run, data_dir, tmp_path, capsys):
    """The run's data folder re-prepared with another tokenizer: one line, exit 2, not a wrong figure."""
    run, _ = trained_run
    copy, data = tmp_path / "run", tmp_path / "data"
    shutil.copytree(run, copy)
    shutil.copytree(data_dir, data)
    (data / "tokenizer.json").write_text((data / "tokenizer.json").read_text() + "\n")  # another file, same vocab
    manifest = json.loads((data / "manifest.json").read_text())
    manifest["tokenizer_sha256"] = file_sha256(data / "tokenizer.json")
    (data / "manifest.json").write_text(json.dumps(manifest))
    info = json.loads((copy / "run.json").read_text())
    info["data_dir"] = str(data)
    (copy / "run.json").write_text(json.dumps(info))
    assert main(["eval", str(copy)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "another tokenizer" in err and str(data) in err


def test_whole_and_held_out_are_exclusive(trained_run, capsys):
    run, _ = trained_run
    with pytest.raises(SystemExit) as e:
        main(["eval", str(run), "--whole", "--held-out"])
    assert e.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


def test_count_data_streams_a_source_with_the_same_counts(source, tokenizer_dir):
    from homegpt.plan.budget import count_data

    corpus = load_corpus(source)
    tok = load_tokenizer(tokenizer_dir)
    counted = count_data(source, str(tokenizer_dir))
    assert counted["tokens"] == sum(len(e.ids) + 1 for e in tok.encode_batch(corpus.train))
    assert counted["bytes"] == corpus.nbytes("train")
    assert count_data(source)["bytes"] == corpus.nbytes("train")


def test_a_source_without_text_to_score_is_a_one_line_error(trained_run, tmp_path, capsys):
    run, _ = trained_run
    (tmp_path / "blank.txt").write_text("  \n\n")
    assert main(["eval", str(run), "--data", f"file:{tmp_path / 'blank.txt'}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"homegpt: error: file:{tmp_path / 'blank.txt'} holds no text to score: give it text"
