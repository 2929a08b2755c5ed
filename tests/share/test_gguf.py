"""`homegpt export --format gguf`: the file run by the real llama.cpp (llama-cpp-python builds it from source),
on tiny models of both architectures: the same ids, logits within 1e-3 (f32 weights, f32 KV cache: llama.cpp's
default f16 cache alone moves logits by ~1e-2), the same greedy text as `homegpt sample --temperature 0`,
held-out bits per byte within 0.5% (f16) and 1% (q8_0); and its refusals, Modelfile, card and push."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest
import torch
from conftest import tiny_config

from homegpt.cli import main
from homegpt.data.sources import load_corpus
from homegpt.data.tokenizer import EOT, IM_END, IM_START, train_tokenizer
from homegpt.rundir.checkpoint import load_run, model_state
from homegpt.rundir.info import read_run_info
from homegpt.share.card import render_card
from homegpt.share.export import write_run
from homegpt.share.gguf import export_gguf
from homegpt.train.loop import train

pytestmark = pytest.mark.usefixtures("one_thread")
QUIET = dict(progress=False, log=lambda m: None)
PROMPTS = ["", "And God said", "In the beginning 1234", "  spaced\n\nout"]
# digits, runs of spaces and newlines, non-Latin scripts, code and the special tokens
HARD_TEXT = ("Chapter 12: 3.14159 and 1,000,000   spaces\t\ttabs\n\n\nnewlines\r\n 日本語のテキスト 中文 한국어 "
             "العربية हिन्दी Ελληνικά Кириллица 🙂🚀 café naïve\n    def f(x):\n        return x**2 + 0x1F  # ok\n"
             f"{EOT}after{EOT} {IM_START}user\nhi{IM_END}\n<|im_start <|im_end| it's they'll DON'T ’curly’")


def llama(path: str | Path, n_ctx: int = 256) -> llama_cpp.Llama:
    """llama.cpp on one thread with an f32 KV cache (type 0 = GGML_TYPE_F32) and every position's logits."""
    return llama_cpp.Llama(str(path), n_ctx=n_ctx, n_threads=1, n_threads_batch=1, logits_all=True, type_k=0,
                           type_v=0, verbose=False, seed=0)


def homegpt_logits(run, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return run.model(torch.tensor([ids]))[0][0].float().numpy()


def llama_logits(llm: llama_cpp.Llama, ids: list[int]) -> np.ndarray:
    llm.reset()
    llm.eval(ids)
    return np.array(llm.scores[: len(ids)])


def sample_greedy(run_dir: Path, prompts: list[str], n: int = 12) -> list[str]:
    """`homegpt sample --temperature 0`, the real command."""
    args = [sys.executable, "-m", "homegpt", "sample", str(run_dir), "--temperature", "0", "--max-new-tokens", str(n),
            "--json"]
    for p in prompts:
        args += ["--prompt", p]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=300, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, proc.stderr
    return [r["text"] for r in json.loads(proc.stdout)["results"]]


def held_out_bpb(run, score) -> float:
    """Bits per byte over 8 windows of held-out text (the built-in corpus's held-out books, never trained on),
    from a function giving the logits of a window: homegpt's model or llama.cpp's."""
    text = load_corpus("builtin").val[0]
    ids = run.tokenizer.encode(text).ids
    T = run.model.config.block_size
    nats, nbytes = 0.0, 0
    for w in range(8):
        window = ids[w * T: (w + 1) * T + 1]
        logits = torch.from_numpy(score(window[:-1])).double()
        targets = torch.tensor(window[1:])
        nats += torch.nn.functional.cross_entropy(logits, targets, reduction="sum").item()
        nbytes += int(run.token_bytes[targets].sum())
    return nats / math.log(2) / nbytes


def check_runs_exactly(run_dir: Path, gguf_path: Path, vocab: int) -> None:
    run = load_run(run_dir, device="cpu")
    llm = llama(gguf_path)
    try:
        assert llm.n_vocab() == vocab == run.tokenizer.get_vocab_size()  # no padding rows to sample
        assert llm.tokenize(HARD_TEXT.encode(), add_bos=False, special=True) == run.tokenizer.encode(HARD_TEXT).ids
        eot = run.tokenizer.token_to_id(EOT)
        assert llm.tokenize(b"And God said", add_bos=True, special=False)[0] == eot  # add_bos_token: <|endoftext|>
        for prompt in PROMPTS[1:]:
            ids = [eot] + run.tokenizer.encode(prompt).ids
            ours, theirs = homegpt_logits(run, ids)[:, :vocab], llama_logits(llm, ids)
            assert np.abs(ours - theirs).max() < 1e-3, prompt
        expected = sample_greedy(run_dir, PROMPTS)
        for prompt, text in zip(PROMPTS, expected, strict=True):
            llm.reset()
            ids = []
            for t in llm.generate(llm.tokenize(prompt.encode(), add_bos=True), top_k=1, temp=0.0, reset=True):
                if t == eot or len(ids) == 12:
                    break
                ids.append(t)
            assert run.tokenizer.decode(ids) == text, prompt
            if prompt:  # the everyday API too (llama-cpp-python cuts its text short after an empty prompt)
                got = llm.create_completion(prompt, max_tokens=12, temperature=0.0, top_k=1)["choices"][0]["text"]
                assert got == text, prompt
    finally:
        llm.close()


# --------------------------------------------------------------------------------------------- runs


@pytest.fixture(scope="module")
def gpt2_run(source, tmp_path_factory):
    """A GPT-2 run whose tokenizer splits text GPT-2's way, with 500 tokens (the model has 512 rows: 12 padding)."""
    from homegpt.data.prepare import prepare

    work = tmp_path_factory.mktemp("gpt2")
    train_tokenizer(source, 500, work / "tok", pre_tokenizer="gpt2")
    prepare(source, work / "tok", work / "data", force=True)
    train(tiny_config(work / "data", arch="gpt2", preset="", n_layer=2, n_head=2, n_embd=64, block_size=64),
          work / "run", **QUIET)
    return work / "run"


def test_a_swiglu_run_runs_exactly_in_llama_cpp(trained_run, tmp_path):
    run_dir, _ = trained_run
    r = export_gguf(run_dir, tmp_path / "out", quant="f32")
    assert r["architecture"] == "qwen3" and sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "Modelfile", "out-F32.gguf"]
    check_runs_exactly(run_dir, r["gguf"], r["vocab_size"])


def test_a_gpt2_run_runs_exactly_in_llama_cpp(gpt2_run, tmp_path):
    r = export_gguf(gpt2_run, tmp_path / "out", quant="f32")
    assert r["architecture"] == "gpt2" and r["vocab_size"] == 500
    check_runs_exactly(gpt2_run, r["gguf"], 500)


def test_the_file_says_everything_that_changes_the_computation(trained_run, tmp_path):
    run_dir, _ = trained_run
    cfg = load_run(run_dir).model.config
    path = export_gguf(run_dir, tmp_path / "out", quant="q8_0")["gguf"]
    reader = gguf.GGUFReader(path)

    def value(key):
        return reader.get_field(key).contents()

    assert value("general.architecture") == "qwen3"
    assert value("qwen3.context_length") == cfg.block_size and value("qwen3.block_count") == cfg.n_layer
    assert value("qwen3.attention.head_count") == value("qwen3.attention.head_count_kv") == cfg.n_head
    assert value("qwen3.attention.key_length") == value("qwen3.attention.value_length") == cfg.head_dim
    assert value("qwen3.rope.freq_base") == cfg.rope_theta
    assert value("qwen3.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    assert value("tokenizer.ggml.pre") == "qwen2" and value("tokenizer.ggml.add_bos_token") is True
    tokens, types = value("tokenizer.ggml.tokens"), value("tokenizer.ggml.token_type")
    assert tokens[:3] == [EOT, IM_START, IM_END] and types[:3] == [3, 3, 3] and set(types[3:]) == {1}
    assert value("tokenizer.ggml.bos_token_id") == value("tokenizer.ggml.eos_token_id") == 0
    kinds = {t.name: t.tensor_type.name for t in reader.tensors}
    assert kinds["blk.0.attn_q.weight"] == "Q8_0" and kinds["blk.0.attn_norm.weight"] == "F32"
    assert ("output.weight" in kinds) == (not cfg.tie_embeddings)
    assert "tokenizer.chat_template" not in reader.fields  # a base model has no chat template


@pytest.mark.parametrize("quant,tolerance", [("f16", 0.005), ("q8_0", 0.01)])
def test_quantized_files_keep_held_out_bits_per_byte(trained_run, tmp_path, quant, tolerance):
    run_dir, _ = trained_run
    run = load_run(run_dir, device="cpu")
    llm = llama(export_gguf(run_dir, tmp_path / "out", quant=quant)["gguf"])
    try:
        vocab = run.tokenizer.get_vocab_size()
        ours = held_out_bpb(run, lambda ids: homegpt_logits(run, ids)[:, :vocab])
        theirs = held_out_bpb(run, lambda ids: llama_logits(llm, ids))
    finally:
        llm.close()
    assert abs(theirs - ours) / ours < tolerance, (quant, ours, theirs)


# --------------------------------------------------------------------------------------------- CLI


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "homegpt", *args], capture_output=True, text=True, timeout=300)


def test_refusals_are_one_line_and_write_nothing(trained_run, tmp_path):
    run_dir, _ = trained_run
    out = tmp_path / "out"
    bad = run_cli("export", str(run_dir), str(out), "--format", "gguf", "--quant", "q4_k")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "q8_0" in bad.stderr and not out.exists()
    assert run_cli("export", str(run_dir), str(out), "--format", "gguf", "--quant", "f16").returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    again = run_cli("export", str(run_dir), str(out), "--format", "gguf", "--quant", "q8_0")
    assert again.returncode == 2 and "--force" in again.stderr and again.stderr.count("\n") == 1
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    forced = run_cli("export", str(run_dir), str(out), "--format", "gguf", "--quant", "q8_0", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "out-Q8_0.gguf"]  # the f16 file is gone
    assert json.loads(forced.stdout)["quant"] == "q8_0"
    for target in (out, out / "out-Q8_0.gguf"):  # import reads transformers folders only: said in one line
        imported = run_cli("import", str(target), "--out", str(tmp_path / "imported"))
        assert imported.returncode == 2 and "GGUF" in imported.stderr and imported.stderr.count("\n") == 1
    assert not (tmp_path / "imported").exists()
    odd = tmp_path / "odd-run"  # a tokenizer that normalizes text: no llama.cpp pre-tokenizer computes it
    shutil.copytree(run_dir, odd)
    spec = json.loads((odd / "tokenizer.json").read_text())
    (odd / "tokenizer.json").write_text(json.dumps(dict(spec, normalizer={"type": "NFC"})))
    refused = run_cli("export", str(odd), str(tmp_path / "odd"), "--format", "gguf")
    assert refused.returncode == 2 and "pre-tokenizer" in refused.stderr and refused.stderr.count("\n") == 1
    assert not (tmp_path / "odd").exists()
    quant_alone = run_cli("export", str(run_dir), str(tmp_path / "hf"), "--quant", "f16")
    assert quant_alone.returncode == 2 and "--format gguf" in quant_alone.stderr


def test_a_relu2_run_is_refused_with_what_runs_it(tmp_path):
    from homegpt.model.gpt import GPT, GPTConfig

    run = tmp_path / "relu2"
    run.mkdir()
    tok = train_tokenizer("builtin", 300, run, sample_bytes=200_000)
    cfg = GPTConfig(n_layer=1, n_head=2, n_embd=64, block_size=32, vocab_size=320, arch="modern", mlp="relu2")
    assert tok["vocab_size"] == 300
    write_run(run, cfg, model_state(GPT(cfg)))
    for args in (["export", str(run), str(tmp_path / "out"), "--format", "gguf"],
                 ["push", str(run), "alice/x", "--gguf", "--dry-run"]):
        proc = run_cli(*args)
        assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
        assert "ReLU" in proc.stderr and "swiglu" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists()


def test_modelfile_card_and_push(trained_run, tmp_path, capsys):
    run_dir, _ = trained_run
    export_gguf(run_dir, tmp_path / "out", quant="f16", name="tiny")
    modelfile = (tmp_path / "out" / "Modelfile").read_text()
    assert "FROM ./tiny-F16.gguf" in modelfile and 'TEMPLATE """{{ .Prompt }}"""' in modelfile
    assert f'PARAMETER stop "{EOT}"' in modelfile and "PARAMETER temperature 0.8" in modelfile
    assert main(["push", str(run_dir), "alice/tiny-gpt", "--gguf", "q8_0", "--dry-run", "--json"]) == 0
    files = {f["path"] for f in json.loads(capsys.readouterr().out)["files"]}
    assert {"tiny-gpt-Q8_0.gguf", "Modelfile", "model.safetensors", "README.md"} <= files
    card = render_card(read_run_info(run_dir), None, {}, 6, [], False, repo_id="alice/tiny-gpt",
                       gguf_file="tiny-gpt-Q8_0.gguf")
    assert "## Run it in llama.cpp / Ollama / LM Studio" in card
    assert "llama-cli -hf alice/tiny-gpt:Q8_0" in card and "ollama run hf.co/alice/tiny-gpt:Q8_0" in card
