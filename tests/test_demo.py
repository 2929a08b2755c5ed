"""`homegpt demo` end to end on a small text file, and its sizing rule."""

import json

from homegpt.cli import main
from homegpt.demo import choose_shape, demo_config
from homegpt.model.gpt import count_params


def test_demo_on_a_user_text_file(tmp_path, capsys, corpus_dir):
    text = "\n\n".join(p.read_text() for p in sorted(corpus_dir.iterdir())[:20])
    (tmp_path / "book.txt").write_text(text)
    code = main(["demo", "--data", f"file:{tmp_path / 'book.txt'}", "--out", str(tmp_path / "demo"),
                 "--seconds", "20", "--no-progress", "--json"])
    out, err = capsys.readouterr()
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    for key in ("val_loss", "val_perplexity", "val_bpb", "params", "tokens_trained", "seconds"):
        assert key in result
    assert 1 < result["val_perplexity"] < 2048 and 0 < result["val_bpb"] < 4
    run = tmp_path / "demo" / "run"
    for name in ("run.json", "config.toml", "tokenizer.json", "metrics.csv", "loss.png", "eval.json"):
        assert (run / name).is_file()
    assert list((run / "checkpoints").glob("step-*/model.safetensors"))
    assert "[5/5] samples" in err and "chose" in err
    assert set(result["phases"]) == {"startup", "tokenizer", "prepare", "sizing", "train", "samples"}
    assert result["seconds"] >= sum(result["phases"].values()) - 0.5  # counted from the command's start
    # a second demo into the same folder is refused without --force, and the run is untouched
    before = (run / "eval.json").read_bytes()
    assert main(["demo", "--data", f"file:{tmp_path / 'book.txt'}", "--out", str(tmp_path / "demo")]) == 2
    assert (run / "eval.json").read_bytes() == before


def test_more_text_than_the_budget_can_use_is_cut_and_said(tmp_path, source, monkeypatch):
    from homegpt.demo import demo_data

    monkeypatch.setattr("homegpt.demo.MAX_TOKENS", 20_000)  # 40 chapters: "more than the budget can train on"
    said, phases = [], []
    _, manifest = demo_data(source, tmp_path, 280.0, said.append, phases.append)
    assert manifest["stopped_at_max_tokens"] and 20_000 <= manifest["splits"]["train"]["tokens"] < 40_000
    assert any("the shards end with the document that passes 20,000 training tokens" in m for m in said), said
    assert phases == ["tokenizer", "prepare"]


def test_more_data_picks_a_bigger_model(tmp_path):
    """The sizing rule on a fixed speed model (speed falling with FLOPs per token, as on a real CPU)."""
    from homegpt.model.gpt import flops_per_token

    base = demo_config(tmp_path)
    speed = lambda cfg: {"tokens_per_s": 1.0e11 / flops_per_token(cfg.model_config(2048))}  # noqa: E731
    size = lambda c: count_params(c.model_config(2048))["total"]  # noqa: E731
    small, _ = choose_shape(base, 2048, 20_000, lambda: 240.0, speed)
    builtin, info = choose_shape(base, 2048, 1_080_000, lambda: 240.0, speed)
    large, _ = choose_shape(base, 2048, 500_000_000, lambda: 24_000.0, speed)
    assert size(small) < size(builtin) < size(large)
    assert info["params"] == size(builtin) and info["tokens"] > 0


def test_the_real_timing_path_picks_a_ladder_shape(tmp_path):
    from homegpt.demo import LADDER

    cfg, info = choose_shape(demo_config(tmp_path), 2048, 20_000, lambda: 30.0)
    assert (cfg.n_layer, cfg.n_embd) in LADDER and info["tokens_per_s"] > 0
