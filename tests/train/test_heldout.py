import math

import numpy as np
import torch

from homegpt.data.tokenizer import EOT, load_tokenizer, round_vocab, token_byte_lengths
from homegpt.model.gpt import GPT, GPTConfig
from homegpt.train.heldout import evaluate_tokens


def test_bits_per_byte_matches_hand_computation(tokenizer_dir):
    tok = load_tokenizer(tokenizer_dir)
    text = "In the beginning was the word. Café 🙂, naïve.\n\nAnd the end."
    ids = [tok.token_to_id(EOT)] + tok.encode(text).ids
    vocab = round_vocab(tok.get_vocab_size())
    torch.manual_seed(0)
    model = GPT(GPTConfig(n_layer=1, n_head=2, n_embd=32, block_size=8, vocab_size=vocab)).eval()
    lengths = torch.tensor(token_byte_lengths(tok, vocab))
    got = evaluate_tokens(model, np.array(ids), lengths, batch_size=3)

    # By hand: predict every token after the first from at most 8 tokens of context, window by window.
    nats = 0.0
    for start in range(0, len(ids) - 1, 8):
        window = ids[start : start + 9]
        with torch.no_grad():
            logits, _ = model(torch.tensor([window[:-1]]))
        logp = torch.log_softmax(logits[0].double(), -1)
        nats -= sum(float(logp[i, t]) for i, t in enumerate(window[1:]))
    n_pred = len(ids) - 1
    assert got["tokens"] == n_pred
    assert got["bytes"] == len(text.encode("utf-8"))  # the leading EOT is not predicted and has no bytes
    assert math.isclose(got["loss"], nats / n_pred, rel_tol=1e-5)
    assert math.isclose(got["perplexity"], math.exp(nats / n_pred), rel_tol=1e-5)
    assert math.isclose(got["bpb"], nats / math.log(2) / len(text.encode("utf-8")), rel_tol=1e-5)
