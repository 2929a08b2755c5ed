"""Chat fine-tuning on the built-in instruction task: held-out accuracy and <|im_end|> endings, before and after.

    python benchmarks/chat_task.py [--base runs/demo/run] [--out RUN-sft] [--n 400] [--json] [-- SFT FLAGS ...]

Scores the base run on the task's held-out conversations (homegpt/data/builtin_chat.py: verses never used for training,
the ChatML template as the prompt, greedy answers), fine-tunes it with the real command (`homegpt sft BASE
--data builtin --out OUT`, flags after `--` passed on, e.g. `-- --lr 0.01`), scores the SFT run the same way
and prints, for both, the share of exact answers (overall and per kind) and the share of answers that end
with <|im_end|>. An existing OUT is scored as it is (pass --retrain to fine-tune again).

Start from a demo run (`homegpt demo`, under 5 minutes on 2 CPU cores); results are in BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

from homegpt.chat.score import score_run
from homegpt.data.builtin_chat import KINDS, TEST_CONVERSATIONS


def fine_tune(base: Path, out: Path, flags: list[str]) -> float:
    t = time.perf_counter()
    cmd = [sys.executable, "-m", "homegpt", "sft", str(base), "--data", "builtin", "--out", str(out), "--force",
           "--no-progress", *flags]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"homegpt sft failed (exit {proc.returncode})")
    return time.perf_counter() - t


def table(before: dict, after: dict) -> str:
    rows = [("", "before SFT", "after SFT"),
            ("exact answers", f"{before['accuracy']:.1%}", f"{after['accuracy']:.1%}"),
            ("ending with <|im_end|>", f"{before['ends_with_im_end']:.1%}", f"{after['ends_with_im_end']:.1%}")]
    rows += [(f"  {k}", f"{before['per_kind'].get(k, 0):.1%}", f"{after['per_kind'].get(k, 0):.1%}") for k in KINDS]
    return "\n".join(f"{a:<26}{b:>12}{c:>12}" for a, b, c in rows)


def main() -> None:
    argv = sys.argv[1:]
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--base", default="runs/demo/run", help="the base run (default runs/demo/run)")
    p.add_argument("--out", help="the SFT run (default BASE-sft)")
    p.add_argument("--n", type=int, default=TEST_CONVERSATIONS, help="held-out conversations scored")
    p.add_argument("--retrain", action="store_true", help="fine-tune again even if OUT holds an SFT run")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    base = Path(args.base)
    out = Path(args.out) if args.out else base.with_name(base.name + "-sft")
    before = score_run(base, args.n)
    seconds = None
    if args.retrain or not (out / "run.json").is_file():
        seconds = fine_tune(base, out, extra)
    after = score_run(out, args.n)
    ev = json.loads((out / "eval.json").read_text())
    result = {"base": str(base), "sft_run": str(out), "conversations_scored": after["scored"],
              "before": {k: v for k, v in before.items() if k != "answers"},
              "after": {k: v for k, v in after.items() if k != "answers"},
              "sft_seconds": seconds, "sft_steps": ev["step"], "sft_val_loss": ev["val_loss"],
              "examples": after["answers"][:8], "flags": extra, "machine": platform.processor() or platform.machine(),
              "threads": torch.get_num_threads(), "date": time.strftime("%Y-%m-%d")}
    print(table(before, after))
    print(f"{after['scored']} held-out conversations ({after['skipped_too_long']} longer than the context skipped); "
          f"SFT: {ev['step']} steps" + (f" in {seconds:.0f} s" if seconds else "") +
          f", held-out loss {ev['val_loss']:.3f} nats per assistant token")
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
