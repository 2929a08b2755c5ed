"""lm-evaluation-harness tasks on a run's transformers export (GPT2LMHeadModel and Qwen3ForCausalLM), offline,
through the real harness: a local multiple-choice task and a local perplexity task via --include-path, checked
against homegpt's own model; the harness's bits_per_byte against `homegpt eval --whole` on the same documents."""

import contextlib
import io
import json
import math
import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import tiny_config

from homegpt.cli import main
from homegpt.data.sources import load_corpus
from homegpt.eval.evaluate import evaluate_run
from homegpt.eval.harness import TASKS_FILE, run_tasks
from homegpt.rundir.checkpoint import load_run
from homegpt.train.loop import train

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


def _yaml(path, name, data, body):
    path.write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
                    f"test_split: test\n{body}", encoding="utf-8")


@pytest.fixture(scope="module")
def task_dir(tmp_path_factory):
    """local_mc: continue a held-out verse (4 choices); local_ppl: 8 held-out passages, several windows each;
    hub_task: a task whose data is on the Hub."""
    d = tmp_path_factory.mktemp("tasks")
    val = load_corpus("builtin").val
    passages = [val[i][:600].rsplit(" ", 1)[0] for i in range(8)] + ["Café naïve 🙂 — “quoted”, ünïcödé text."]
    (d / "docs.jsonl").write_text("".join(json.dumps({"text": t}) + "\n" for t in passages), encoding="utf-8")
    items = []
    for i in range(8):
        words = val[20 + i].split()
        query, right = " ".join(words[:8]), " ".join(words[8:12])
        wrong = [" ".join(val[28 + 3 * i + k].split()[8:12]) for k in range(3)]
        choices = wrong[: i % 4] + [right] + wrong[i % 4:]
        items.append({"query": query, "choices": choices, "gold": i % 4})
    (d / "mc.jsonl").write_text("".join(json.dumps(it) + "\n" for it in items), encoding="utf-8")
    _yaml(d / "mc.yaml", "local_mc", d / "mc.jsonl",
          'output_type: multiple_choice\ndoc_to_text: "{{query}}"\ndoc_to_target: "{{gold}}"\n'
          'doc_to_choice: "{{choices}}"\nmetric_list:\n  - metric: acc\n  - metric: acc_norm\n')
    _yaml(d / "ppl.yaml", "local_ppl", d / "docs.jsonl",
          'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\n'
          'metric_list:\n  - metric: word_perplexity\n  - metric: byte_perplexity\n  - metric: bits_per_byte\n')
    (d / "hub.yaml").write_text('task: hub_task\ndataset_path: Rowan/hellaswag\ntest_split: validation\n'
                                'output_type: multiple_choice\ndoc_to_text: "{{ctx}}"\ndoc_to_target: "{{label}}"\n'
                                'doc_to_choice: "{{endings}}"\n', encoding="utf-8")
    return d, items


@pytest.fixture(scope="module")
def runs(trained_run, data_dir, tmp_path_factory, one_thread):
    """The fixture run (arch modern) copied, and a tiny GPT-2 run: eval-tasks.json is written into them."""
    root = tmp_path_factory.mktemp("task-runs")
    shutil.copytree(trained_run[0], root / "modern")
    train(tiny_config(data_dir, arch="gpt2", max_steps=2, sample_tokens=0), root / "gpt2", progress=False,
          log=lambda m: None)
    return {"modern": root / "modern", "gpt2": root / "gpt2"}


def _cli(*args):
    env = dict(os.environ, **OFFLINE)
    return subprocess.run([sys.executable, "-m", "homegpt", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


@pytest.fixture(scope="module")
def scored(runs, task_dir, one_thread):
    """Both exports through the harness: the modern one by the command, the GPT-2 one by the API."""
    d, _ = task_dir
    out = io.StringIO()
    with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(out):
        for key in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"):  # local files only: nothing may reach for the Hub
            mp.setenv(key, "1")
        code = main(["eval", str(runs["modern"]), "--tasks", "local_mc,local_ppl", "--include-path", str(d), "--json"])
        gpt2 = run_tasks(runs["gpt2"], ["local_mc", "local_ppl"], include_path=str(d), batch_size=3, device="cpu")
    assert code == 0
    return {"modern": json.loads(out.getvalue().strip().splitlines()[-1]), "gpt2": gpt2}


def _row(report, task, metric):
    [row] = [r for r in report["results"] if r["task"] == task and r["metric"] == metric]
    return row


def _expected_mc(run_dir, items):
    """lm-eval's multiple-choice scoring by hand on homegpt's own model: log-likelihood of " " + choice after the
    query (no <|endoftext|> before it, as the harness's HF model adds none); acc_norm divides by characters."""
    run = load_run(run_dir, device="cpu")
    acc = acc_norm = 0
    for it in items:
        context = run.tokenizer.encode(it["query"]).ids
        lls = []
        for choice in it["choices"]:
            whole = run.tokenizer.encode(it["query"] + " " + choice).ids
            cont = whole[len(context):]
            with torch.no_grad():
                logits, _ = run.model(torch.tensor([whole[:-1]]))
            logp = torch.log_softmax(logits[0].double(), -1)[-len(cont):]
            lls.append(sum(float(logp[i, t]) for i, t in enumerate(cont)))
        best = max(range(4), key=lambda k: lls[k])
        best_norm = max(range(4), key=lambda k: lls[k] / len(it["choices"][k]))
        acc += best == it["gold"]
        acc_norm += best_norm == it["gold"]
    return acc / len(items), acc_norm / len(items)


@pytest.mark.parametrize("arch, model_class", [("modern", "Qwen3ForCausalLM"), ("gpt2", "GPT2LMHeadModel")])
def test_local_tasks_run_on_the_export_and_match_homegpts_model(scored, runs, task_dir, arch, model_class):
    report = scored[arch]
    assert report["model_class"] == model_class and report["tasks"] == ["local_mc", "local_ppl"]
    written = json.loads((runs[arch] / TASKS_FILE).read_text())
    assert written == {k: v for k, v in report.items() if k != "path"}
    acc, acc_norm = _expected_mc(runs[arch], task_dir[1])
    assert _row(report, "local_mc", "acc")["value"] == pytest.approx(acc)
    assert _row(report, "local_mc", "acc_norm")["value"] == pytest.approx(acc_norm)
    assert _row(report, "local_mc", "acc")["samples"] == 8
    stderr = _row(report, "local_mc", "acc")["stderr"]
    assert stderr == pytest.approx(math.sqrt(acc * (1 - acc) / 7))  # the harness's sample standard error


@pytest.mark.parametrize("arch", ["modern", "gpt2"])
def test_bits_per_byte_agrees_with_lm_eval(scored, runs, task_dir, arch):
    """The same documents: lm-eval's loglikelihood_rolling bits_per_byte and homegpt eval --whole."""
    d, _ = task_dir
    theirs = _row(scored[arch], "local_ppl", "bits_per_byte")["value"]
    ours = evaluate_run(runs[arch], f"file:{d / 'docs.jsonl'}", scope="whole", device="cpu")
    assert ours["documents"] == 9
    rel = abs(ours["bpb"] - theirs) / theirs
    assert rel < 0.01  # the bar
    assert rel < 1e-4, (ours["bpb"], theirs)  # the definitions are the same: only float rounding is left


def test_a_task_whose_data_cannot_be_fetched_is_named(runs, task_dir):
    d, _ = task_dir
    run = runs["gpt2"]
    (run / TASKS_FILE).unlink(missing_ok=True)
    before = {p.name: p.stat().st_mtime_ns for p in run.rglob("*")}
    proc = _cli("eval", run, "--tasks", "local_mc,hub_task", "--include-path", d)
    assert proc.returncode == 2
    err = proc.stderr.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("homegpt: error: task hub_task: its data could not be loaded")
    assert {p.name: p.stat().st_mtime_ns for p in run.rglob("*")} == before  # no eval-tasks.json, nothing written


def test_missing_harness_gives_a_one_line_hint(trained_run, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # what `import lm_eval` meets when it isn't installed
    assert main(["eval", str(trained_run[0]), "--tasks", "hellaswag"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "homegpt: error: --tasks needs lm-evaluation-harness: pip install 'homegpt[eval]'"


def test_bad_task_options_are_one_line_errors(trained_run, tmp_path, capsys):
    run = str(trained_run[0])
    for args, expect in ((["--tasks", "x", "--include-path", str(tmp_path / "nope")], "not a folder"),
                         (["--tasks", ",", ], "at least one task"),
                         (["--tasks", "x", "--whole"], "leave out --data"),
                         (["--tasks", "x", "--limit", "0"], "--limit must be at least 1"),
                         (["--limit", "5"], "go with --tasks"),
                         (["--batch-size", "0"], "--batch-size must be at least 1")):
        assert main(["eval", run, *args]) == 2, args
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and expect in err, (args, err)
