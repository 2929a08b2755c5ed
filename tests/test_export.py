"""Export to transformers and back, the model card, and `homegpt push --dry-run`; all offline."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import yaml

from homegpt.cli import main
from homegpt.errors import UserError
from homegpt.export import export_run, import_hf, write_run
from homegpt.model import GPT, GPTConfig, count_params
from homegpt.tokenizer import EOT

UNICODE_TEXT = (
    "Café naïve façade — déjà vu, Ærøskøbing, Straße.\n\n\n"
    "中文字符和日本語のテキスト、한국어도.\n"
    "Emoji: 🎉🚀 👩‍👩‍👧 ✈️ 🇫🇷\n"
    "\tTabbed\tcolumns\t\n"
    "   leading spaces, trailing spaces   \n"
    "\n"
    "Math 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 ∑ x² ≠ ∞; ligature ﬁ; combining é; zero\u200bwidth"
)


pytestmark = pytest.mark.usefixtures("one_thread")

def run_cli(capsys, *args):
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def need_transformers():
    """Loading an export needs transformers (a test extra); exporting, the card and push do not."""
    transformers = pytest.importorskip("transformers")
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


def load_hf(path):
    need_transformers()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(path, local_files_only=True).eval()
    return model, AutoTokenizer.from_pretrained(path, local_files_only=True)


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    run_dir, _ = trained_run
    out = tmp_path_factory.mktemp("export") / "tiny-gpt"
    info = export_run(run_dir, out, card_options={"hardware": "2-core test CPU", "cost_usd": 0.01})
    return run_dir, out, info


@pytest.fixture(scope="module")
def hf(exported):
    return load_hf(exported[1])


@pytest.fixture(scope="module")
def docs(corpus_dir):
    return [p.read_text(encoding="utf-8") for p in sorted(corpus_dir.glob("*.txt"))[:20]]


def make_run(path, block_size: int, tok_vocab: int, docs: list[str], bias: bool = True):
    """A run around a randomly initialised GPT (no training), with a tokenizer of about tok_vocab tokens."""
    from homegpt.sources import Corpus
    from homegpt.tokenizer import round_vocab, train_tokenizer_on

    tok = train_tokenizer_on(Corpus("t", docs, []), tok_vocab)
    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    torch.manual_seed(block_size)
    cfg = GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=block_size,
                    vocab_size=round_vocab(tok.get_vocab_size()), bias=bias)
    weights = {k: v for k, v in GPT(cfg).state_dict().items() if k != "lm_head.weight"}
    write_run(path, cfg, weights)
    return path


def homegpt_logits(run_dir, ids):
    from homegpt.checkpoint import load_run

    run = load_run(run_dir, device="cpu")
    with torch.no_grad():
        return run.model(torch.tensor([ids]))[0], run


# --------------------------------------------------------------------------------------------- export


def test_export_writes_a_transformers_folder(exported):
    run_dir, out, info = exported
    names = {p.name for p in out.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "generation_config.json", "README.md", "loss.png", "homegpt.json"} <= names
    cfg = json.loads((out / "config.json").read_text())
    model = json.loads((run_dir / "run.json").read_text())["model"]
    assert cfg["architectures"] == ["GPT2LMHeadModel"] and cfg["activation_function"] == "gelu_new"
    assert (cfg["n_positions"], cfg["n_embd"], cfg["n_layer"], cfg["n_head"], cfg["vocab_size"]) == (
        model["block_size"], model["n_embd"], model["n_layer"], model["n_head"], model["vocab_size"])
    assert cfg["layer_norm_epsilon"] == 1e-5 and cfg["bos_token_id"] == cfg["eos_token_id"] == 0
    assert (out / "tokenizer.json").read_bytes() == (run_dir / "tokenizer.json").read_bytes()
    assert str(run_dir) not in (out / "homegpt.json").read_text()  # no local paths in what may be published


def test_transformers_logits_match_homegpt(exported, hf):
    run_dir, _, _ = exported
    model, _ = hf
    ids = [0] + list(range(1, 60))
    ours, run = homegpt_logits(run_dir, ids)
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0]
    assert theirs.dtype == torch.float32
    assert (theirs - ours).abs().max().item() < 1e-4
    assert model.num_parameters() == count_params(run.model.config)["total"]


def test_autotokenizer_ids_equal_homegpt_on_unicode(exported, hf):
    run_dir, _, _ = exported
    _, tok = hf
    from homegpt.tokenizer import load_tokenizer

    ours = load_tokenizer(run_dir / "tokenizer.json")
    assert tok.is_fast
    for text in (UNICODE_TEXT, " leading space", "\n\n\n", "a\tb", EOT + "after the marker"):
        ids = tok(text)["input_ids"]
        assert ids == ours.encode(text).ids
        assert tok.decode(ids) == text
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (EOT, EOT, EOT)
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == ours.token_to_id(EOT)


def test_pipeline_generates_and_greedy_matches_homegpt(exported, hf):
    pipeline = need_transformers().pipeline

    from homegpt.sample import SampleOptions, generate

    run_dir, out, _ = exported
    model, tok = hf
    pipe = pipeline("text-generation", model=str(out), tokenizer=str(out), device="cpu")
    text = pipe("In the beginning", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("In the beginning") and len(text) > len("In the beginning")

    from homegpt.checkpoint import load_run

    run = load_run(run_dir, device="cpu")
    ids = torch.tensor([[0] + tok("In the")["input_ids"]])
    theirs = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                            eos_token_id=None)[0, ids.size(1):].tolist()
    ours = generate(run.model, run.tokenizer, ["In the"], SampleOptions(max_new_tokens=12, temperature=0))[0]
    assert ours.tokens == theirs[: len(ours.tokens)]


def test_repetition_penalty_matches_transformers(exported, hf):
    """homegpt's penalty is transformers' RepetitionPenaltyLogitsProcessor (both count the prompt's tokens)."""
    from homegpt.checkpoint import load_run
    from homegpt.sample import generate_ids

    run_dir, _, _ = exported
    model, tok = hf
    run = load_run(run_dir, device="cpu")
    ids = [0] + tok("The king said")["input_ids"]
    x = torch.tensor([ids])
    theirs = model.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=15, do_sample=False,
                            repetition_penalty=1.3, eos_token_id=None)[0, len(ids):].tolist()
    ours = torch.cat(list(generate_ids(run.model, [ids], 15, repetition_penalty=1.3)), 1)[0].tolist()
    assert ours == theirs


@pytest.mark.parametrize("block_size,tok_vocab", [(32, 300), (96, 700)])
def test_exports_of_other_block_and_vocab_sizes(tmp_path, docs, block_size, tok_vocab):
    run = make_run(tmp_path / "run", block_size, tok_vocab, docs)
    out = tmp_path / "hf"
    info = export_run(run, out, samples=[])
    model, tok = load_hf(out)
    assert model.config.n_positions == block_size
    assert model.config.vocab_size == info["vocab_size"] and info["vocab_size"] % 64 == 0
    assert info["vocab_size"] >= len(tok)  # the padded size is kept
    ids = [0] + tok(UNICODE_TEXT)["input_ids"][: block_size - 1]
    ours, _ = homegpt_logits(run, ids)
    with torch.no_grad():
        theirs = model(torch.tensor([ids])).logits[0]
    assert (theirs - ours).abs().max().item() < 1e-4


# --------------------------------------------------------------------------------------------- import


def test_export_then_import_gives_identical_weights(exported, tmp_path):
    from homegpt.checkpoint import load_run, model_state

    run_dir, out, _ = exported
    code = main(["import", str(out), "--out", str(tmp_path / "back")])
    assert code == 0
    a, b = load_run(run_dir, device="cpu"), load_run(tmp_path / "back", device="cpu")
    sa, sb = model_state(a.model), model_state(b.model)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert b.step == a.step and b.info["tokenizer_sha256"] == a.info["tokenizer_sha256"]
    assert json.loads((tmp_path / "back" / "eval.json").read_text())["val_loss"] == pytest.approx(
        json.loads((run_dir / "eval.json").read_text())["val_loss"])
    again = export_run(tmp_path / "back", tmp_path / "again", samples=[])  # and out again, unchanged
    from safetensors.torch import load_file

    x, y = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert again["step"] == a.step and all(torch.equal(x[k], y[k]) for k in x)


def test_imported_run_resumes_training(exported, data_dir, tmp_path):
    from homegpt.config import load_config
    from homegpt.train import train

    _, out, info = exported
    run = tmp_path / "run"
    import_hf(out, run)
    cfg = load_config(run / "config.toml", {"data_dir": str(data_dir), "max_steps": str(info["step"] + 2),
                                            "sample_tokens": "0", "eval_tokens": "256"})
    # One step, then stop as an interruption would (checkpoint written, no final evaluation): enough to show
    # that train.py accepts the imported checkpoint and continues from its step.
    result = train(cfg, run, resume=True, progress=False, log=lambda m: None, stop_after=1)
    assert result["step"] == info["step"] + 1
    assert (run / "checkpoints" / f"step-{info['step'] + 1:06d}" / "optimizer.safetensors").is_file()


def test_import_refuses_what_homegpt_cannot_compute(exported, tmp_path):
    import shutil

    _, out, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    cfg = json.loads((bad / "config.json").read_text())
    for change, match in ((dict(activation_function="relu"), "activation"), (dict(layer_norm_epsilon=1e-6), "eps"),
                          (dict(model_type="llama"), "llama")):
        (bad / "config.json").write_text(json.dumps(dict(cfg, **change)))
        with pytest.raises(UserError, match=match):
            import_hf(bad, tmp_path / "r")
    assert not (tmp_path / "r").exists()


# --------------------------------------------------------------------------------------------- card


def test_model_card_has_every_field(exported):
    run_dir, out, _ = exported
    card = (out / "README.md").read_text(encoding="utf-8")
    _, front, body = card.split("---\n", 2)
    meta = yaml.safe_load(front)
    ev = json.loads((run_dir / "eval.json").read_text())
    run_info = json.loads((run_dir / "run.json").read_text())
    assert meta["license"] == "mit" and meta["language"] == ["en"] and meta["library_name"] == "transformers"
    assert "homegpt" in meta["tags"] and meta["pipeline_tag"] == "text-generation"
    metrics = {m["type"]: m["value"] for m in meta["model-index"][0]["results"][0]["metrics"]}
    assert metrics["loss"] == pytest.approx(ev["val_loss"], abs=1e-4)
    assert metrics["perplexity"] == pytest.approx(ev["val_perplexity"], abs=1e-3)
    assert metrics["bits_per_byte"] == pytest.approx(ev["val_bpb"], abs=1e-4)
    for needle in (
        f"{run_info['params']['total']:,} exactly", "GPT2LMHeadModel", f"{ev['tokens_trained']:,}",
        "6·N·D + attention", "2-core test CPU", "$0.01", "wall time", f"{ev['val_loss']:.4f}",
        f"{ev['val_perplexity']:.2f}", f"{ev['val_bpb']:.4f}", "](loss.png)", "## Samples", "written during training",
        "from_pretrained", "## Limitations", "## Training data", f"{run_info['model']['block_size']} tokens",
    ):
        assert needle in body, needle
    from huggingface_hub import ModelCard

    parsed = ModelCard.load(out / "README.md")  # the Hub's own parser accepts the metadata
    assert parsed.data.eval_results and parsed.data.library_name == "transformers"


def test_card_lists_hub_datasets_and_says_what_is_unknown():
    from homegpt.card import render_card

    info = {"model": GPTConfig(n_layer=1, n_head=1, n_embd=8, block_size=8, vocab_size=64).to_dict(),
            "data_source": "hf:alice/stories", "data_dir": ""}
    card = render_card(info, None, {}, step=0, samples=[], has_loss_curve=False)
    meta = yaml.safe_load(card.split("---\n", 2)[1])
    assert meta["datasets"] == ["alice/stories"] and "model-index" not in meta
    assert "not recorded" in card and "loss.png" not in card


# --------------------------------------------------------------------------------------------- push and errors


def test_push_dry_run_lists_files_without_network_or_token_leak(exported, capsys, monkeypatch):
    run_dir, _, _ = exported
    secret = "hf_secret_token_value_do_not_print"
    monkeypatch.setenv("HF_TOKEN", secret)

    def no_network(*args, **kwargs):
        raise AssertionError("a dry run must not open connections")

    monkeypatch.setattr(socket.socket, "connect", no_network)
    code, out, err = run_cli(capsys, "push", run_dir, "alice/tiny-gpt", "--dry-run", "--private", "--json")
    assert code == 0, err
    r = json.loads(out.strip().splitlines()[-1])
    files = {f["path"] for f in r["files"]}
    assert {"model.safetensors", "config.json", "README.md", "tokenizer.json"} <= files
    assert r["private"] and r["dry_run"] and r["url"].endswith("/alice/tiny-gpt")
    assert secret not in out + err
    code, out, _ = run_cli(capsys, "push", run_dir, "alice/tiny-gpt", "--dry-run")
    assert code == 0 and "model.safetensors" in out and secret not in out


def test_push_without_a_token_says_so(exported, capsys, monkeypatch, tmp_path):
    import huggingface_hub.constants as hc

    for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "no-token"))
    code, out, err = run_cli(capsys, "push", exported[0], "alice/tiny-gpt")
    assert code == 2 and out == "" and "not logged in" in err and len(err.strip().splitlines()) == 1


def test_push_offline_and_unreachable_are_one_line_errors(exported, monkeypatch):
    import huggingface_hub.constants as hc

    from homegpt.hub import push_run

    secret = "hf_another_secret"
    monkeypatch.setenv("HF_TOKEN", secret)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="offline") as e:
        push_run(exported[0], "alice/tiny-gpt")
    assert secret not in str(e.value)
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", False)
    with pytest.raises(UserError, match="cannot reach") as e:
        push_run(exported[0], "alice/tiny-gpt", endpoint="http://127.0.0.1:9")  # nothing listens there
    assert secret not in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("repo_id", ["no-owner", "a/b/c", "alice/bad name", "alice/x--y", "alice/.hidden",
                                     "alice/" + "x" * 97, "alice/model.git"])
def test_invalid_repo_ids_exit_2(exported, capsys, repo_id):
    code, out, err = run_cli(capsys, "push", exported[0], repo_id, "--dry-run")
    assert code == 2 and out == "" and "invalid repo id" in err and len(err.strip().splitlines()) == 1


def test_bad_inputs_exit_2_with_one_line(exported, capsys, tmp_path, docs):
    run_dir, out, _ = exported
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    no_bias = make_run(tmp_path / "nobias", 16, 280, docs, bias=False)
    cases = {
        "missing run": ["export", tmp_path / "nope", tmp_path / "o1"],
        "non-empty out": ["export", run_dir, tmp_path / "full"],
        "missing run push": ["push", tmp_path / "nope", "alice/x", "--dry-run"],
        "bias-free model": ["export", no_bias, tmp_path / "o2"],
        "import missing": ["import", tmp_path / "nope", "--out", tmp_path / "o3"],
        "import non-empty": ["import", out, "--out", tmp_path / "full"],
        "import a run folder": ["import", run_dir, "--out", tmp_path / "o4"],
    }
    for name, args in cases.items():
        code, stdout, err = run_cli(capsys, *args)
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1, (name, err)
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "o2").exists()
    code, _, _ = run_cli(capsys, "export", run_dir, tmp_path / "full", "--force")
    assert code == 0 and (tmp_path / "full" / "keep.txt").exists() and (tmp_path / "full" / "config.json").exists()
