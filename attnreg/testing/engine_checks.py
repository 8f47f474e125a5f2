"""The checks every engine must pass for every pattern it accepts: numbers, padding, precision, locality, ...

Why one function per check: the table names the check that failed, and each check reads as the behaviour it
demands. Each takes a :class:`Context` and returns ``(status, detail)``.
"""

from __future__ import annotations

import traceback
from collections.abc import Callable

import torch

from attnreg.pattern.dense import DenseLayout
from attnreg.testing.context import Cases, Context
from attnreg.testing.execute import Refused, Run, compare_runs, difference, non_finite, run_engine, run_reference
from attnreg.testing.inputs import TOKEN_TENSORS, Inputs, block_sizes, lengths, long_length, make_inputs
from attnreg.testing.tolerances import PERTURBATION, SELF_CONSISTENCY, half_dtypes, tolerance

BATCH = 3


def _inputs(ctx: Context, length: int, dtype: torch.dtype = torch.float32, **options: object) -> Inputs:
    device, seed = ctx.device, ctx.seed
    return make_inputs(ctx.pattern, batch=BATCH, length=length, dtype=dtype, device=device, seed=seed, **options)


def _attempt(cases: Cases, label: str, action: Callable[[], None]) -> None:
    """Run one case; a refusal is recorded as such, an exception from the engine as a failure with its cause."""
    try:
        action()
    except Refused as refused:
        cases.refused(label, str(refused))
    except Exception as error:  # an engine that crashes fails the case, with where it crashed
        frame = traceback.extract_tb(error.__traceback__)[-1]
        cases.failed(label, f"raised {type(error).__name__}: {error} ({frame.filename}:{frame.lineno})")
    else:
        cases.ran += 1


def matches_reference(ctx: Context) -> tuple[str, str]:
    """Output and every gradient equal the float64 reference in float32, at every length, with padding and globals."""
    cases = Cases()
    for length in lengths(ctx.pattern, quick=ctx.quick):
        label = f"length {length}, float32, batch {BATCH}, padded, per-example globals"

        def case(length: int = length, label: str = label) -> None:
            inputs = _inputs(ctx, length)
            try:
                got, grad = run_engine(ctx.engine, inputs, grad=True), True
            except Refused as refused:  # a forward-only engine: check its output, say the gradients were not
                got, grad = run_engine(ctx.engine, inputs, grad=False), False
                cases.refused(label, f"gradients not checked: {refused}")
            problems = compare_runs(got, run_reference(inputs, grad=grad), tolerance(torch.float32))
            if problems:
                cases.failed(label, problems)

        _attempt(cases, label, case)
    return cases.verdict()


def _leak(values: torch.Tensor, padded: torch.Tensor, what: str, suffix: str) -> str | None:
    """Where ``values`` ``(batch, heads, length, dim)`` is largest at a ``padded`` ``(batch, length)`` position, if
    it is not exactly zero there: ``"{what} {position} of example {b} is {value}{suffix}"``."""
    leaked = values.abs().amax(dim=(1, 3))[padded]
    if not leaked.numel() or float(leaked.max()) == 0.0:
        return None
    b, position = padded.nonzero()[int(leaked.argmax())].tolist()
    return f"{what} {position} of example {b} is {float(leaked.max()):.3g}{suffix}"


def padding(ctx: Context) -> tuple[str, str]:
    """Padded queries give exact zeros and padded keys get no gradient; an all-padding example is zeros, not NaN."""
    cases = Cases()
    length = block_sizes(ctx.pattern)[-1] + 1
    label = f"length {length}, float32, last example all padding"

    def case() -> None:
        inputs = _inputs(ctx, length, all_padding_row=True)
        got = run_engine(ctx.engine, inputs, grad=True)
        problems = [non_finite("output", got.output)]
        problems += [non_finite(f"grad {name}", grad) for name, grad in got.grads.items()]
        padded = ~inputs.attention_mask
        problems.append(_leak(got.output, padded, "output at padded query", ", expected 0"))
        for name in ("k", "v", "global_k", "global_v"):
            if name in got.grads:
                problems.append(_leak(got.grads[name], padded, f"grad {name} at padded key", ": seen"))
        problems = [p for p in problems if p]
        if problems:
            cases.failed(label, problems)

    _attempt(cases, label, case)
    return cases.verdict()


def half_precision(ctx: Context) -> tuple[str, str]:
    """In half precision (bf16; fp16 too on CUDA) no NaN or inf forward or backward, and near the reference."""
    cases = Cases()
    largest = block_sizes(ctx.pattern)[-1]
    for dtype in half_dtypes(ctx.device):
        for length in (largest + 1,) if ctx.quick else (largest + 1, long_length(ctx.pattern)):
            label = f"length {length}, {str(dtype).removeprefix('torch.')}, padding, last example all padding"

            def case(length: int = length, dtype: torch.dtype = dtype, label: str = label) -> None:
                inputs = _inputs(ctx, length, dtype, all_padding_row=True)
                got = run_engine(ctx.engine, inputs, grad=True)
                problems = compare_runs(got, run_reference(inputs, grad=True), tolerance(dtype))
                if problems:
                    cases.failed(label, problems)

            _attempt(cases, label, case)
    return cases.verdict()


def _queries(inputs: Inputs) -> list[list[int]]:
    """A few queries of each example: first, middle and last real tokens, a global token and a padded one."""
    chosen = []
    for b in range(inputs.batch):
        real = inputs.attention_mask[b].nonzero().flatten().tolist()
        padded = (~inputs.attention_mask[b]).nonzero().flatten().tolist()
        globals_ = [] if inputs.global_mask is None else inputs.global_mask[b].nonzero().flatten().tolist()
        picks = [real[0], real[len(real) // 2], real[-1]] if real else []
        chosen.append(list(dict.fromkeys(picks + globals_[-1:] + padded[:1])))
    return chosen


def _perturb_unseen(inputs: Inputs, layout: DenseLayout, queries: dict[int, int]) -> Inputs:
    """Copy ``inputs`` changing, in each example ``b``, every input its query ``queries[b]`` may not depend on.

    Those are the keys and values outside the query's allowed set (token and aggregated), every other query, and
    the global projections of keys when the query is not a global row. Examples not in ``queries`` are unchanged.
    """
    length = inputs.length
    own = "global_q" in inputs.tensors
    changed = inputs.to(inputs.dtype)
    generator = torch.Generator().manual_seed(1000 + sum(queries.values()))
    for b, i in queries.items():
        token_unseen = ~layout.allowed[b, i, :length]
        global_row = own and bool(layout.global_rows[b, i])
        for name, tensor in changed.tensors.items():
            if name.endswith("bias_weight"):
                continue
            if name in ("q", "global_q") or (name.startswith("global_") and not global_row):
                unseen = torch.ones_like(token_unseen)
                if name in ("q", "global_q"):
                    unseen[i] = False
            elif name in TOKEN_TENSORS:
                unseen = token_unseen
            else:
                unseen = ~layout.allowed[b, i, length:]
            noise = torch.randn(tensor[b].shape, generator=generator).to(tensor) * PERTURBATION
            tensor[b] += noise * unseen.to(tensor)[None, :, None]
    return changed


def locality(ctx: Context) -> tuple[str, str]:
    """Changing any input a query may not see (keys outside its pattern, padding, other queries) leaves it unchanged."""
    cases = Cases()
    length = lengths(ctx.pattern, quick=True)[-1]
    label = f"length {length}, float32, padded, per-example globals"

    def case() -> None:
        inputs = _inputs(ctx, length)
        layout = ctx.pattern.materialize(length, inputs.attention_mask, inputs.global_mask)
        base = run_engine(ctx.engine, inputs, grad=False).output
        per_example = _queries(inputs)
        for round_ in range(max(map(len, per_example))):
            queries = {b: picks[round_] for b, picks in enumerate(per_example) if round_ < len(picks)}
            changed = run_engine(ctx.engine, _perturb_unseen(inputs, layout, queries), grad=False).output
            for b, i in queries.items():
                problem = difference(f"output of query {i}", changed[b, :, i], base[b, :, i], SELF_CONSISTENCY)
                if problem:
                    unseen = (~layout.allowed[b, i, :length]).nonzero().flatten().tolist()
                    cases.failed(
                        label,
                        f"example {b}: {problem} after changing only inputs it may not see "
                        f"(token keys it may not see: {_short(unseen)})",
                    )

    _attempt(cases, label, case)
    return cases.verdict()


def batch_independence(ctx: Context) -> tuple[str, str]:
    """Each example's output is the same alone as in a batch with differently padded others."""
    cases = Cases()
    length = block_sizes(ctx.pattern)[-1] + 3
    label = f"length {length}, float32, batch {BATCH} vs each example alone"

    def case() -> None:
        inputs = _inputs(ctx, length)
        together = run_engine(ctx.engine, inputs, grad=False).output
        for b in range(inputs.batch):
            alone = run_engine(ctx.engine, inputs.select(b), grad=False).output
            problem = difference(f"output of example {b}", together[b : b + 1], alone, SELF_CONSISTENCY)
            if problem:
                cases.failed(label, f"{problem} (batched vs alone)")

    _attempt(cases, label, case)
    return cases.verdict()


def determinism(ctx: Context) -> tuple[str, str]:
    """The same inputs give the same output (bit for bit) and the same gradients twice."""
    cases = Cases()
    length = block_sizes(ctx.pattern)[-1] + 3
    label = f"length {length}, float32, twice"

    def case() -> None:
        inputs = _inputs(ctx, length)
        first, second = run_engine(ctx.engine, inputs, grad=True), run_engine(ctx.engine, inputs, grad=True)
        problems = []
        if not torch.equal(first.output, second.output):
            problems.append(_differs("output", first, second))
        for name, grad in first.grads.items():
            problems.append(difference(f"grad {name} (second run)", second.grads[name], grad, SELF_CONSISTENCY))
        problems = [p for p in problems if p]
        if problems:
            cases.failed(label, problems)

    _attempt(cases, label, case)
    return cases.verdict()


def _differs(name: str, first: Run, second: Run) -> str:
    diff = (first.output.double() - second.output.double()).abs()
    return f"{name} differs between two identical runs: max |diff| {float(diff.max()):.3g}"


def _short(items: list[int], shown: int = 8) -> str:
    text = ", ".join(map(str, items[:shown]))
    return text + (f", ... ({len(items)} in all)" if len(items) > shown else "") if items else "none"
