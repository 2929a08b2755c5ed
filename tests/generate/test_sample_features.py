"""Sampling: the engine against the model's own forward pass, stop strings, repetition penalty, CLI."""

from __future__ import annotations

import io
import json

import pytest
import torch

from homegpt.cli import main
from homegpt.generate.sample import (
    SampleOptions,
    apply_repetition_penalty,
    encode_prompt,
    find_stop,
    generate,
    generate_ids,
    generate_many,
    generate_text,
    held_back,
)

PROMPTS = ["In the beginning", "The", "And it came to pass that the king said unto them", ""]


pytestmark = pytest.mark.usefixtures("one_thread")

@pytest.fixture(scope="module")
def loaded(trained_run):
    from homegpt.rundir.checkpoint import load_run

    run_dir, _ = trained_run
    run = load_run(run_dir, device="cpu")
    return run_dir, run.model, run.tokenizer


def rows_for(tok, prompts, n=20):
    return [encode_prompt(tok, p, 64, n) for p in prompts]


def test_cached_greedy_equals_uncached_greedy_in_a_batch(loaded):
    _, model, tok = loaded
    rows = rows_for(tok, PROMPTS)
    batched = torch.cat(list(generate_ids(model, rows, 20)), dim=1)
    for b, r in enumerate(rows):
        no_cache = torch.cat(list(model.generate(torch.tensor([r]), 20, temperature=0, use_cache=False)), dim=1)
        assert batched[b].tolist() == no_cache[0].tolist()


def test_sampling_reproduces_gpt_generate_with_the_same_generator(loaded):
    _, model, tok = loaded
    r = rows_for(tok, ["The king"])[0]
    ours = torch.cat(list(generate_ids(model, [r], 15, 1.0, 20, 0.9, seeds=[3])), dim=1)
    ref = torch.cat(list(model.generate(torch.tensor([r]), 15, 1.0, 20, 0.9, torch.Generator().manual_seed(3))), 1)
    assert ours.tolist() == ref.tolist()


@pytest.mark.parametrize("temperature", [0.0, 0.9])
def test_batched_equals_one_by_one(loaded, temperature):
    _, model, tok = loaded
    opts = SampleOptions(max_new_tokens=20, temperature=temperature, top_k=40, seed=5)
    batched = generate(model, tok, PROMPTS, opts, seeds=[5, 6, 7, 8])
    for c, p, s in zip(batched, PROMPTS, [5, 6, 7, 8], strict=True):
        alone = generate(model, tok, [p], opts, seeds=[s])[0]
        assert (c.tokens, c.text, c.finish_reason) == (alone.tokens, alone.text, alone.finish_reason)


def test_generate_many_keeps_prompt_order_and_seeds(loaded):
    _, model, tok = loaded
    opts = SampleOptions(max_new_tokens=8, temperature=1.0, seed=10)
    out = generate_many(model, tok, PROMPTS, opts, num_samples=2, batch_size=3)
    assert [c.prompt for c in out] == [p for p in PROMPTS for _ in range(2)]
    assert [c.seed for c in out] == [10, 11] * len(PROMPTS)
    again = generate(model, tok, [PROMPTS[2]], opts, seeds=[11])[0]
    assert out[5].tokens == again.tokens


def test_generate_text_keeps_its_signature_and_is_deterministic(loaded):
    _, model, tok = loaded
    a = generate_text(model, tok, "The", 12, temperature=0.8, top_k=50, seed=1)
    assert a == generate_text(model, tok, "The", 12, temperature=0.8, top_k=50, seed=1)
    assert isinstance(a, str)


def test_stop_string_cuts_the_output(loaded):
    _, model, tok = loaded
    opts = SampleOptions(max_new_tokens=30, temperature=0.0)
    full = generate(model, tok, ["In the"], opts)[0]
    assert len(full.text) > 8
    stop = full.text[4:7]
    cut = generate(model, tok, ["In the"], SampleOptions(max_new_tokens=30, temperature=0.0, stop=(stop,)))[0]
    assert cut.text == full.text[: full.text.find(stop)]
    assert cut.finish_reason == "stop" and stop not in cut.text
    assert cut.new_tokens < full.new_tokens
    absent = generate(model, tok, ["In the"], SampleOptions(max_new_tokens=30, temperature=0.0, stop=("\x07",)))[0]
    assert absent.text == full.text and absent.finish_reason == full.finish_reason


def test_streamed_text_never_shows_a_stop_string(loaded):
    _, model, tok = loaded
    full = generate(model, tok, ["The"], SampleOptions(max_new_tokens=30, temperature=0.0))[0].text
    stop = full[6:10]
    pieces: list[str] = []
    out = generate(model, tok, ["The"], SampleOptions(max_new_tokens=30, temperature=0.0, stop=(stop,)),
                   on_text=pieces.append)[0]
    assert "".join(pieces) == out.text == full[: full.find(stop)]


def test_stop_helpers():
    assert held_back("hello wor", ("world",)) == 3
    assert held_back("hello", ("xyz",)) == 0
    assert held_back("ab", ("abc", "b")) == 2
    assert find_stop("one\n\ntwo", ("\n\n", "two")) == 3
    assert find_stop("abc", ("z",)) == -1


def test_repetition_penalty_math():
    logits = torch.tensor([[2.0, -2.0, 1.0]])
    seen = torch.tensor([[True, True, False]])
    assert apply_repetition_penalty(logits, seen, 2.0).tolist() == [[1.0, -4.0, 1.0]]


def test_repetition_penalty_changes_greedy_output_deterministically(loaded):
    _, model, tok = loaded
    plain = generate(model, tok, ["The"], SampleOptions(max_new_tokens=30, temperature=0.0))[0]
    opts = SampleOptions(max_new_tokens=30, temperature=0.0, repetition_penalty=1.5)
    a, b = generate(model, tok, ["The"], opts)[0], generate(model, tok, ["The"], opts)[0]
    assert a.tokens == b.tokens
    assert a.tokens != plain.tokens
    # Penalised tokens repeat less: the most repeated token of the plain output appears less often.
    top = max(set(plain.tokens), key=plain.tokens.count)
    assert a.tokens.count(top) < plain.tokens.count(top)


def test_options_are_checked(loaded):
    from homegpt.errors import UserError

    _, model, tok = loaded
    for bad in (dict(repetition_penalty=0), dict(temperature=-1), dict(max_new_tokens=0), dict(stop=("",))):
        with pytest.raises(UserError):
            generate(model, tok, ["x"], SampleOptions(**bad))
    with pytest.raises(UserError, match="context"):
        generate(model, tok, ["word " * 80], SampleOptions(max_new_tokens=10))


# --------------------------------------------------------------------------------------------- CLI


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_batched_prompts_json(loaded, capsys, tmp_path):
    run_dir, _, _ = loaded
    f = tmp_path / "prompts.txt"
    f.write_text("The king\nIn the beginning\n", encoding="utf-8")
    code, out, _ = run_cli(capsys, "sample", run_dir, "--prompt", "Love", "--prompts-file", f, "--temperature", 0,
                           "--max-new-tokens", 6, "--stop", "\n\n", "--repetition-penalty", 1.2, "--json")
    assert code == 0
    res = json.loads(out.strip().splitlines()[-1])["results"]
    assert [r["prompt"] for r in res] == ["Love", "The king", "In the beginning"]
    assert all(r["finish_reason"] in ("eot", "length", "stop") and r["new_tokens"] <= 6 for r in res)


def test_cli_interactive_reads_until_eof(loaded, capsys, monkeypatch):
    run_dir, _, _ = loaded
    monkeypatch.setattr("sys.stdin", io.StringIO("The\n" + "word " * 80 + "\nLove\n"))
    code, out, err = run_cli(capsys, "sample", run_dir, "--interactive", "--json", "--max-new-tokens", 5)
    assert code == 0
    lines = [json.loads(line) for line in out.strip().splitlines()]
    assert [x["prompt"] for x in lines] == ["The", "Love"]  # the too-long prompt is reported, not fatal
    assert "context" in err and len(err.strip().splitlines()) == 1


def test_cli_interactive_streams_text(loaded, capsys, monkeypatch):
    run_dir, model, tok = loaded
    monkeypatch.setattr("sys.stdin", io.StringIO("The\n"))
    code, out, _ = run_cli(capsys, "sample", run_dir, "--interactive", "--temperature", 0, "--max-new-tokens", 5)
    expected = generate(model, tok, ["The"], SampleOptions(max_new_tokens=5, temperature=0, seed=0))[0].text
    assert code == 0 and out == f"The{expected}\n"


@pytest.mark.parametrize("flags", [["--repetition-penalty", "0"], ["--stop", ""], ["--num-samples", "0"],
                                   ["--prompts-file", "/nonexistent/prompts.txt"]])
def test_cli_bad_sample_flags_exit_2_with_one_line(loaded, capsys, flags):
    run_dir, _, _ = loaded
    code, out, err = run_cli(capsys, "sample", run_dir, *flags)
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("flags, what", [
    (["--prompt", "ab\udcff\udcfe"], "--prompt"),  # bytes that are not UTF-8, as Python decodes argv
    (["--prompt", "ok", "--prompt", "\ud800"], "--prompt number 2"),
    (["--prompt", "ok", "--stop", "\ud800"], "--stop"),
    (["--chat", "--system", "\udcff"], "--system"),
])
def test_text_that_is_not_unicode_is_one_line_and_exit_2(trained_run, capsys, flags, what):
    code = main(["sample", str(trained_run[0]), *flags])
    out, err = capsys.readouterr()
    assert code == 2 and not out and err.count("\n") == 1, err
    assert err.startswith(f"homegpt: error: {what} is not valid text"), err


def test_bytes_that_are_not_utf8_on_the_command_line_and_stdin(trained_run):
    """The real thing: a mis-encoded terminal's bytes in argv (one line, exit 2), and on stdin (that line is
    refused, the session goes on)."""
    import subprocess
    import sys

    run = str(trained_run[0])
    r = subprocess.run([sys.executable, "-m", "homegpt", "sample", run, "--prompt", b"ab\xff\xfe"],
                       capture_output=True, timeout=120)
    assert r.returncode == 2 and r.stdout == b"", r.stderr
    assert r.stderr.decode().startswith("homegpt: error: --prompt is not valid text") and r.stderr.count(b"\n") == 1
    r = subprocess.run([sys.executable, "-m", "homegpt", "sample", run, "--interactive", "--json", "--max-new-tokens",
                        "2"], input=b"ab\xff\nThe\n", capture_output=True, timeout=120)
    assert r.returncode == 0 and b"Traceback" not in r.stderr, r.stderr
    assert b"the prompt is not valid text" in r.stderr
    assert [json.loads(line)["prompt"] for line in r.stdout.decode().splitlines()] == ["The"]
