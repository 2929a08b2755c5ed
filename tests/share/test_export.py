"""Export to transformers and back, the model card, and `homegpt push --dry-run`; all offline."""

from __future__ import annotations

import json
import socket

import pytest
import torch
import yaml
from conftest import tiny_config
from safetensors.torch import load_file, save_file

from homegpt.cli import main
from homegpt.data.tokenizer import EOT
from homegpt.errors import UserError
from homegpt.model.gpt import GPT, GPTConfig, count_params
from homegpt.share.export import export_run, import_hf, write_run

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


def export_trained(run_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "tiny-gpt"
    info = export_run(run_dir, out, card_options={"hardware": "2-core test CPU", "cost_usd": 0.01})
    return run_dir, out, info


@pytest.fixture(scope="module")
def exported(trained_run, tmp_path_factory):
    """The default recipe's model (modern: SwiGLU, untied head), trained a few steps, exported (Qwen3)."""
    return export_trained(trained_run[0], tmp_path_factory)


@pytest.fixture(scope="module")
def exported_gpt2(data_dir, tmp_path_factory):
    """A GPT-2 trained a few steps, exported (GPT2LMHeadModel)."""
    from homegpt.train.loop import train

    run_dir = tmp_path_factory.mktemp("gpt2-run") / "run"
    train(tiny_config(data_dir, arch="gpt2"), run_dir, progress=False, log=lambda m: None)
    return export_trained(run_dir, tmp_path_factory)


@pytest.fixture(scope="module")
def untied_run(data_dir, tmp_path_factory):
    """A modern SwiGLU model with an untied head, trained a few steps."""
    from homegpt.train.loop import train

    run_dir = tmp_path_factory.mktemp("untied-run") / "run"
    train(tiny_config(data_dir, mlp="swiglu", tie_embeddings=False, max_steps=3, sample_tokens=0), run_dir,
          progress=False, log=lambda m: None)
    return run_dir


@pytest.fixture(scope="module")
def hf(exported):
    return load_hf(exported[1])


BOTH = pytest.mark.parametrize("which", ["exported_gpt2", "exported"])


@pytest.fixture(scope="module")
def docs(corpus_dir):
    return [p.read_text(encoding="utf-8") for p in sorted(corpus_dir.glob("*.txt"))[:20]]


def make_run(path, block_size: int, tok_vocab: int, docs: list[str], **model):
    """A run around a random GPT (no training; GPT-2 unless model says otherwise), with a tokenizer of about
    tok_vocab tokens. Every weight is perturbed: the modern initialisation zeroes the output projections,
    which would leave attention and the MLP out of the comparison, and sets every gain to 1."""
    from homegpt.data.sources import Corpus
    from homegpt.data.tokenizer import round_vocab, train_tokenizer_on
    from homegpt.rundir.checkpoint import model_state

    tok = train_tokenizer_on(Corpus("t", docs, []), tok_vocab)
    path.mkdir(parents=True)
    tok.save(str(path / "tokenizer.json"))
    torch.manual_seed(block_size)
    gpt = GPT(GPTConfig(**dict(dict(n_layer=2, n_head=2, n_embd=32, block_size=block_size,
                                    vocab_size=round_vocab(tok.get_vocab_size())), **model)))
    with torch.no_grad():
        for p in gpt.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    write_run(path, gpt.config, model_state(gpt))
    return path


def hf_param_count(cfg: GPTConfig) -> int:
    """What transformers' num_parameters() says: homegpt's count, plus the ReLU² export's second copy of c_fc."""
    extra = cfg.n_layer * cfg.mlp_hidden * cfg.n_embd if cfg.arch == "modern" and cfg.mlp == "relu2" else 0
    return count_params(cfg)["total"] + extra


def assert_logits_match(run_dir, hf_model, ids):
    ours, run = homegpt_logits(run_dir, ids)
    with torch.no_grad():
        theirs = hf_model(torch.tensor([ids])).logits[0]
    assert theirs.dtype == torch.float32
    assert (theirs - ours).abs().max().item() < 1e-4
    assert hf_model.num_parameters() == hf_param_count(run.model.config)
    return run


def homegpt_logits(run_dir, ids):
    from homegpt.rundir.checkpoint import load_run

    run = load_run(run_dir, device="cpu")
    with torch.no_grad():
        return run.model(torch.tensor([ids]))[0], run


# --------------------------------------------------------------------------------------------- export


def test_export_writes_a_transformers_folder(exported_gpt2):
    run_dir, out, info = exported_gpt2
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


def test_modern_export_is_a_qwen3(exported):
    run_dir, out, info = exported
    cfg = json.loads((out / "config.json").read_text())
    model = GPTConfig.from_dict(json.loads((run_dir / "run.json").read_text())["model"])
    assert model.arch == "modern" and model.mlp == "swiglu" and not model.tie_embeddings  # the default recipe
    assert cfg["architectures"] == ["Qwen3ForCausalLM"] == [info["architecture"]] and cfg["model_type"] == "qwen3"
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["num_attention_heads"], cfg["num_key_value_heads"],
            cfg["head_dim"], cfg["intermediate_size"], cfg["max_position_embeddings"], cfg["vocab_size"]) == (
        model.n_embd, model.n_layer, model.n_head, model.n_head, model.head_dim, model.mlp_hidden, model.block_size,
        model.vocab_size)
    assert cfg["hidden_act"] == "silu" and cfg["rms_norm_eps"] == 1e-6 and cfg["tie_word_embeddings"] is False
    assert cfg["rope_parameters"] == {"rope_type": "default", "rope_theta": model.rope_theta}
    assert not cfg["attention_bias"] and not cfg["use_sliding_window"]
    weights = load_file(str(out / "model.safetensors"))
    assert "lm_head.weight" in weights and all(w.dtype == torch.float32 for w in weights.values())
    for i in range(model.n_layer):  # SwiGLU's gate and up are matrices of their own (ReLU²'s gate = up is
        # checked by test_every_architecture_exports_and_imports_exactly: the import refuses gate != up)
        assert not torch.equal(weights[f"model.layers.{i}.mlp.gate_proj.weight"],
                               weights[f"model.layers.{i}.mlp.up_proj.weight"])


@BOTH
def test_transformers_logits_match_homegpt(which, request):
    run_dir, out, _ = request.getfixturevalue(which)
    model, _ = load_hf(out)
    assert_logits_match(run_dir, model, [0] + list(range(1, 60)))


@pytest.mark.parametrize("model", [
    dict(arch="gpt2"),
    dict(arch="modern", mlp="relu2"),
    dict(arch="modern", mlp="relu2", tie_embeddings=False),
    dict(arch="modern", mlp="swiglu", rope_theta=500.0),
    dict(arch="modern", mlp="swiglu", tie_embeddings=False, n_head=4, dropout=0.1),
], ids=["gpt2", "relu2", "relu2-untied", "swiglu", "swiglu-untied"])
def test_every_architecture_exports_and_imports_exactly(tmp_path, docs, model):
    """Logits equal transformers' within 1e-4 for each architecture and head; importing the export back gives
    the identical weights, config (dropout too, from homegpt.json) and logits."""
    from homegpt.rundir.checkpoint import load_run, model_state

    run = make_run(tmp_path / "run", 48, 400, docs, **model)
    out = tmp_path / "hf"
    info = export_run(run, out, samples=[])
    hf_model, tok = load_hf(out)
    assert type(hf_model).__name__ == info["architecture"]
    ids = [0] + tok(UNICODE_TEXT)["input_ids"][:47]
    assert_logits_match(run, hf_model, ids)
    import_hf(out, tmp_path / "back")
    a, b = load_run(run, device="cpu"), load_run(tmp_path / "back", device="cpu")
    assert a.model.config == b.model.config
    sa, sb = model_state(a.model), model_state(b.model)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    assert ("lm_head.weight" in sa) == (not a.model.config.tie_embeddings)
    with torch.no_grad():
        assert torch.equal(a.model(torch.tensor([ids]))[0], b.model(torch.tensor([ids]))[0])


def test_autotokenizer_ids_equal_homegpt_on_unicode(exported, hf):
    run_dir, _, _ = exported
    _, tok = hf
    from homegpt.data.tokenizer import load_tokenizer

    ours = load_tokenizer(run_dir / "tokenizer.json")
    assert tok.is_fast
    for text in (UNICODE_TEXT, " leading space", "\n\n\n", "a\tb", EOT + "after the marker"):
        ids = tok(text)["input_ids"]
        assert ids == ours.encode(text).ids
        assert tok.decode(ids) == text
    assert (tok.bos_token, tok.eos_token, tok.pad_token) == (EOT, EOT, EOT)
    assert tok.bos_token_id == tok.eos_token_id == tok.pad_token_id == ours.token_to_id(EOT)


@BOTH
def test_pipeline_generates_and_greedy_matches_homegpt(which, request):
    pipeline = need_transformers().pipeline

    from homegpt.generate.sample import SampleOptions, generate

    run_dir, out, _ = request.getfixturevalue(which)
    model, tok = load_hf(out)
    pipe = pipeline("text-generation", model=str(out), tokenizer=str(out), device="cpu")
    text = pipe("In the beginning", max_new_tokens=5, do_sample=False)[0]["generated_text"]
    assert text.startswith("In the beginning") and len(text) > len("In the beginning")

    from homegpt.rundir.checkpoint import load_run

    run = load_run(run_dir, device="cpu")
    ids = torch.tensor([[0] + tok("In the")["input_ids"]])
    theirs = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False,
                            eos_token_id=None)[0, ids.size(1):].tolist()
    ours = generate(run.model, run.tokenizer, ["In the"], SampleOptions(max_new_tokens=12, temperature=0))[0]
    assert len(ours.tokens) > 0 and ours.tokens == theirs[: len(ours.tokens)]


def test_repetition_penalty_matches_transformers(exported, hf):
    """homegpt's penalty is transformers' RepetitionPenaltyLogitsProcessor (both count the prompt's tokens)."""
    from homegpt.generate.sample import generate_ids
    from homegpt.rundir.checkpoint import load_run

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
    run = make_run(tmp_path / "run", block_size, tok_vocab, docs, arch="gpt2")
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


@BOTH
def test_export_then_import_gives_identical_weights(which, request, tmp_path):
    from homegpt.rundir.checkpoint import load_run, model_state

    run_dir, out, _ = request.getfixturevalue(which)
    code = main(["import", str(out), "--out", str(tmp_path / "back")])
    assert code == 0
    a, b = load_run(run_dir, device="cpu"), load_run(tmp_path / "back", device="cpu")
    assert a.model.config == b.model.config
    sa, sb = model_state(a.model), model_state(b.model)
    assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    ids = torch.tensor([[0] + list(range(5, 40))])
    with torch.no_grad():
        assert torch.equal(a.model(ids)[0], b.model(ids)[0])
    assert b.step == a.step and b.info["tokenizer_sha256"] == a.info["tokenizer_sha256"]
    assert json.loads((tmp_path / "back" / "eval.json").read_text())["val_loss"] == pytest.approx(
        json.loads((run_dir / "eval.json").read_text())["val_loss"])
    from homegpt.eval.evaluate import evaluate_run

    back = json.loads((tmp_path / "back" / "run.json").read_text())
    assert back["data_dir"] == ""  # an export carries no local paths
    # The source as a public one (builtin, hf:) would read: the original corpus, in place of its short name.
    (tmp_path / "back" / "run.json").write_text(json.dumps(dict(back, data_source=a.info["data_source"])))
    where = evaluate_run(tmp_path / "back", device="cpu")["where"]
    assert where.endswith("re-encoded (the run records no prepared data)"), where
    (tmp_path / "back" / "run.json").write_text(json.dumps(back))
    again = export_run(tmp_path / "back", tmp_path / "again", samples=[])  # and out again, unchanged
    assert json.loads((tmp_path / "again" / "config.json").read_text()) == json.loads((out / "config.json").read_text())
    x, y = load_file(str(out / "model.safetensors")), load_file(str(tmp_path / "again" / "model.safetensors"))
    assert again["step"] == a.step and all(torch.equal(x[k], y[k]) for k in x)


@BOTH
def test_imported_run_resumes_training(which, request, data_dir, tmp_path):
    from homegpt.train.config import load_config
    from homegpt.train.loop import train

    run_dir, out, info = request.getfixturevalue(which)
    run = tmp_path / "run"
    import_hf(out, run)
    saved = load_config(run / "config.toml")  # the model spelled out, with the run's own recipe
    original = load_config(run_dir / "config.toml")
    vocab = json.loads((run_dir / "run.json").read_text())["model"]["vocab_size"]
    assert saved.preset == "" and saved.arch and saved.model_config(vocab) == original.model_config(vocab)
    assert (saved.optimizer, saved.schedule, saved.lr) == (original.optimizer, original.schedule, original.lr)
    cfg = load_config(run / "config.toml", {"data_dir": str(data_dir), "max_steps": str(info["step"] + 2),
                                            "sample_tokens": "0", "eval_tokens": "256"})
    # One step, then stop as an interruption would (checkpoint written, no final evaluation): enough to show
    # that training accepts the imported checkpoint and continues from its step.
    result = train(cfg, run, resume=True, progress=False, log=lambda m: None, stop_after=1)
    assert result["step"] == info["step"] + 1
    assert (run / "checkpoints" / f"step-{info['step'] + 1:06d}" / "optimizer.safetensors").is_file()


def test_import_refuses_what_homegpt_cannot_compute(exported_gpt2, tmp_path):
    import shutil

    _, out, _ = exported_gpt2
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    cfg = json.loads((bad / "config.json").read_text())
    for change, match in ((dict(activation_function="relu"), "activation"), (dict(layer_norm_epsilon=1e-6), "eps"),
                          (dict(model_type="llama"), "llama")):
        (bad / "config.json").write_text(json.dumps(dict(cfg, **change)))
        with pytest.raises(UserError, match=match):
            import_hf(bad, tmp_path / "r")
    assert not (tmp_path / "r").exists()


QWEN3_REFUSALS = {
    "grouped-query": dict(num_key_value_heads=1),
    "head_dim": dict(head_dim=64),
    "attention bias": dict(attention_bias=True),
    "sliding-window": dict(use_sliding_window=True, sliding_window=16),
    "rope scaling of type 'linear'": dict(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1e4}),
    "rope scaling of type 'yarn'": dict(rope_parameters=None, rope_scaling={"type": "yarn", "factor": 4.0}),
    "rms_norm_eps": dict(rms_norm_eps=1e-5),
    "hidden_act 'gelu'": dict(hidden_act="gelu"),
    "hidden_act 'relu2'": dict(hidden_act="relu2"),
    "intermediate_size": dict(intermediate_size=96),
}


def test_import_refuses_qwen3s_homegpt_cannot_compute(exported, tmp_path, capsys, docs):
    """Each refusal is one line and exit code 2, and leaves --out alone."""
    import shutil

    _, out, _ = exported
    bad = tmp_path / "bad"
    shutil.copytree(out, bad)
    cfg = json.loads((bad / "config.json").read_text())
    for match, change in QWEN3_REFUSALS.items():
        (bad / "config.json").write_text(json.dumps(dict(cfg, **change)))
        code, stdout, err = run_cli(capsys, "import", bad, "--out", tmp_path / "r")
        assert code == 2 and stdout == "" and len(err.strip().splitlines()) == 1, (match, err)
        assert match in err, (match, err)
    relu2 = tmp_path / "relu2"  # a ReLU² export (gate_proj = up_proj) with one layer's gate changed
    export_run(make_run(tmp_path / "relu2-run", 16, 280, docs, arch="modern", mlp="relu2"), relu2, samples=[])
    weights = load_file(str(relu2 / "model.safetensors"))
    weights["model.layers.1.mlp.gate_proj.weight"] = weights["model.layers.1.mlp.gate_proj.weight"] + 1e-3
    save_file(weights, str(relu2 / "model.safetensors"))
    code, _, err = run_cli(capsys, "import", relu2, "--out", tmp_path / "r")
    assert code == 2 and "gate_proj != up_proj (layer 1)" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_import_of_a_qwen3_saved_by_transformers(exported, tmp_path):
    """A Qwen3 that homegpt never wrote (save_pretrained's own config.json: rope_parameters, no rope_theta key;
    an untied head; SwiGLU), with the tokenizer of an export: imported, it computes transformers' logits."""
    need_transformers()
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    d = 64
    hf_cfg = Qwen3Config(vocab_size=512, hidden_size=d, intermediate_size=GPTConfig(n_embd=d, mlp="swiglu",
                         arch="modern").mlp_hidden, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                         head_dim=16, max_position_embeddings=64, rope_parameters={"rope_type": "default",
                         "rope_theta": 1e6}, tie_word_embeddings=False)
    hf_model = Qwen3ForCausalLM(hf_cfg).eval()
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    src = tmp_path / "qwen3"
    hf_model.save_pretrained(src)
    import shutil

    shutil.copyfile(exported[1] / "tokenizer.json", src / "tokenizer.json")
    info = import_hf(src, tmp_path / "run")
    assert info["step"] == 0 and info["model"]["mlp"] == "swiglu" and info["model"]["rope_theta"] == 1e6
    assert info["model"]["tie_embeddings"] is False
    assert_logits_match(tmp_path / "run", hf_model, [0] + list(range(3, 60)))


# --------------------------------------------------------------------------------------------- untied heads


def test_untied_head_is_saved_and_reloaded(untied_run, tmp_path):
    """checkpoint.model_state keeps an untied head (it used to drop every lm_head.weight), and a checkpoint
    without it is refused in one line rather than loaded with a random head."""
    from homegpt.rundir.checkpoint import checkpoint_dirs, load_run, load_weights

    ckpt = checkpoint_dirs(untied_run)[-1]
    saved = load_file(str(ckpt / "model.safetensors"))
    assert "lm_head.weight" in saved and not torch.equal(saved["lm_head.weight"], saved["transformer.wte.weight"])
    run = load_run(untied_run, device="cpu")
    assert not run.model.config.tie_embeddings
    assert torch.equal(run.model.lm_head.weight, saved["lm_head.weight"])
    assert run.model.lm_head.weight.data_ptr() != run.model.transformer.wte.weight.data_ptr()
    headless = {k: v for k, v in saved.items() if k != "lm_head.weight"}
    with pytest.raises(UserError, match="no lm_head.weight"):
        load_weights(GPT(run.model.config), headless, ckpt)


def test_untied_trained_model_exports_with_its_head(untied_run, tmp_path):
    out = tmp_path / "hf"
    export_run(untied_run, out, samples=[])
    config = json.loads((out / "config.json").read_text())
    assert config["tie_word_embeddings"] is False and config["hidden_act"] == "silu"
    assert "lm_head.weight" in load_file(str(out / "model.safetensors"))
    model, _ = load_hf(out)
    assert_logits_match(untied_run, model, [0] + list(range(1, 60)))


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
        f"{run_info['params']['total']:,} exactly", "Qwen3ForCausalLM", "SwiGLU", "| runtimes | transformers (checked",
        "a plain Qwen3", "which vLLM runs", "Muon", f"{ev['tokens_trained']:,}",
        "6·N·D + attention", "2-core test CPU", "$0.01", "wall time", f"{ev['val_loss']:.4f}",
        f"{ev['val_perplexity']:.2f}", f"{ev['val_bpb']:.4f}", "](loss.png)", "## Samples", "written during training",
        "from_pretrained", "## Limitations", "## Training data", f"{run_info['model']['block_size']} tokens",
    ):
        assert needle in body, needle
    from huggingface_hub import ModelCard

    parsed = ModelCard.load(out / "README.md")  # the Hub's own parser accepts the metadata
    assert parsed.data.eval_results and parsed.data.library_name == "transformers"


def test_card_names_the_class_and_the_runtimes_of_each_architecture():
    from homegpt.share.card import render_card

    def card(**model):
        cfg = GPTConfig(n_layer=2, n_head=2, n_embd=64, block_size=16, vocab_size=128, **model)
        return render_card({"model": cfg.to_dict(), "data_source": "builtin"}, None, {}, step=0, samples=[],
                           has_loss_curve=False), cfg

    text, _ = card(arch="gpt2")
    assert "GPT2LMHeadModel" in text and "position embeddings" in text and "transformers only" not in text
    text, cfg = card(arch="modern", mlp="swiglu", tie_embeddings=False)
    assert "Qwen3ForCausalLM" in text and "SwiGLU" in text and "untied" in text
    assert "a plain Qwen3" in text and "llama.cpp, Ollama and LM Studio from its GGUF" in text and "vLLM runs" in text
    assert "transformers only" not in text and "homegpt export RUN OUT --format gguf" in text
    assert "llama-cli -m OUT/NAME-F16.gguf" in text and "ollama create my-model -f Modelfile" in text
    assert f"{count_params(cfg)['total']:,} exactly" in text and "transformers counts" not in text
    text, cfg = card(arch="modern", mlp="relu2")
    assert "transformers only" in text and "llama.cpp's Qwen3 assumes a SiLU-gated MLP" in text and "ReLU²" in text
    assert "vLLM's Qwen3 refuses" in text and "compute the wrong thing" in text
    assert "## Run it in llama.cpp / Ollama / LM Studio\n\nNot possible for this model" in text
    assert "llama-cli" not in text
    assert f"transformers counts {count_params(cfg)['total'] + 2 * 256 * 64:,}" in text
    assert yaml.safe_load(text.split("---\n", 2)[1])["tags"][1] == "qwen3"


def test_card_lists_hub_datasets_and_says_what_is_unknown():
    from homegpt.share.card import render_card

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

    from homegpt.share.hub import push_run

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
    no_bias = make_run(tmp_path / "nobias", 16, 280, docs, arch="gpt2", bias=False)
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
