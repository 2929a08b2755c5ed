"""Export a run as one GGUF file, the format llama.cpp, Ollama and LM Studio run, plus an Ollama Modelfile.

Written with the `gguf` package (llama.cpp's own writer, gguf-py), straight from the run's weights and
tokenizer.json: no converter script, whose pre-tokenizer check (a hash of a probe text's ids) never knows a
newly trained vocabulary. Which llama.cpp graph a run becomes:

    arch = "modern", mlp = "swiglu"  ->  qwen3   RMSNorm, QK-norm, NEOX rotary (transformers' rotate-half,
                                                 so q/k need no permutation), SiLU-gated MLP, no biases
    arch = "gpt2"                    ->  gpt2    learned positions, LayerNorm, tanh-GELU, biases (zeros for a
                                                 bias = false model), fused qkv, tied head
    arch = "modern", mlp = "relu2"   ->  refused: no llama.cpp graph computes ReLU² with QK-norm (qwen3's is
                                                 SiLU-gated only, arcee's ReLU² has no QK-norm), and one
                                                 that loaded would silently compute something else

Every setting that changes the computation is written explicitly (context, rope base, norm eps, head
dimensions, key/value heads); a missing rope base silently becomes 10000 in llama.cpp and 0 in Ollama.

The tokenizer goes in whole: tokens in id order, merges, token types (special tokens CONTROL, or llama.cpp
splits `<|im_start|>` into plain text), bos = eos = pad = `<|endoftext|>` (eos = `<|im_end|>` for a chat
run) and `add_bos_token = true`: homegpt starts every prompt after `<|endoftext|>`, as every training
document was, and that flag is what makes a runtime do the same (measured: without it llama.cpp's
continuations differ from `homegpt sample`). The pre-tokenizer is named by data/tokenizer.py's
llama_pre_tokenizer: "qwen2" for tokenizers homegpt trains now (which Ollama's qwen3 engine also applies,
whatever the file says), "gpt-2" for GPT-2-regex ones (that exact spelling; "gpt2" is refused at load).

Padding rows: homegpt's embedding has the tokenizer's size rounded up to 64 rows. Only the tokenizer's rows
are written (embedding and head), so the file has no untrained ids a runtime could sample (llama.cpp needs
as many tokens as rows, and on a random model sampled padding ids 253 times in 256). Softmax then runs
over the real tokens only; homegpt's runs over the padding rows too, whose probability training pushes to
~0: so logits agree exactly, probabilities to within that mass.

Tensor types (--quant): f32; f16, bf16 and q8_0 for the matrices with the norms (1-D) kept f32, as
llama.cpp's converter does; a matrix whose rows do not split into q8_0's 32-value blocks is written f16.
"""

from __future__ import annotations

import json
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import torch

from homegpt import __version__
from homegpt.data.tokenizer import EOT, IM_END, IM_START, llama_pre_tokenizer
from homegpt.errors import UserError
from homegpt.model.gpt import LAYER_NORM_EPS, RMS_NORM_EPS, GPTConfig, count_params

QUANTS = ("f32", "f16", "bf16", "q8_0")
DEFAULT_QUANT = "f16"
GGUF_ARCH = {"modern": "qwen3", "gpt2": "gpt2"}
MODELFILE = "Modelfile"
TOKEN_NORMAL, TOKEN_CONTROL = 1, 3  # gguf.TokenType values
# The chat template the GGUF carries: ChatML as Hugging Face documents it, which Ollama recognises (it
# matches a GGUF's template against the ones it knows by edit distance and never runs Jinja), after the
# bos token that homegpt's chat runs start every conversation with. llama.cpp drops a leading bos a
# template writes when it adds one itself, so the ids are homegpt's either way.
GGUF_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>' + '\\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Ollama's own syntax for the same prompt (Go templates); a Modelfile's TEMPLATE wins over any matching.
OLLAMA_CHAT_TEMPLATE = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n{{ end }}<|im_start|>assistant\n"
)
SAMPLING = {"temperature": 0.8, "top_k": 50}  # homegpt sample's defaults (generate/sample.py SampleOptions)


def check_quant(quant: str) -> str:
    if quant not in QUANTS:
        raise UserError(f"unknown --quant {quant!r}: use one of {', '.join(QUANTS)} (llama.cpp's llama-quantize "
                        f"makes the smaller types, such as Q4_K_M, from an f16 or f32 file)")
    return quant


def gguf_refusal(cfg: GPTConfig) -> str | None:
    """Why this model cannot be a GGUF that computes what homegpt computes, or None."""
    if cfg.arch == "modern" and cfg.mlp != "swiglu":
        return (f"this run's MLP is {cfg.mlp} (ReLU²), which no llama.cpp architecture computes together with "
                f"QK-norm, so llama.cpp, Ollama and LM Studio cannot run it; its transformers export "
                f"(homegpt export RUN OUT) runs exactly in transformers. Train with mlp = \"swiglu\" (the "
                f"default) for a model every runtime runs")
    return None


def gguf_name(name: str, quant: str) -> str:
    """The file name: the model's name (letters, digits, '.', '_', '-') and its tensor type, as the Hub's
    GGUF repositories spell them (Ollama's `hf.co/USER/REPO:Q8_0` picks a file by that suffix)."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-.") or "model"
    return f"{stem}-{quant.upper()}.gguf"


# --------------------------------------------------------------------------------------------- export


def export_gguf(run_dir: str | Path, out_dir: str | Path, quant: str = DEFAULT_QUANT, force: bool = False,
                step: int | str | None = None, name: str | None = None) -> dict:
    """Write OUT_DIR/NAME-QUANT.gguf and OUT_DIR/Modelfile from a run's checkpoint; returns what was written.

    Refusals (a ReLU² run, an unknown quant, a tokenizer llama.cpp would split differently, a non-empty
    OUT_DIR without force) come before anything is written; the files are written into a temporary folder
    beside OUT_DIR and moved in last, so a failure leaves OUT_DIR as it was.
    """
    from homegpt.rundir.checkpoint import load_run, model_state
    from homegpt.rundir.info import read_run_info
    from homegpt.share.export import chat_template_of, move_into, prepare_out

    check_quant(quant)
    run_path, out = Path(run_dir), Path(out_dir)
    cfg = GPTConfig.from_dict(read_run_info(run_path)["model"])
    refusal = gguf_refusal(cfg)
    if refusal:
        raise UserError(refusal)
    spec = json.loads((run_path / "tokenizer.json").read_text(encoding="utf-8"))
    pre = tokenizer_pre(spec)
    prepare_out(out, force)
    run = load_run(run_path, device="cpu", step=step)
    chat = chat_template_of(run_path) is not None
    name = name or out.resolve().name
    filename = gguf_name(name, quant)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        write_gguf(tmp / filename, cfg, model_state(run.model), spec, pre, quant, chat, name)
        (tmp / MODELFILE).write_text(modelfile(filename, chat), encoding="utf-8")
        stale = [p.name for p in out.glob("*.gguf")] + [MODELFILE] if out.is_dir() else []
        move_into(tmp, out, stale)  # --force: an earlier GGUF (of another quant too) does not survive
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return {"out_dir": str(out), "gguf": str(out / filename), "modelfile": str(out / MODELFILE),
            "step": run.step, "architecture": GGUF_ARCH[cfg.arch], "quant": quant,
            "params": count_params(cfg)["total"], "vocab_size": run.tokenizer.get_vocab_size(),
            "bytes": (out / filename).stat().st_size, "chat": chat}


def tokenizer_pre(spec: dict) -> str:
    """llama.cpp's name for how the tokenizer splits text (tokenizer.ggml.pre), or a UserError."""
    pre = llama_pre_tokenizer(spec)
    if pre is None:
        raise UserError("this run's tokenizer splits text in a way llama.cpp has no pre-tokenizer for (only "
                        "byte-level BPE with GPT-2's or Qwen2's split is exported): it cannot be a GGUF")
    return pre


def write_gguf(path: Path, cfg: GPTConfig, state: dict[str, torch.Tensor], spec: dict, pre: str, quant: str,
               chat: bool, name: str) -> None:
    """One GGUF file: the architecture's hyperparameters, the tokenizer (pre = tokenizer_pre(spec)), the weights."""
    import gguf

    tokens, types, merges = vocabulary(spec)
    arch = GGUF_ARCH[cfg.arch]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_description(f"trained from scratch with homegpt {__version__}")
    w.add_file_type(_FILE_TYPE[quant])
    w.add_quantization_version(gguf.GGML_QUANT_VERSION)
    _hyperparameters(w, cfg)
    w.add_tokenizer_model("gpt2")  # byte-level BPE
    w.add_tokenizer_pre(pre)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    eot = tokens.index(EOT)
    w.add_bos_token_id(eot)
    w.add_eos_token_id(tokens.index(IM_END) if chat else eot)
    w.add_pad_token_id(eot)
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)
    if chat:
        w.add_chat_template(GGUF_CHAT_TEMPLATE)
    for tname, array in gguf_tensors(cfg, state, len(tokens)).items():
        _add_tensor(w, tname, array, quant)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def _hyperparameters(w, cfg: GPTConfig) -> None:
    w.add_context_length(cfg.block_size)
    w.add_embedding_length(cfg.n_embd)
    w.add_block_count(cfg.n_layer)
    w.add_feed_forward_length(cfg.mlp_hidden)
    w.add_head_count(cfg.n_head)
    if cfg.arch == "gpt2":
        w.add_layer_norm_eps(LAYER_NORM_EPS)
        return
    w.add_head_count_kv(cfg.n_head)  # one key/value head per query head
    w.add_key_length(cfg.head_dim)
    w.add_value_length(cfg.head_dim)
    w.add_rope_freq_base(cfg.rope_theta)
    w.add_layer_norm_rms_eps(RMS_NORM_EPS)


def vocabulary(spec: dict) -> tuple[list[str], list[int], list[str]]:
    """(tokens in id order, their types, merges as "a b") from a tokenizer.json; ids must be 0..n-1."""
    by_id = {int(i): t for t, i in spec["model"]["vocab"].items()}
    special = set()
    for t in spec.get("added_tokens") or []:
        by_id[int(t["id"])] = t["content"]
        if t.get("special"):
            special.add(t["content"])
    n = len(by_id)
    if set(by_id) != set(range(n)):
        raise UserError("this run's tokenizer has gaps in its ids: it cannot be written as a GGUF vocabulary")
    tokens = [by_id[i] for i in range(n)]
    types = [TOKEN_CONTROL if t in special else TOKEN_NORMAL for t in tokens]
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"].get("merges", [])]
    return tokens, types, merges


# --------------------------------------------------------------------------------------------- tensors

# homegpt modern names (after "transformer.h.{i}.") -> llama.cpp qwen3 names (after "blk.{i}.")
QWEN3_BLOCK = {
    "ln_1.weight": "attn_norm.weight", "attn.c_q.weight": "attn_q.weight", "attn.c_k.weight": "attn_k.weight",
    "attn.c_v.weight": "attn_v.weight", "attn.q_norm.weight": "attn_q_norm.weight",
    "attn.k_norm.weight": "attn_k_norm.weight", "attn.c_proj.weight": "attn_output.weight",
    "ln_2.weight": "ffn_norm.weight", "mlp.c_gate.weight": "ffn_gate.weight", "mlp.c_fc.weight": "ffn_up.weight",
    "mlp.c_proj.weight": "ffn_down.weight",
}
GPT2_BLOCK = {  # homegpt GPT-2 names -> llama.cpp gpt2 names (every weight also has a bias)
    "ln_1": "attn_norm", "attn.c_attn": "attn_qkv", "attn.c_proj": "attn_output", "ln_2": "ffn_norm",
    "mlp.c_fc": "ffn_up", "mlp.c_proj": "ffn_down",
}
OUTER = {"transformer.wte.weight": "token_embd.weight", "transformer.wpe.weight": "position_embd.weight",
         "transformer.ln_f.weight": "output_norm.weight", "transformer.ln_f.bias": "output_norm.bias",
         "lm_head.weight": "output.weight"}
VOCAB_ROWS = ("token_embd.weight", "output.weight")  # cut to the tokenizer's rows


def gguf_tensors(cfg: GPTConfig, state: dict[str, torch.Tensor], n_tokens: int) -> dict[str, np.ndarray]:
    """The model's weights under llama.cpp's names, fp32, in PyTorch's (out, in) layout (gguf reverses it)."""
    out: dict[str, np.ndarray] = {}
    for key, t in state.items():
        if key in OUTER:
            name = OUTER[key]
        else:
            _, _, layer, rest = key.split(".", 3)  # transformer.h.{i}.{rest}
            if cfg.arch == "gpt2":
                module, _, kind = rest.rpartition(".")
                name = f"blk.{layer}.{GPT2_BLOCK[module]}.{kind}"
            else:
                name = f"blk.{layer}.{QWEN3_BLOCK[rest]}"
        array = t.detach().float().cpu().numpy()
        out[name] = np.ascontiguousarray(array[:n_tokens] if name in VOCAB_ROWS else array)
    if cfg.arch == "gpt2" and not cfg.bias:  # llama.cpp's gpt2 requires biases: zeros compute the same
        for name in [n for n in out if n.endswith(".weight") and not n.startswith(("token_embd", "position_embd",
                                                                                   "output."))]:
            out[name[: -len("weight")] + "bias"] = np.zeros(out[name].shape[0], np.float32)
    return out


def _add_tensor(w, name: str, array: np.ndarray, quant: str) -> None:
    import gguf

    if array.ndim == 1 or quant == "f32":
        w.add_tensor(name, array.astype(np.float32))
        return
    if quant == "f16" or (quant == "q8_0" and array.shape[-1] % gguf.GGML_QUANT_SIZES[
            gguf.GGMLQuantizationType.Q8_0][0]):
        w.add_tensor(name, array.astype(np.float16))
        return
    qtype = gguf.GGMLQuantizationType.BF16 if quant == "bf16" else gguf.GGMLQuantizationType.Q8_0
    w.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)  # the shape is read from the bytes


_FILE_TYPE = {"f32": 0, "f16": 1, "q8_0": 7, "bf16": 32}  # gguf.LlamaFileType: ALL_F32, MOSTLY_F16, ...


# --------------------------------------------------------------------------------------------- Ollama


def modelfile(gguf_file: str, chat: bool) -> str:
    """An Ollama Modelfile for the GGUF beside it: `ollama create NAME -f Modelfile`.

    A chat run gets ChatML in Ollama's template syntax and stops at <|im_end|>; a base model gets the prompt
    as it is (the model continues text). Both carry homegpt sample's sampling defaults."""
    lines = [f"# homegpt {__version__}: ollama create NAME -f Modelfile, then ollama run NAME", f"FROM ./{gguf_file}"]
    if chat:
        lines.append(f'TEMPLATE """{OLLAMA_CHAT_TEMPLATE}"""')
        lines.append(f'PARAMETER stop "{IM_END}"')
        lines.append(f'PARAMETER stop "{IM_START}"')
    else:
        lines.append('TEMPLATE """{{ .Prompt }}"""')
    lines.append(f'PARAMETER stop "{EOT}"')
    lines += [f"PARAMETER {k} {v}" for k, v in SAMPLING.items()]
    return "\n".join(lines) + "\n"
