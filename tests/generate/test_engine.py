"""The continuous-batching engine: rows that join and leave a running batch compute what they would alone."""

from __future__ import annotations

import random

import pytest
import torch

from homegpt.generate.engine import Engine, Sampling, Scheduler, Sequence
from homegpt.generate.sample import TextStream, generate_ids
from homegpt.model.gpt import GPT, GPTConfig

pytestmark = pytest.mark.usefixtures("one_thread")


def noisy_gpt(arch: str) -> GPT:
    torch.manual_seed(3)
    model = GPT(GPTConfig(n_layer=2, n_head=2, n_embd=32, block_size=48, vocab_size=96, arch=arch))
    for p in model.parameters():  # zero-initialised projections would make every position look alike
        torch.nn.init.normal_(p, std=0.3)
    return model.eval()


@pytest.fixture(scope="module", params=["trained-modern", "gpt2"])
def model(request, trained_run):
    if request.param == "gpt2":
        return noisy_gpt("gpt2")
    from homegpt.rundir.checkpoint import load_run

    return load_run(trained_run[0], device="cpu").model


def test_rows_joining_and_leaving_get_their_own_logits_and_tokens(model):
    """Rows of different lengths join at different steps; each step's logits equal the model's plain
    forward pass over that row alone, and each row's tokens equal its tokens decoded alone."""
    rng = random.Random(0)
    vocab = min(96, model.config.vocab_size)
    prompts = [[rng.randrange(vocab) for _ in range(n)] for n in (5, 1, 9, 3, 7)]
    settings = [Sampling(), Sampling(0.9, 20, None, 4), Sampling(), Sampling(1.0, None, 0.8, 9),
                Sampling(repetition_penalty=1.3)]
    budget = [12, 6, 10, 14, 8]
    engine = Engine(model, 3)
    seqs = [Sequence(p, s, n) for p, s, n in zip(prompts, settings, budget, strict=True)]
    waiting = list(seqs)
    step = 0
    with torch.inference_mode():
        while waiting or engine.rows:
            if waiting and engine.free() and step % 2 == 0:  # a new row every other step, while slots are free
                engine.add(waiting.pop(0))
            for row in [r for r in engine.rows if r.finished]:
                engine.remove(row)
            if not engine.rows:
                continue
            logits = engine.forward()
            for b, r in enumerate(engine.rows):
                ref, _ = model(torch.tensor([r.ids + r.tokens]))
                assert torch.allclose(logits[b], ref[0, -1], atol=1e-4), f"row {b} at step {step}"
            engine.take(logits)
            step += 1
    for seq, p, s, n in zip(seqs, prompts, settings, budget, strict=True):
        alone = torch.cat(list(generate_ids(model, [p], n, s.temperature, s.top_k, s.top_p, [s.seed],
                                            s.repetition_penalty)), dim=1)[0].tolist()
        assert seq.tokens == alone


def test_scheduler_admits_waiting_rows_as_slots_free_and_drops_cancelled_ones(model):
    vocab = min(96, model.config.vocab_size)
    rows = [Sequence([1 + i % (vocab - 1)], Sampling(0.8, 30, None, i), 4 + 3 * i) for i in range(6)]
    cancelled = Sequence([2], Sampling(), 30)
    scheduler = Scheduler(Engine(model, 2))
    scheduler.submit(rows[:3] + [cancelled] + rows[3:])
    cancelled.cancelled = True
    scheduler.drain()
    assert scheduler.peak == 2 and not scheduler.busy()
    assert cancelled.tokens == []
    for i, seq in enumerate(rows):
        alone = torch.cat(list(generate_ids(model, [seq.ids], seq.max_new_tokens, 0.8, 30, None, [i])), 1)
        assert seq.tokens == alone[0].tolist()


def test_text_stream_decodes_incrementally_as_a_whole_decode_would(trained_run):
    from homegpt.data.tokenizer import load_tokenizer

    tok = load_tokenizer(trained_run[0] / "tokenizer.json")
    rng = random.Random(1)
    ids = tok.encode("héllo — wörld ✓ 日本語 ").ids + [rng.randrange(1, tok.get_vocab_size()) for _ in range(200)]
    stream = TextStream(tok)
    shown = ""
    for t in ids:
        stream.add(t)
        shown += stream.take()
        assert stream.text == tok.decode(ids[: len(stream.tokens)])
    stream.close()
    shown += stream.take()
    assert shown == stream.text == tok.decode(ids) and stream.finish == "length"


def test_text_stream_stops_and_ends(trained_run):
    from homegpt.data.tokenizer import EOT, load_tokenizer

    tok = load_tokenizer(trained_run[0] / "tokenizer.json")
    eot = tok.token_to_id(EOT)
    stream = TextStream(tok, ("lo w",), {eot})
    for t in tok.encode("hello world").ids:
        if stream.add(t):
            break
    assert (stream.text, stream.finish, stream.take()) == ("hel", "stop", "hel")
    ended = TextStream(tok, (), {eot})
    assert not ended.add(tok.encode("a").ids[0]) and ended.add(eot)
    assert ended.finish == "eot" and ended.tokens == tok.encode("a").ids


def test_sampling_filters_each_row_with_its_own_settings_and_draws_from_its_distribution():
    from homegpt.model.gpt import draw, sampling_probs

    torch.manual_seed(0)
    logits = torch.randn(3, 50) * 3
    temps, ks, ps = [0.7, 1.0, 1.3], [5, 0, 0], [1.0, 0.6, 1.0]
    probs = sampling_probs(logits, temps, ks, ps)
    for b in range(3):  # the same distribution alone as in the batch, bitwise
        assert torch.equal(probs[b], sampling_probs(logits[b : b + 1], temps[b:b + 1], ks[b:b + 1], ps[b:b + 1])[0])
    assert set(probs[0].nonzero()[:, 0].tolist()) == set(logits[0].topk(5).indices.tolist())
    full = (logits[1]).softmax(-1).sort(descending=True)
    n = int((full.values.cumsum(0) < 0.6).sum()) + 1  # the smallest set whose mass reaches 0.6
    assert set(probs[1].nonzero()[:, 0].tolist()) == set(full.indices[:n].tolist())
    assert torch.allclose(probs[2], (logits[2] / 1.3).softmax(-1))
    g = torch.Generator().manual_seed(1)
    draws = draw(probs[:1].expand(20000, -1), torch.rand(20000, 1, generator=g))[:, 0]
    counts = torch.bincount(draws, minlength=50).float() / 20000
    assert counts[probs[0] == 0].sum() == 0 and torch.allclose(counts, probs[0], atol=0.015)
