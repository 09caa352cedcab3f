"""The ``bioplaus`` command line (also ``python -m bioplaus_kernels.train``).

    bioplaus train                      # the embedded quickstart: FC net on scikit-learn's digits,
                                        # bp, fa, usf, dtp and sdtp compared in one table
    bioplaus train --dataset mnist --data-dir DIR --arch fc --algo bp fa dtp --preset bartunov2018:mnist-fc
    bioplaus train --resume --out RUN   # continue a run exactly where it stopped
    bioplaus reproduce bartunov2018 --dataset mnist --arch fc --algo bp fa dtp sdtp --max-minutes 10
    bioplaus bench lc2d --shape paper   # an op's kernels against its baseline (lc2d, linear, feedback, tp):
                                        # medians, ratios and time over the roofline floor

A run folder (--out) holds config.json, one sub-folder per rule (checkpoint.pt, metrics.csv, metrics.jsonl,
curves.png, tensorboard/), and the comparison: summary.md, summary.json, curves.png.

Distributed: launch with torchrun (``torchrun --nproc_per_node 8 -m bioplaus_kernels.train train ...``). Each
process joins the default process group (NCCL on GPUs, gloo on CPUs), reads its share of the data through a
DistributedSampler (set_epoch every epoch) and trains with --batch-size / world_size samples per step, so
--batch-size is the global batch. Feedback rules (bp, fa, dfa, usf, frsf, brsf) are wrapped in
DistributedDataParallel: the rules change only what a layer sends downwards, DDP's all-reduce hooks act on
the parameters' gradients after every backward hook (DFA's too), so the update equals the single-process
update on the global batch. Target propagation is not wrapped in DDP: its losses are local per layer, and
bioplaus_kernels.tp.Trainer all-reduces (averages) the gradients of the forward and of the inverse parameters
itself before each optimizer step. Only rank 0 prints, writes metrics and checkpoints; every rank reads the
checkpoint on --resume (multi-node resume needs the run folder on a shared filesystem). Evaluation sums
across ranks.

Bad input (unknown names, a number out of its range, missing or damaged data, an architecture that does not
fit, a bad checkpoint, a resume with changed settings) prints one line on stderr and exits with status 2; an
OS error (a full disk, a read-only folder) prints one line and exits with status 1; an interrupted run
(SIGINT/SIGTERM, also during an evaluation) saves its checkpoint and exits with 128 + the signal number.
"""
from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import math
import os
import re
import statistics
import sys
import time

from .errors import UsageError
from .presets import OPTIMIZERS, PRESETS, RULES, SCHEDULES, TP_RULES, Hyper, resolve

QUICKSTART_RULES = ["bp", "fa", "usf", "dtp", "sdtp"]

# Options whose default depends on the preset: None means "not given", and the preset's value is used.
_HYPER_OPTIONS = {  # option dest -> Hyper field
    "optimizer": "optimizer", "lr": "lr", "beta1": "beta1", "beta2": "beta2", "eps": "eps", "momentum": "momentum",
    "weight_decay": "weight_decay", "lr_step": "lr_step", "lr_gamma": "lr_gamma", "alpha": "alpha",
    "sigma": "sigma", "aux_width": "aux_width", "batch_size": "batch_size", "epochs": "epochs",
    "last_layer": "last_layer", "output_inverse": "output_inverse",
}
_INVERSE_OPTIONS = {"inverse_lr": "lr", "inverse_beta1": "beta1", "inverse_beta2": "beta2", "inverse_eps": "eps"}


def _number(kind, low=None, high=None, low_open=False, high_open=False):
    """An argparse type: a finite number of `kind` in the interval; the message names the bound and the value
    (argparse adds the option's name)."""
    if low is not None and high is not None:
        want = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        want = f"{'>' if low_open else '>='} {low:g}"
    else:
        want = "a number"
    noun = "an integer" if kind is int else "a finite number"

    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {noun} {want}, got {text!r}") from None
        ok = math.isfinite(v) and (low is None or (v > low if low_open else v >= low)) and \
            (high is None or (v < high if high_open else v <= high))
        if not ok:
            raise argparse.ArgumentTypeError(f"must be {noun} {want}, got {text}")
        return v
    parse.__name__ = kind.__name__  # argparse's "invalid <type> value" fallback
    return parse


_POSITIVE_INT = _number(int, 1)
_COUNT = _number(int, 0)
_POSITIVE = _number(float, 0, low_open=True)
_NONNEGATIVE = _number(float, 0)
_UNIT = _number(float, 0, 1, high_open=True)  # momentum and Adam's betas: [0, 1)


class _Parser(argparse.ArgumentParser):
    """argparse, with errors raised as UsageError so that the CLI prints them as one line."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message}")


def _run_options(p: argparse.ArgumentParser) -> None:
    """Options shared by train and reproduce."""
    p.add_argument("--data-dir", help="folder of the dataset's files (default ./data; digits needs none)")
    p.add_argument("--batch-size", type=_POSITIVE_INT, help="global batch size, split across torchrun processes (default: the preset's)")
    p.add_argument("--epochs", type=_POSITIVE_INT, help="epochs per rule (default: the preset's)")
    p.add_argument("--seed", type=_COUNT, default=0, help="seed of weights, feedback matrices, noise and shuffling (default: 0)")
    p.add_argument("--deterministic", action="store_true",
                   help="torch.use_deterministic_algorithms(True) (and cuDNN/cuBLAS settings to match)")
    p.add_argument("--device", default="auto", help="auto (default), cpu, cuda or cuda:N (torchrun: this process's GPU)")
    p.add_argument("--amp", action="store_true", help="bf16 autocast (CUDA only; target-propagation steps stay float32)")
    p.add_argument("--workers", type=_COUNT, default=0, help="DataLoader worker processes (default: 0)")
    p.add_argument("--threads", type=_POSITIVE_INT, help="torch CPU threads (default: 1 on digits, whose tiny layers run "
                   "slower when split across threads; torch's default otherwise)")
    p.add_argument("--out", help="run folder (default runs/<dataset>-<arch>-<time>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out exactly where it stopped")
    p.add_argument("--max-minutes", type=_NONNEGATIVE, help="wall-clock budget per rule (0: none); stops mid-epoch, resumable")
    p.add_argument("--steps-per-epoch", type=_POSITIVE_INT, help="train at most this many batches per epoch")
    p.add_argument("--checkpoint-every", type=_COUNT, default=0, metavar="N",
                   help="also checkpoint every N training steps, mid-epoch (default 0: at the end of every epoch "
                   "only); a resumed run continues exactly from the last one")
    p.add_argument("--log-every", type=_POSITIVE_INT, default=10, help="progress-bar update interval in steps (default: 10)")
    p.add_argument("--tensorboard", action="store_true", help="also write TensorBoard scalars")
    p.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bars")
    p.add_argument("--no-eval-train", dest="eval_train", action="store_false",
                   help="report the running training error instead of evaluating the training set each epoch")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="bioplaus", description="Train and compare biologically motivated learning rules, and "
                     "benchmark the package's kernels.")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)

    t = sub.add_parser("train", help="train one or several rules (several: a comparison, same seed)",
                       description="Train one or several learning rules on one dataset and network. Without "
                       "arguments: the FC net on scikit-learn's digits with " + ", ".join(QUICKSTART_RULES) + ".")
    t.add_argument("--dataset", default="digits", help="digits (default), mnist, fashion-mnist, cifar10, imagenet, or "
                   "synthetic:imagenet|cifar10|mnist (random data of that shape, no files: to measure images/s)")
    t.add_argument("--arch", default="fc",
                   help="fc (default), lc (the paper nets), conv (their weight-shared twins), resnet18, alexnet-bn, "
                   "or path/to/file.py:callable / package.module:callable")
    t.add_argument("--algo", nargs="+", default=None, metavar="RULE",
                   help=f"one or several of {', '.join(RULES)} (default: {' '.join(QUICKSTART_RULES)})")
    t.add_argument("--schedule", choices=SCHEDULES, default="alternating",
                   help="target propagation: inverse and forward losses on every batch (parallel) or one "
                   "kind per epoch (alternating, the default)")
    t.add_argument("--preset", help="named hyperparameters: " + ", ".join(sorted(PRESETS)) + " (default: "
                   "quickstart:digits on digits, bartunov2018:<dataset>-<arch> for the paper cells, "
                   "xiao2018:imagenet for resnet18/alexnet-bn on imagenet; plain Adam otherwise)")
    g = t.add_argument_group("optimizer (default: the preset's)")
    g.add_argument("--optimizer", choices=OPTIMIZERS, help="adam, sgd (momentum) or bm (Batch-Manhattan)")
    g.add_argument("--lr", type=_POSITIVE)
    g.add_argument("--beta1", type=_UNIT)
    g.add_argument("--beta2", type=_UNIT)
    g.add_argument("--eps", type=_POSITIVE)
    g.add_argument("--momentum", type=_UNIT, help="sgd and bm")
    g.add_argument("--weight-decay", type=_NONNEGATIVE)
    g.add_argument("--lr-step", type=_COUNT, help="multiply the learning rate by --lr-gamma every this many epochs "
                   "(0: never)")
    g.add_argument("--lr-gamma", type=_POSITIVE)
    g.add_argument("--last-layer", choices=("bp", "convert"),
                   help="feedback rules: keep the output layer on backprop (Xiao et al.) or convert it too "
                   "(Bartunov et al.); default: convert for fc/lc/conv, bp otherwise")
    g = t.add_argument_group("target propagation (default: the preset's)")
    g.add_argument("--inverse-lr", type=_POSITIVE, help="Adam of the inverse layers")
    g.add_argument("--inverse-beta1", type=_UNIT)
    g.add_argument("--inverse-beta2", type=_UNIT)
    g.add_argument("--inverse-eps", type=_POSITIVE)
    g.add_argument("--alpha", type=_POSITIVE, help="DTP: step size of the penultimate target")
    g.add_argument("--sigma", type=_NONNEGATIVE, help="std of the inverse-loss noise")
    g.add_argument("--aux-width", type=_POSITIVE_INT, help="AO-SDTP: auxiliary output units")
    g.add_argument("--output-inverse", choices=("probabilities", "logits"),
                   help="SDTP/AO-SDTP: what the output layer's inverse reads (the paper leaves it open; "
                   "default logits: probabilities diverged on MNIST, see docs/tp.md)")
    _run_options(t)

    r = sub.add_parser("reproduce", help="run a paper's protocol and print its numbers beside ours",
                       description="Reproduce the cells of Bartunov et al. 2018's Tables 1-2 with Table 5's "
                       "presets, under a budget.")
    r.add_argument("paper", help="bartunov2018")
    r.add_argument("--dataset", default="mnist", help="mnist (default), cifar10, imagenet, or fashion-mnist (run with "
                   "MNIST's rows and Table 5 configurations; the paper has no Fashion-MNIST numbers)")
    r.add_argument("--arch", default="fc", help="fc (default), lc, or conv (the BP ConvNet row)")
    r.add_argument("--algo", nargs="+", default=None, metavar="RULE",
                   help="rows to run (default: every row of the cell): " + ", ".join(RULES))
    r.add_argument("--schedule", nargs="+", choices=SCHEDULES, default=list(SCHEDULES),
                   help="target-propagation schedules to run (default: both)")
    _run_options(r)

    from ..bench import OPS
    b = sub.add_parser("bench", help="micro-benchmark an op of the package against its baseline",
                       description="Time an op of the package against a named baseline in the same run and print "
                       "a table of medians, ratios and time over the roofline floor: " + ", ".join(OPS) + ".")
    ops = b.add_subparsers(dest="op", metavar="OP", parser_class=_Parser, required=True)
    for op, what in OPS.items():
        module = importlib.import_module(f"..bench.{op}", __package__)
        doc = module.__doc__
        p = ops.add_parser(op, help=what, description=doc.split("\n\n")[0],
                           epilog=doc.split("\n\n", 1)[1], formatter_class=argparse.RawDescriptionHelpFormatter)
        module.add_arguments(p)
    return parser


def _default_preset(dataset: str, arch: str) -> str | None:
    if dataset == "digits":
        return "quickstart:digits"
    if f"bartunov2018:{dataset}-{arch}" in PRESETS:
        return f"bartunov2018:{dataset}-{arch}"
    if dataset == "imagenet" and arch in ("resnet18", "alexnet-bn"):
        return "xiao2018:imagenet"
    return None


def hyper_for(args: argparse.Namespace, rule: str, schedule: str, preset: str | None) -> Hyper:
    """The preset's hyperparameters for rule, overridden by every option given on the command line."""
    h = resolve(preset, rule, schedule)
    given = {field: getattr(args, dest) for dest, field in _HYPER_OPTIONS.items()
             if getattr(args, dest, None) is not None}
    inverse = {field: getattr(args, dest) for dest, field in _INVERSE_OPTIONS.items()
               if getattr(args, dest, None) is not None}
    if inverse:
        given["inverse"] = dataclasses.replace(h.inverse, **inverse)
    h = dataclasses.replace(h, **given)
    for name in ("batch_size", "epochs"):
        if getattr(h, name) < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be positive, got {getattr(h, name)}")
    return h


def _check_rules(algos: list[str]) -> None:
    from .rules import check_available
    for a in algos:
        if a not in RULES:
            raise UsageError(f"unknown rule {a!r}; choose from {', '.join(RULES)}")
        check_available(a)
    if len(set(algos)) != len(algos):
        raise UsageError(f"--algo lists a rule twice: {' '.join(algos)}")


def _load_config(out: str) -> dict:
    path = os.path.join(out, "config.json")
    if not os.path.isfile(path):
        raise UsageError(f"--resume: {out} is not a run folder (no config.json)")
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise UsageError(f"--resume: cannot read {path} ({e})") from None


def _explicit(parser: argparse.ArgumentParser, argv: list[str]) -> set[str]:
    """The option dests given on the command line (a resumed run keeps its saved values for the others)."""
    shadow = build_parser()
    for action in _all_actions(shadow):
        action.default = argparse.SUPPRESS
    return set(vars(shadow.parse_args(argv))) - {"command"}


def _all_actions(parser: argparse.ArgumentParser):
    for action in parser._actions:
        yield action
        if isinstance(action, argparse._SubParsersAction):
            for p in action.choices.values():
                yield from p._actions


def _settings(parser, argv: list[str]) -> argparse.Namespace:
    args = parser.parse_args(argv)
    if args.command is None:  # `bioplaus` alone: the quickstart is `bioplaus train`
        parser.print_help()
        raise SystemExit(0)
    if getattr(args, "resume", False):
        if args.out is None:
            raise UsageError("--resume needs --out RUN_FOLDER (the folder of the run to continue)")
        saved = _load_config(args.out)
        if saved.get("command") != args.command:
            raise UsageError(f"--resume: {args.out} holds a '{saved.get('command')}' run, not '{args.command}'")
        explicit = _explicit(parser, argv)
        merged = {**vars(args), **{k: v for k, v in saved.items() if k not in explicit}}
        args = argparse.Namespace(**merged)
        args.resume = True
    return args


def _prepare(args) -> tuple:
    import torch

    from . import distributed
    if args.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True)
        torch.backends.cudnn.benchmark = False
    threads = args.threads if args.threads is not None else (1 if args.dataset == "digits" else None)
    if threads is not None:
        if threads < 1:
            raise UsageError(f"--threads must be positive, got {threads}")
        torch.set_num_threads(threads)
    ctx, device = distributed.setup(args.device)
    if args.amp and device.type != "cuda":
        raise UsageError("--amp (bf16 autocast) needs a CUDA device")
    if args.out is None:
        # a user's "path/to/file.py:callable" or "synthetic:mnist" names no folders
        arch, dataset = (re.sub(r"[^\w.-]+", "_", v) for v in (args.arch, args.dataset))
        args.out = os.path.join("runs", f"{dataset}-{arch}-{time.strftime('%Y%m%d-%H%M%S')}")
        if ctx.distributed:  # every rank must write into rank 0's folder
            import torch.distributed as dist
            box = [args.out]
            dist.broadcast_object_list(box, src=0)
            args.out = box[0]
    return ctx, device


def _options(args, schedule: str):
    from .loop import RunOptions
    return RunOptions(dataset=args.dataset, arch=args.arch, schedule=schedule, seed=args.seed, amp=args.amp,
                      workers=args.workers, max_minutes=args.max_minutes or None, steps_per_epoch=args.steps_per_epoch,
                      log_every=max(1, args.log_every), tensorboard=args.tensorboard, progress=args.progress,
                      eval_train=args.eval_train, checkpoint_every=args.checkpoint_every)


def _save_config(args, ctx) -> None:
    if ctx.is_main:
        os.makedirs(args.out, exist_ok=True)
        config = {k: v for k, v in vars(args).items() if k != "resume"}
        from .checkpoints import remove_stale_temporaries, write_text_atomic
        remove_stale_temporaries(args.out)  # of config/summary writes a kill interrupted
        write_text_atomic(os.path.join(args.out, "config.json"), json.dumps(config, indent=2))


def _summary(results, args, folder: str) -> str:
    from .plots import learning_curves
    lines = [f"{args.dataset}/{args.arch}: error in %; training throughput in images/s (the median over epochs, "
             "evaluation excluded)", "",
             "| rule | epochs | train error | test error | best test error | test top-5 error | images/s | minutes | "
             "stopped by |",
             "|---|---|---|---|---|---|---|---|---|"]
    for res in results:
        f = res.final or {}
        train = f.get("train_error", f.get("train_error_running"))
        best = (res.best or {}).get("test_error")
        speeds = [r["images_per_second"] for r in res.rows if "images_per_second" in r]
        speed = f"{statistics.median(speeds):.1f}" if speeds else "-"
        cells = [res.label, f"{res.epochs:.2f}"] + ["-" if v is None else f"{v:.2f}" for v in
                                                   (train, f.get("test_error"), best, f.get("test_top5_error"))]
        lines.append("| " + " | ".join(cells + [speed, f"{res.seconds / 60:.2f}", res.status]) + " |")
    text = "\n".join(lines) + "\n"
    from .checkpoints import write_text_atomic
    write_text_atomic(os.path.join(folder, "summary.md"), text)
    write_text_atomic(os.path.join(folder, "summary.json"), json.dumps(
        [{"rule": r.rule, "label": r.label, "status": r.status, "epochs": r.epochs, "seconds": r.seconds,
          "final": r.final, "best": r.best} for r in results], indent=2))
    learning_curves({r.label: r.rows for r in results}, os.path.join(folder, "curves.png"),
                    f"{args.dataset}/{args.arch}")
    return text


def _run_all(args, plan, ctx, device, bundle) -> list:
    """Train every (label, rule, schedule, hyper, preset) of plan one after the other; stop at a signal."""
    from .loop import StopFlag, run_rule
    from .plots import learning_curves
    results = []
    with StopFlag() as stop:
        for label, rule, schedule, h, preset in plan:
            folder = os.path.join(args.out, label)
            if ctx.is_main:
                print(f"== {label}: {args.dataset}/{args.arch}, preset {preset or 'none'}, {h.optimizer} "
                      f"lr {h.lr:g}, batch {h.batch_size}, {h.epochs} epochs -> {folder}", flush=True)
            res = run_rule(_options(args, schedule), rule, label, h, bundle, folder, ctx=ctx, device=device,
                           resume=args.resume, stop=stop)
            results.append(res)
            if ctx.is_main and res.rows:
                learning_curves({label: res.rows}, os.path.join(folder, "curves.png"), f"{label} on "
                                f"{args.dataset}/{args.arch}")
            if res.status == "interrupted":
                return results, stop.signum
    return results, None


def _interrupted(args, signum, ctx) -> int:
    import signal
    if ctx.is_main:
        print(f"bioplaus: stopped by {signal.Signals(signum).name}; checkpoint saved. Continue with: bioplaus "
              f"{args.command} --resume --out {args.out}", file=sys.stderr)
    return 128 + signum


def _execute(args, plan, report) -> int:
    """Load the data, join the process group, train every entry of plan, then let rank 0 report."""
    from .data import build_datasets
    bundle = build_datasets(args.dataset, args.data_dir)
    ctx, device = _prepare(args)
    if args.resume:  # refuse changed settings before config.json takes them
        from . import checkpoints
        from .loop import CHECKPOINT, check_resume, resume_settings
        for label, rule, schedule, h, _ in plan:
            path = os.path.join(args.out, label, CHECKPOINT)
            if os.path.isfile(path):
                check_resume(path, checkpoints.load(path), resume_settings(_options(args, schedule), h,
                                                                          ctx.world_size))
    _save_config(args, ctx)
    results, signum = _run_all(args, plan, ctx, device, bundle)
    if signum is not None:
        return _interrupted(args, signum, ctx)
    if ctx.is_main:
        print(report(results, device))
        print(f"run folder: {args.out}")
    return 0


def cmd_train(args) -> int:
    algos = args.algo or QUICKSTART_RULES
    _check_rules(algos)
    from .data import real_name
    preset = args.preset if args.preset is not None else _default_preset(real_name(args.dataset), args.arch)
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"unknown preset {preset!r}; known: {', '.join(sorted(PRESETS))}")
    plan = []
    for rule in algos:
        label = f"{rule}-{args.schedule}" if rule in TP_RULES else rule
        plan.append((label, rule, args.schedule, hyper_for(args, rule, args.schedule, preset), preset))
    return _execute(args, plan, lambda results, device: _summary(results, args, args.out))


def cmd_reproduce(args) -> int:
    from . import reproduce
    from .plots import learning_curves
    if args.paper != reproduce.PAPER:
        raise UsageError(f"unknown paper {args.paper!r}; known: {reproduce.PAPER}")
    if args.algo is not None:
        _check_rules(args.algo)
    preset = reproduce.preset_cell(args.dataset, args.arch)
    plan = [(key, rule, schedule, hyper_for(args, rule, schedule, preset), preset)
            for key, rule, schedule in reproduce.rows_for(args.dataset, args.arch, args.algo, args.schedule)]

    env = reproduce.environment()

    def report(results, device) -> str:
        h = plan[0][3]
        budget = f"up to {h.epochs} epochs" + (f" or {args.max_minutes:g} minutes" if args.max_minutes else "") + \
            f" per rule, batch {h.batch_size}, seed {args.seed}, device {device}"
        learning_curves({reproduce.display_name(p[0]): r.rows for p, r in zip(plan, results)},
                        os.path.join(args.out, "curves.png"), f"{args.paper} {args.dataset}/{args.arch}")
        return reproduce.report(args.dataset, args.arch, [(p[0], r) for p, r in zip(plan, results)], budget,
                                args.out, env)
    return _execute(args, plan, report)


def cmd_bench(args) -> int:
    return importlib.import_module(f"..bench.{args.op}", __package__).run(args)


def _one_line(e: UsageError) -> str:
    """The message; from a DataLoader worker it arrives wrapped in the worker's traceback, whose last line is
    "<module>.UsageError: <message>"."""
    text = str(e).strip()
    if "\n" not in text:
        return text
    last = text.splitlines()[-1]
    return last.split("UsageError: ", 1)[-1]


def main(argv: list[str] | None = None) -> int:
    import torch
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    # process-wide settings a run changes (--threads, --deterministic), restored for callers of main()
    threads, deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    finished = False
    try:
        args = _settings(parser, argv)
        status = {"train": cmd_train, "reproduce": cmd_reproduce, "bench": cmd_bench}[args.command](args)
        finished = True
        return status
    except UsageError as e:
        print(f"bioplaus: error: {_one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("bioplaus: interrupted: stopped without saving a checkpoint", file=sys.stderr)
        return 130
    except FileNotFoundError as e:
        print(f"bioplaus: error: {e.filename or e}: not found", file=sys.stderr)
        return 2
    except OSError as e:  # a full disk, a read-only folder, ...: one line, no traceback
        where = f"{e.filename}: " if e.filename else ""
        print(f"bioplaus: error: {where}{e.strerror or e}", file=sys.stderr)
        return 1
    finally:
        from . import distributed
        distributed.teardown(finished)
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(deterministic)


if __name__ == "__main__":
    raise SystemExit(main())
