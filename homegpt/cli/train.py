"""`homegpt train`: a TOML config (any key also a --key value flag) into a run directory."""

from __future__ import annotations

from pathlib import Path

from homegpt.cli.common import CONFIG_FLAGS_HELP, emit
from homegpt.errors import UserError


def cmd_train(args, overrides: list[str]) -> int:
    from homegpt.train.config import load_config, parse_overrides
    from homegpt.train.loop import EXIT_PREEMPTED, train

    config_path, out = args.config, args.out
    if config_path is not None and Path(config_path).is_dir():  # `homegpt train RUN --resume`
        out = out or config_path
        config_path = str(Path(config_path) / "config.toml")
    if config_path is None and args.resume and out:
        config_path = str(Path(out) / "config.toml")
    if config_path is None:
        raise UserError("give a config file (homegpt train CONFIG.toml) or --resume RUN")
    cfg = load_config(config_path, parse_overrides(overrides))
    if out is None:
        out = str(Path("runs") / Path(config_path).stem)
    result = train(cfg, out, resume=args.resume, force=args.force, progress=not args.no_progress)
    if not result:  # a non-zero rank under torchrun: rank 0 reports
        return 0
    if not result.get("finished", True):
        emit(result, args.json, [f"stopped at step {result['step']}: continue with homegpt train {out} --resume"])
        return EXIT_PREEMPTED if result.get("preempted") else 0
    lines = [f"run directory: {out}",
             f"held-out loss {result['val_loss']:.4f} | perplexity {result['val_perplexity']:.2f} | "
             f"{result['val_bpb']:.3f} bits/byte after {result['tokens_trained']:,} tokens"]
    emit(result, args.json, lines)
    return 0


def register(sub) -> None:
    tr = sub.add_parser("train", help="train a GPT from a TOML config; any config key can be given as --key value",
                        epilog=CONFIG_FLAGS_HELP)
    tr.add_argument("config", nargs="?", help="CONFIG.toml, or a run directory to resume")
    tr.add_argument("--out", help="run directory (default runs/CONFIG-NAME)")
    tr.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    tr.add_argument("--force", action="store_true", help="start over in a folder that holds another run")
    tr.add_argument("--no-progress", action="store_true")
    tr.add_argument("--json", action="store_true")
    tr.set_defaults(func=cmd_train, takes_overrides=True)
