"""A short fine-tuning run with attention dropout: do transformers and attnreg learn the same, step for step?

What it runs: for each model (a tiny ``LongformerForSequenceClassification`` and a tiny LongT5-TGlobal encoder with a
linear head on its first token), one random checkpoint with the configs' default dropout (Longformer
``attention_probs_dropout_prob=0.1``, ``hidden_dropout_prob=0.1``; LongT5 ``dropout_rate=0.1``) is fine-tuned
``--steps`` times with AdamW (learning rate decaying linearly to 0) by transformers' model and by attnreg's
(``attnreg.build(..., pretrained=...)``), once per seed (``--seeds``, default 3). A seed fixes the batches and the
global seed set before each step; both libraries of one seed see the same batches from the same initial weights and
the same random state (their dropout draws still differ: each consumes the generator in its own order). Every
``--eval-every`` steps each model is scored in eval mode (no dropout) on one fixed held-out set; at step 0 the two
libraries' scores must agree (the same weights), later ones show what each has learnt.

The task, synthetic and learnable by a tiny model in a few hundred steps: ``--length`` tokens (default 512) from a
vocabulary of 64 split in a low and a high half; each sequence has its own share of high tokens, uniform in
[0.3, 0.7]; the label says whether more than half of its tokens (after the first) are high. The first token has to
average over the whole sequence: Longformer's is a global token, LongT5's sees 127 neighbours on each side and the
rest through the Transient-Global block sums. The loss sits near ln 2 = 0.69 until the model finds the rule, then
falls.

How to read it: per model, each library's training loss over the first and the last ``--last`` steps and its final
held-out loss (mean over seeds, and their spread), then two paired differences attnreg - transformers: the per-step
training-loss difference averaged over the last ``--last`` steps, and the final held-out loss difference, each with a
95% confidence interval across seeds (Student's t; the seed is the unit of replication: within one run consecutive
steps are correlated and one trajectory's luck lasts, so an interval over steps would be far too narrow). Dropout draws
differ between the libraries, so the curves are never identical; they are called **indistinguishable** when both
intervals contain 0 (no systematic gap; each fails by chance 1 time in 20) and the final held-out gap is at most the
spread of one run's final held-out loss across seeds (the gap is within the noise of a single run). Exit status 1
when a model's curves are distinguishable. ``--plot FILE`` draws the curves and the differences; ``--json FILE``
writes every step's loss and time and every held-out score.

    python benchmarks/finetune.py --plot finetune.png --json finetune.json     # 300 steps, 3 seeds, both models
    python benchmarks/finetune.py --models longformer --seeds 5 --plot lf.png
    python benchmarks/finetune.py --steps 5 --length 128 --seeds 2 --eval-every 5   # smoke run
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import transformers
from harness import LONGFORMER_SIZES, begin, model_names, save_longformer, save_longt5, save_report
from torch import nn

import attnreg

MODELS = ("longformer", "longt5-tglobal")
LIBRARIES = (TRANSFORMERS, ATTNREG) = ("transformers", "attnreg")
VOCAB, CLS, LOW = 64, 0, 4  # ids below LOW are special (Longformer: 0 <s>, 1 <pad>, 2 </s>)
HELD_OUT = 64  # examples in the held-out set
LEARNT = 0.8  # a run has learnt when its last training losses average at most this share of chance, ln 2
SAME_START = 1e-4  # the largest step-0 held-out loss difference that still means "the same weights"
T_975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228}
"""Student's t two-sided 95% quantiles by degrees of freedom (seeds - 1); beyond, see ``t_975``."""


class FirstTokenClassifier(nn.Module):
    """An encoder with a linear classifier on its first token's final hidden state."""

    def __init__(self, encoder: nn.Module, head: nn.Linear) -> None:
        super().__init__()
        self.encoder, self.head = encoder, head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state[:, 0])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.splitlines()[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, of {', '.join(MODELS)}")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per run (default 300)")
    parser.add_argument("--seeds", type=int, default=3, help="runs per library, one per seed (default 3)")
    parser.add_argument("--last", type=int, help="training steps compared at the end (default: a third of --steps)")
    parser.add_argument("--eval-every", type=int, default=50, help="held-out scoring interval in steps (default 50)")
    parser.add_argument("--length", type=int, default=512, help="tokens per example (default 512)")
    parser.add_argument("--batch", type=int, default=8, help="examples per step (default 8)")
    parser.add_argument("--lr", type=float, default=1e-3, help="AdamW peak learning rate, decays linearly (1e-3)")
    parser.add_argument("--layers", type=int, default=2, help="encoder layers (default 2)")
    parser.add_argument("--dropout", type=float, default=0.1, help="attention and hidden dropout (default 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="the first seed; the weights come from it (default 0)")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's choice)")
    parser.add_argument("--plot", type=Path, help="draw the loss curves here (PNG)")
    parser.add_argument("--json", type=Path, help="write every step's loss and time, and the statistics, here")
    args = parser.parse_args(argv)
    args.models = model_names(parser, args.models, MODELS)
    for option in ("steps", "seeds", "eval_every", "batch", "layers"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1, got {getattr(args, option)}")
    if args.length < 2:
        parser.error(f"--length must be at least 2, got {args.length}")
    args.last = min(args.last or max(args.steps // 3, 1), args.steps)
    return args


def save_checkpoint(name: str, folder: str, args: argparse.Namespace) -> Any:
    """The tiny random checkpoint both libraries start from, dropouts at ``--dropout``; returns its config."""
    if name == "longt5-tglobal":
        return save_longt5(
            folder, name, size="tiny", layers=args.layers, seed=args.seed, vocab_size=VOCAB, dropout_rate=args.dropout
        )
    return save_longformer(
        folder,
        **{**LONGFORMER_SIZES["tiny"], "layers": args.layers},
        max_length=args.length,
        model_class=transformers.LongformerForSequenceClassification,
        seed=args.seed,
        vocab_size=VOCAB,
        num_labels=2,
        bos_token_id=0,
        eos_token_id=2,
        hidden_dropout_prob=args.dropout,
        attention_probs_dropout_prob=args.dropout,
    )


def load(name: str, library: str, folder: str, args: argparse.Namespace) -> nn.Module:
    """``library``'s model of ``name`` from ``folder``, in train mode (LongT5: with a head seeded by ``--seed``)."""
    if name == "longformer":
        if library == TRANSFORMERS:
            return transformers.LongformerForSequenceClassification.from_pretrained(folder).train()
        return attnreg.build(name, pretrained=folder).train()
    if library == TRANSFORMERS:
        encoder = transformers.LongT5EncoderModel.from_pretrained(folder)
    else:
        encoder = attnreg.build(name, pretrained=folder, head="encoder")
    torch.manual_seed(args.seed)
    return FirstTokenClassifier(encoder, nn.Linear(encoder.config.d_model, 2)).train()


def make_examples(count: int, length: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` examples of the task and their labels (1: more than half of the tokens after the first are high)."""
    half = (VOCAB - LOW) // 2
    share = 0.3 + 0.4 * torch.rand(count, 1, generator=generator)
    high = torch.rand(count, length, generator=generator) < share
    input_ids = LOW + torch.randint(0, half, (count, length), generator=generator) + half * high
    input_ids[:, 0] = CLS
    return input_ids, (high[:, 1:].float().mean(dim=1) > 0.5).long()


def training_batch(seed: int, step: int, args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor]:
    """Seed ``seed``'s batch at ``step``: the same for both libraries."""
    return make_examples(args.batch, args.length, torch.Generator().manual_seed(2**40 + seed * 1_000_000 + step))


def loss_and_logits(
    name: str, model: nn.Module, input_ids: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The cross-entropy of one batch and the logits (Longformer: the first token is its one global token)."""
    attention_mask = torch.ones_like(input_ids)
    if name == "longformer":
        global_attention_mask = torch.zeros_like(input_ids)
        global_attention_mask[:, 0] = 1
        logits = model(
            input_ids=input_ids, attention_mask=attention_mask, global_attention_mask=global_attention_mask
        ).logits
    else:
        logits = model(input_ids, attention_mask)
    return nn.functional.cross_entropy(logits, labels), logits


def held_out_loss(name: str, model: nn.Module, held_out: tuple[torch.Tensor, torch.Tensor], batch: int) -> float:
    """Mean cross-entropy on the held-out examples, in eval mode (no dropout: a function of the weights alone)."""
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, held_out[0].shape[0], batch):
            input_ids, labels = held_out[0][start : start + batch], held_out[1][start : start + batch]
            total += loss_and_logits(name, model, input_ids, labels)[0].item() * labels.shape[0]
    model.train()
    return total / held_out[0].shape[0]


@dataclass
class Run:
    """One fine-tuning run: each step's training loss and seconds, and the held-out loss at some steps."""

    library: str
    seed: int
    losses: list[float] = field(default_factory=list)
    seconds: list[float] = field(default_factory=list)
    held_out: dict[int, float] = field(default_factory=dict)


def fine_tune(name: str, library: str, seed: int, folder: str, args: argparse.Namespace, held_out: Any) -> Run:
    """``--steps`` AdamW steps of ``library``'s model, the learning rate falling linearly to 0 (a calm end to compare).

    The global seed is reset before each step (from ``seed`` and the step), so both libraries start each step from
    the same random state.
    """
    model = load(name, library, folder, args)
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0 - step / args.steps)
    run = Run(library, seed)
    for step in range(args.steps):
        if step % args.eval_every == 0:
            run.held_out[step] = held_out_loss(name, model, held_out, args.batch)
        input_ids, labels = training_batch(seed, step, args)
        start = time.perf_counter()
        torch.manual_seed(seed * 1_000_000 + step)
        loss, _ = loss_and_logits(name, model, input_ids, labels)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        run.seconds.append(time.perf_counter() - start)
        run.losses.append(loss.item())
    run.held_out[args.steps] = held_out_loss(name, model, held_out, args.batch)
    print(
        f"  {name}, {library}, seed {seed}: training loss {statistics.fmean(run.losses[-args.last :]):.3f} over the "
        f"last {args.last} steps, held-out {run.held_out[args.steps]:.3f}, "
        f"{statistics.median(run.seconds) * 1e3:.0f} ms per step",
        file=sys.stderr,
        flush=True,
    )
    return run


def t_975(degrees: int) -> float:
    """Student's t 97.5% quantile: the table, then the Cornish-Fisher expansion (within 0.002 from 11 on)."""
    if degrees in T_975:
        return T_975[degrees]
    z = 1.959964
    return z + (z**3 + z) / (4 * degrees) + (5 * z**5 + 16 * z**3 + 3 * z) / (96 * degrees**2)


def interval(values: list[float]) -> tuple[float, float | None]:
    """The mean and the half-width of its 95% confidence interval (Student's t), or ``None`` from one value."""
    mean = statistics.fmean(values)
    if len(values) < 2:
        return mean, None
    quantile = t_975(len(values) - 1)
    return mean, quantile * statistics.stdev(values) / math.sqrt(len(values))


def _spread(values: list[float]) -> float | None:
    return statistics.stdev(values) if len(values) > 1 else None


def compare(runs: dict[str, list[Run]], args: argparse.Namespace) -> dict[str, Any]:
    """One model's figures: per library and across seeds, the paired differences, the checks and the verdict."""
    last, first = args.last, max(min(args.steps // 10, 25), 1)
    found: dict[str, Any] = {"last_steps": last, "first_steps": first, "seeds": len(runs[TRANSFORMERS])}
    found["libraries"] = {
        library: {
            "first_loss": statistics.fmean(statistics.fmean(run.losses[:first]) for run in group),
            "last_loss": statistics.fmean(statistics.fmean(run.losses[-last:]) for run in group),
            "held_out": [run.held_out[args.steps] for run in group],
            "held_out_spread": _spread([run.held_out[args.steps] for run in group]),
            "median_step_ms": statistics.median(seconds for run in group for seconds in run.seconds) * 1e3,
        }
        for library, group in runs.items()
    }
    pairs = list(zip(runs[TRANSFORMERS], runs[ATTNREG], strict=True))
    start_gap = max(abs(ours.held_out[0] - theirs.held_out[0]) for theirs, ours in pairs)
    training = [
        statistics.fmean(a - b for a, b in zip(ours.losses[-last:], theirs.losses[-last:], strict=True))
        for theirs, ours in pairs
    ]
    final = [ours.held_out[args.steps] - theirs.held_out[args.steps] for theirs, ours in pairs]
    found["differences"] = {
        "start_held_out": start_gap,
        "training_per_seed": training,
        "training": interval(training),
        "held_out_per_seed": final,
        "held_out": interval(final),
    }
    spreads = [v["held_out_spread"] for v in found["libraries"].values() if v["held_out_spread"] is not None]
    noise = math.sqrt(statistics.fmean(spread * spread for spread in spreads)) if spreads else None
    found["held_out_noise"] = noise
    learned = {library: figures["last_loss"] <= LEARNT * math.log(2) for library, figures in found["libraries"].items()}
    checks: dict[str, bool] = {f"same start (step-0 held-out loss within {SAME_START:g})": start_gap <= SAME_START}
    if len(set(learned.values())) > 1:
        checks[f"both libraries learnt (training loss at most {LEARNT} ln 2)"] = False
    if len(pairs) >= 2:
        for what in ("training", "held_out"):
            mean, half = found["differences"][what]
            checks[f"{what.replace('_', '-')} gap: 95% CI contains 0"] = abs(mean) <= half
        mean = found["differences"]["held_out"][0]
        checks["held-out gap within one run's spread across seeds"] = abs(mean) <= noise
    if start_gap > SAME_START:
        verdict = "DISTINGUISHABLE"
    elif not any(learned.values()):
        verdict = f"inconclusive: neither library learnt (training loss above {LEARNT} ln 2; raise --steps)"
    elif not all(checks.values()):
        verdict = "DISTINGUISHABLE"
    elif len(pairs) < 2:
        verdict = "inconclusive: one seed gives no interval (--seeds 3 or more)"
    else:
        verdict = "indistinguishable"
    found.update(checks=checks, verdict=verdict, learned=learned)
    return found


def report_lines(name: str, found: dict[str, Any]) -> list[str]:
    """The printed comparison of one model."""

    def with_interval(mean: float, half: float | None) -> str:
        return f"{mean:+.4f}" + ("" if half is None else f" (95% CI {mean - half:+.4f} .. {mean + half:+.4f})")

    last, first, seeds = found["last_steps"], found["first_steps"], found["seeds"]
    lines = [
        f"## {name} ({seeds} seed{'s' if seeds > 1 else ''})",
        "",
        f"| library | training loss, first {first} steps | last {last} steps | final held-out loss per seed "
        "| spread (sd) | ms per step |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for library, figures in found["libraries"].items():
        spread = "-" if figures["held_out_spread"] is None else f"{figures['held_out_spread']:.4f}"
        lines.append(
            f"| {library} | {figures['first_loss']:.4f} | {figures['last_loss']:.4f} | "
            f"{', '.join(f'{value:.4f}' for value in figures['held_out'])} | {spread} | "
            f"{figures['median_step_ms']:.0f} |"
        )
    differences = found["differences"]
    lines += [
        "",
        "attnreg - transformers, paired by seed (same batches, same initial weights):",
        f"- held-out loss at step 0: {differences['start_held_out']:.1e} (the same weights: at most {SAME_START:g})",
        f"- training loss, per-step difference averaged over the last {last} steps: "
        f"{with_interval(*differences['training'])}",
        f"- final held-out loss: {with_interval(*differences['held_out'])}"
        + ("" if found["held_out_noise"] is None else f"; one run's spread across seeds {found['held_out_noise']:.4f}"),
    ]
    lines += [f"- {check}: {'yes' if passed else 'no'}" for check, passed in found["checks"].items()]
    lines.append(f"\nverdict: **{found['verdict']}**")
    return lines


def plot(results: dict[str, dict[str, Any]], path: Path) -> None:
    """Per model: training loss (20-step moving average; each seed faint, the mean of seeds bold), held-out loss, and
    the per-step training-loss difference attnreg - transformers."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(3, len(results), figsize=(6.5 * len(results), 9.5), squeeze=False, sharex="col")
    colours = {TRANSFORMERS: "tab:blue", ATTNREG: "tab:orange"}
    for column, (name, result) in enumerate(results.items()):
        training, held_out, gap = (axes[row][column] for row in range(3))
        runs = result["runs"]
        steps = range(1, len(runs[TRANSFORMERS][0]["losses"]) + 1)
        for library in LIBRARIES:
            curves = [_moving_average(run["losses"]) for run in runs[library]]
            for curve in curves:
                training.plot(steps, curve, color=colours[library], alpha=0.3, linewidth=0.8)
            training.plot(steps, _mean_curve(curves), color=colours[library], label=f"{library} (mean of seeds)")
            for index, run in enumerate(runs[library]):
                points = sorted((int(step), loss) for step, loss in run["held_out"].items())
                label = library if index == 0 else None
                xs, ys = [x for x, _ in points], [y for _, y in points]
                held_out.plot(xs, ys, marker="o", markersize=3, color=colours[library], alpha=0.6, label=label)
        differences = [
            _moving_average([a - b for a, b in zip(ours["losses"], theirs["losses"], strict=True)])
            for theirs, ours in zip(runs[TRANSFORMERS], runs[ATTNREG], strict=True)
        ]
        for index, difference in enumerate(differences):
            label = "each seed" if index == 0 else None
            gap.plot(steps, difference, color="tab:orange", alpha=0.4, linewidth=0.8, label=label)
        gap.plot(steps, _mean_curve(differences), color="tab:red", label="mean of seeds")
        gap.axhline(0.0, color="black", linewidth=0.8)
        start = len(steps) - result["stats"]["last_steps"] + 0.5
        for axis in (training, gap):
            axis.axvspan(start, len(steps) + 0.5, color="tab:green", alpha=0.08)
        training.set_title(f"{name}: {result['stats']['verdict']} (shaded: the steps compared)")
        training.set_ylabel("training loss (20-step average)")
        held_out.set_ylabel("held-out loss (eval mode)")
        gap.set_ylabel("attnreg - transformers, same batch")
        gap.set_xlabel("step")
        for axis in (training, held_out, gap):
            axis.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    pyplot.close(figure)


def _mean_curve(curves: list[list[float]]) -> list[float]:
    return [statistics.fmean(values) for values in zip(*curves, strict=True)]


def _moving_average(values: list[float], window: int = 20) -> list[float]:
    out, total = [], 0.0
    for index, value in enumerate(values):
        total += value - (values[index - window] if index >= window else 0.0)
        out.append(total / min(index + 1, window))
    return out


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = begin(args.threads, torch.device("cpu"))
    print(
        f"{args.steps} AdamW steps (lr {args.lr}, linear decay to 0), batch {args.batch} x {args.length} tokens, "
        f"tiny models of {args.layers} layers, dropout {args.dropout} (attention and hidden), seeds "
        f"{args.seed}..{args.seed + args.seeds - 1}, held-out set of {HELD_OUT} scored every {args.eval_every} steps\n",
        flush=True,
    )
    report: dict[str, Any] = {"environment": env, "settings": {**vars(args)}, "models": {}}
    held_out = make_examples(HELD_OUT, args.length, torch.Generator().manual_seed(2**50 + args.seed))
    distinguishable = False
    for name in args.models:
        runs: dict[str, list[Run]] = {library: [] for library in LIBRARIES}
        with tempfile.TemporaryDirectory() as folder, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            config = save_checkpoint(name, folder, args)
            for seed in range(args.seed, args.seed + args.seeds):
                for library in LIBRARIES:
                    runs[library].append(fine_tune(name, library, seed, folder, args, held_out))
        stats = compare(runs, args)
        distinguishable |= stats["verdict"] == "DISTINGUISHABLE"
        report["models"][name] = {
            "config": config.to_diff_dict(),
            "runs": {library: [vars(run) for run in group] for library, group in runs.items()},
            "stats": stats,
            "warnings": list(dict.fromkeys(f"{w.category.__name__}: {w.message}" for w in caught)),
        }
        print("\n".join(report_lines(name, stats)))
        for message in report["models"][name]["warnings"]:
            print(f"warning during the runs: {message}")
        print(flush=True)
    print(
        "'indistinguishable' means: across seeds, the 95% CIs of attnreg - transformers (training loss over the last "
        f"{args.last} steps, final held-out loss) contain 0, and the held-out gap is within one run's spread."
    )
    save_report(args.json, report)
    if args.json:
        print(f"written: {args.json}")
    if args.plot:
        plot(report["models"], args.plot)
        print(f"written: {args.plot}")
    return 1 if distinguishable else 0


if __name__ == "__main__":
    sys.exit(main())
