"""The command line end to end, and every kind of bad input: one line, exit code 2, nothing damaged."""

import json
import os
import re
import shutil
import subprocess
import sys

import pytest

from homegpt.cli import main
from homegpt.rundir.checkpoint import checkpoint_dirs


def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def last_json(out: str) -> dict:
    return json.loads(out.strip().splitlines()[-1])


def test_pipeline_end_to_end_as_a_real_command(source, tmp_path):
    """tokenizer -> prepare -> train -> eval -> sample, through the installed `homegpt` entry point."""
    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "homegpt", *map(str, args)], capture_output=True, text=True,
                              timeout=300)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    info = last_json(cli("tokenizer", "--data", source, "--vocab-size", 400, "--out", tmp_path / "tok", "--json"))
    assert info["model_vocab_size"] == 448 and info["bytes_per_token"] > 1
    m = last_json(cli("prepare", "--data", source, "--tokenizer", tmp_path / "tok", "--out", tmp_path / "data",
                      "--json"))
    assert m["splits"]["val"]["tokens"] > 0
    config = tmp_path / "tiny.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\npreset = "cpu-tiny"\nmax_steps = 4\n'
                      f'batch_tokens = 256\nmicro_batch = 4\neval_interval = 2\neval_tokens = 512\n')
    r = last_json(cli("train", config, "--out", tmp_path / "run", "--lr", "2e-3", "--no-progress", "--json"))
    assert r["step"] == 4 and r["tokens_trained"] == 4 * 256
    e = last_json(cli("eval", tmp_path / "run", "--json"))
    assert e["loss"] == pytest.approx(r["val_loss"], rel=1e-6) and e["bpb"] == pytest.approx(r["val_bpb"], rel=1e-6)
    s = last_json(cli("sample", tmp_path / "run", "--prompt", "In the beginning", "--max-new-tokens", 10, "--json"))
    assert s["prompt"] == "In the beginning" and isinstance(s["samples"][0], str)
    streamed = cli("sample", tmp_path / "run", "--prompt", "Love", "--max-new-tokens", 5, "--temperature", 0)
    assert streamed.startswith("Love")


def test_resume_a_run_by_its_path(trained_run, tmp_path, capsys):
    run, _ = trained_run
    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    code, out, _ = run_cli(capsys, "train", copy, "--resume", "--max-steps", 8, "--no-progress", "--json")
    assert code == 0 and last_json(out)["step"] == 8
    assert checkpoint_dirs(copy)[-1].name == "step-000008"


def test_eval_on_another_source(trained_run, tmp_path, capsys):
    run, _ = trained_run
    (tmp_path / "other.txt").write_text("A different text about ships and the sea.\n" * 200)
    code, out, _ = run_cli(capsys, "eval", run, "--data", f"file:{tmp_path / 'other.txt'}", "--json")
    r = last_json(out)
    assert code == 0 and r["bytes"] > 0 and r["perplexity"] > 1


def _write(path, text):
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    "case, expect",
    [
        ("missing_file", "does not exist"),
        ("empty_corpus", "empty"),
        ("binary_file", "binary"),
        ("invalid_utf8", "offset"),
        ("vocab_too_small", "vocab size"),
        ("vocab_too_large", "vocab size"),
        ("unknown_preset", "did you mean 'cpu-tiny'"),
        ("unknown_config_key", "did you mean 'max_steps'"),
        ("bad_value_type", "lr must be float"),
        ("heads_do_not_divide", "divisible"),
        ("prompt_too_long", "context"),
        ("missing_run", "does not exist"),
        ("not_a_run", "not a homegpt run"),
        ("config_missing", "does not exist"),
        ("bad_toml", "not valid TOML"),
        ("unknown_flag", "unrecognized arguments"),
        ("unknown_arch", "unknown arch 'gpt3' (did you mean 'gpt2'?): use gpt2 or modern"),
        ("unknown_optimizer", "unknown optimizer 'adam' (did you mean 'adamw'?)"),
        ("unknown_schedule", "unknown schedule 'linear'"),
        ("muon_option", "muon_momentum must be in [0, 1)"),
        ("swiglu_on_gpt2", "mlp = 'swiglu' is not available with arch = 'gpt2'"),
        ("bias_on_modern", 'arch = "modern" has no biases'),
    ],
)
def test_bad_input_is_one_line_and_exit_2(case, expect, tmp_path, capsys, data_dir, trained_run, source):
    run, _ = trained_run
    tok = ["tokenizer", "--out", tmp_path / "tok", "--vocab-size", 300, "--data"]
    train = ["train", _write(tmp_path / "c.toml", f'data_dir = "{data_dir}"\npreset = "cpu-tiny"\nmax_steps = 2\n'),
             "--out", tmp_path / "r", "--no-progress"]
    args = {
        "missing_file": tok + ["file:/no/such/file.txt"],
        "empty_corpus": tok + [f"file:{_write(tmp_path / 'e.txt', '  ')}"],
        "binary_file": tok + [f"file:{tmp_path / 'b.txt'}"],
        "invalid_utf8": tok + [f"file:{tmp_path / 'u.txt'}"],
        "vocab_too_small": ["tokenizer", "--out", tmp_path / "tok", "--vocab-size", 10, "--data", source],
        "vocab_too_large": ["tokenizer", "--out", tmp_path / "tok", "--vocab-size", 10**8, "--data", source],
        "unknown_preset": train + ["--preset", "cpu-tinny"],
        "unknown_config_key": train + ["--max-stepz", 3],
        "bad_value_type": train + ["--lr", "fast"],
        "heads_do_not_divide": train + ["--n-embd", 100, "--n-head", 3],
        "prompt_too_long": ["sample", run, "--prompt", "word " * 100, "--max-new-tokens", 10],
        "missing_run": ["eval", tmp_path / "nope"],
        "not_a_run": ["eval", tmp_path],
        "config_missing": ["train", tmp_path / "missing.toml"],
        "bad_toml": ["train", _write(tmp_path / "bad.toml", "lr = = 3")],
        "unknown_flag": ["eval", run, "--bogus"],
        "unknown_arch": train + ["--arch", "gpt3"],
        "unknown_optimizer": train + ["--optimizer", "adam"],
        "unknown_schedule": train + ["--schedule", "linear"],
        "muon_option": train + ["--muon-momentum", "1.5"],
        "swiglu_on_gpt2": train + ["--arch", "gpt2", "--mlp", "swiglu"],
        "bias_on_modern": train + ["--bias", "true"],
    }[case]
    (tmp_path / "b.txt").write_bytes(b"\x00\x01binary\x00")
    (tmp_path / "u.txt").write_bytes(b"fine text \xff\xfe more")
    try:
        code, out, err = run_cli(capsys, *args)
    except SystemExit as e:  # argparse's own errors
        code, (_, err) = e.code, capsys.readouterr()
    assert code == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert expect in err
    assert not (tmp_path / "tok" / "tokenizer.json").exists()


def test_existing_run_is_not_damaged(trained_run, data_dir, tmp_path, capsys):
    run, _ = trained_run
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    config = _write(tmp_path / "c.toml", f'data_dir = "{data_dir}"\npreset = "cpu-small"\nmax_steps = 2\n')
    code, _, err = run_cli(capsys, "train", config, "--out", run, "--no-progress")
    assert code == 2 and "already holds a run" in err
    code, _, err = run_cli(capsys, "train", config, "--out", run, "--resume", "--no-progress")
    assert code == 2 and "another model shape" in err
    assert before == {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}


def test_corrupted_checkpoint_and_foreign_tokenizer_via_cli(trained_run, tmp_path, capsys, source):
    run, _ = trained_run
    bad = tmp_path / "bad"
    shutil.copytree(run, bad)
    w = checkpoint_dirs(bad)[-1] / "model.safetensors"
    w.write_bytes(w.read_bytes()[:50])
    code, _, err = run_cli(capsys, "eval", bad)
    assert code == 2 and "truncated or corrupted" in err
    other = tmp_path / "other"
    shutil.copytree(run, other)
    main(["tokenizer", "--data", source, "--vocab-size", "300", "--out", str(tmp_path / "t2")])
    shutil.copyfile(tmp_path / "t2" / "tokenizer.json", other / "tokenizer.json")
    capsys.readouterr()
    code, _, err = run_cli(capsys, "sample", other, "--prompt", "hi")
    assert code == 2 and "not the tokenizer" in err


def test_source_flags_on_demo_and_eval(trained_run, tmp_path, capsys):
    """--text-column refines --data for eval (and demo) as it does for tokenizer and prepare."""
    import json as _json

    run, _ = trained_run
    rows = [{"body": f"Line {i} about the sea and the ships."} for i in range(40)]
    (tmp_path / "x.jsonl").write_text("\n".join(_json.dumps(r) for r in rows))
    code, out, err = run_cli(capsys, "eval", run, "--data", f"file:{tmp_path / 'x.jsonl'}", "--text-column", "body",
                             "--json")
    assert code == 0, err
    assert last_json(out)["bytes"] > 0
    code, _, err = run_cli(capsys, "eval", run, "--data", f"file:{tmp_path / 'x.jsonl'}", "--text-column", "nope")
    assert code == 2 and "nope" in err


@pytest.mark.parametrize("command", ["train", "sft"])
def test_help_says_every_config_key_is_a_flag(command, capsys):
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "Every config key is also a flag" in text and "--n-layer 6" in text and "docs/training.md" in text


def test_progress_written_to_a_file_is_a_few_plain_lines(data_dir, source, tokenizer_dir, tmp_path):
    """`homegpt train ... 2> train.log`: no carriage-return bar updates, one line per interval, per evaluation
    and at the end (here the interval is 1 s, the default 30 s)."""
    config = tmp_path / "tiny.toml"
    config.write_text(f'data_dir = "{data_dir}"\npreset = "cpu-tiny"\nmax_steps = 60\nbatch_tokens = 256\n'
                      f'micro_batch = 4\neval_interval = 30\neval_tokens = 256\nsample_tokens = 0\n')
    env = dict(os.environ, HOMEGPT_LOG_SECONDS="1")
    log = tmp_path / "train.log"
    with log.open("w") as f:
        r = subprocess.run([sys.executable, "-m", "homegpt", "train", str(config), "--out", str(tmp_path / "run")],
                           stdout=subprocess.DEVNULL, stderr=f, env=env, timeout=300)
    text = log.read_text()
    assert r.returncode == 0, text
    lines = text.splitlines()
    assert "\r" not in text and len(lines) < 40, text  # tqdm would have written 60 updates
    assert sum(line.startswith("step ") for line in lines) == 2  # the line of each evaluation
    assert re.search(r"^train: step 60/60 \(100%\) \| loss \S+, tok_s \S+, mfu \S+ \| [\d.]+ step/s, ", text, re.M)
    with log.open("w") as f:
        r = subprocess.run([sys.executable, "-m", "homegpt", "prepare", "--data", source, "--tokenizer",
                            str(tokenizer_dir), "--out", str(tmp_path / "data")], stdout=subprocess.DEVNULL,
                           stderr=f, env=env, timeout=300)
    text = log.read_text()
    assert r.returncode == 0 and "\r" not in text and re.search(r"^prepare: .* tok/s", text, re.M), text
