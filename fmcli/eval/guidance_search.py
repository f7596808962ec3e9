"""``fm tune --guidance``: the guidance setting a checkpoint samples best with, found by measuring, then stored.

Every candidate (scale x interval x guide, ``fmcli.sampling.stored_guidance.guidance_grid``) samples the same
held-out noise (a seed no sampling default uses) with the checkpoint's default sampler, and is scored by
``fm eval``'s own extractor against the test split: FID, recall (diversity) and accuracy (``search_accuracy``:
class accuracy for a class model; for a text model, sampled with the test split's captions as ``fm eval``
samples it, the prompt-following rate on data with shape and colour attributes such as ``shapes``, and none on
a captioned folder without them). The unguided model (a text model: prompted, at cfg 1) is the baseline. A
candidate is admissible when its recall is at least ``min_recall`` x the baseline's and its FID no worse than
the baseline's: guidance may not buy accuracy with diversity or fidelity. Among the admissible, those reaching
``min_accuracy`` compete on FID; if none does, the most accurate wins (FID breaks ties). Without an accuracy
(unlabelled sampling, a text model on data without attributes) the lowest admissible FID wins. Fewer network
passes break what is left. Nothing admissible: no guidance, and the report says why.

Successive halving spends the samples where the choice is made: every candidate first samples a ``screen`` share
of ``num_samples``, the same rule with slack (``SLACK``) ranks them, and the ``finalists`` best (with the
baseline) go on with fresh held-out noise to the full count; the choice is made on the finalists' full rows. The
screened-out keep their screen rows (``num_samples`` says how many) in the report.
"""

import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from fmcli.errors import FMError
from fmcli.eval.features import Progress
from fmcli.eval.metrics import fid_min_samples
from fmcli.eval.prompts import caption_condition
from fmcli.eval.run import EvalContext, EvalOptions, prepare, score, table_row
from fmcli.eval.search_accuracy import Scorer, accuracy_scorer
from fmcli.sampling.options import MAX_SEED, SamplingOptions
from fmcli.sampling.stored_guidance import GUIDE_FILE, GuidanceSetting, StoredGuidance, guidance_grid

SEARCH_SEED = MAX_SEED - 1  # held out: fm sample, fm eval and the training previews never default to it (nor to
# SEARCH_SEED - 1, the finalists' second part)
# The screen's rule is the search's, loosened: recall down to (min_recall - 0.05) x, FID up to 1.1 x the baseline's,
# accuracy counted as reached from min_accuracy - 0.01 (a few hundred samples measure each to about that).
SLACK = {"recall": 0.05, "fid": 1.1, "accuracy": 0.01}


@dataclass(frozen=True)
class SearchOptions:
    scales: tuple[float, ...] = (2.0, 3.0)
    intervals: tuple[tuple[float, float] | None, ...] = (None, (0.2, 0.8))
    guides: tuple[str | None, ...] | None = None  # None: the null condition, and the run's guide.safetensors if any
    guide_labels: tuple[str, ...] = ("null",)  # the guide's velocity tried: its null condition, the same one
    min_recall: float = 0.95  # x the unguided recall
    min_accuracy: float = 0.99
    solver: str | None = None  # the sampler searched for; None: the checkpoint's default (heun 20, ...)
    steps: int | None = None
    eval: EvalOptions = field(default_factory=lambda: EvalOptions(num_samples=500, metrics=("fid", "pr")))
    screen: float = 0.25  # share of the samples every candidate gets before the finalists are chosen (1: no screen)
    finalists: int = 3  # candidates that go on to eval.num_samples

    def __post_init__(self) -> None:
        if not 0 < self.min_recall <= 1.5 or not 0 <= self.min_accuracy <= 1:
            raise FMError("--min-recall must be in (0, 1.5] and --min-accuracy in [0, 1]")
        if not 0 < self.screen <= 1 or self.finalists < 1:
            raise FMError("--screen must be in (0, 1] and --finalists at least 1")
        if not {"fid", "pr"} <= set(self.eval.metrics):
            raise FMError("the guidance search scores FID and recall: keep fid and pr in --metrics")


def run_guide(checkpoint: Path) -> str | None:
    """The guide fm train keeps beside a run's checkpoints (guide.safetensors), if there is one."""
    from fmcli.io.header import checkpoint_file

    guide = checkpoint_file(Path(checkpoint)).resolve().parent / GUIDE_FILE
    return str(guide) if guide.exists() else None


def choose(baseline: dict, rows: list[dict], min_recall: float, min_accuracy: float) -> tuple[dict, str]:
    """The row to store, and why (see the module's rule)."""
    admissible = [r for r in rows if r["recall"] >= min_recall * baseline["recall"] and r["fid"] <= baseline["fid"]]
    if not admissible:
        return baseline, "no guided setting kept the unguided recall and FID: no guidance"
    if baseline.get("accuracy") is None:
        best = min(admissible, key=lambda r: (r["fid"], r["passes"]))
        return best, "the lowest FID with the recall kept"
    reaching = [r for r in admissible if r["accuracy"] >= min_accuracy]
    if reaching:
        best = min(reaching, key=lambda r: (r["fid"], r["passes"]))
        return best, f"the lowest FID with accuracy >= {min_accuracy:g} and the recall and FID kept"
    best = max(admissible, key=lambda r: (r["accuracy"], -r["fid"], -r["passes"]))
    return best, f"no setting reached accuracy {min_accuracy:g}: the most accurate with the recall and FID kept"


def screened(baseline: dict, rows: list[dict], options: SearchOptions) -> list[dict]:
    """The ``finalists`` rows a screen keeps: the search's rule with ``SLACK``, ranked as ``choose`` ranks."""
    loose = [
        r
        for r in rows
        if r["recall"] >= (options.min_recall - SLACK["recall"]) * baseline["recall"]
        and r["fid"] <= SLACK["fid"] * baseline["fid"]
    ]
    target = options.min_accuracy - SLACK["accuracy"]

    def rank(r: dict) -> tuple:  # reaching the accuracy first (by FID), then the most accurate
        accuracy = r.get("accuracy")
        if accuracy is None:
            return (0, r["fid"], r["passes"])
        return (0, r["fid"], r["passes"]) if accuracy >= target else (1, -accuracy, r["fid"])

    return sorted(loose, key=rank)[: options.finalists]


@dataclass
class _Measured:
    """One candidate's samples so far: their features, count of accurate samples (``scorer``) and cost, part by
    part."""

    summary: dict
    scorer: Scorer | None
    features: list = field(default_factory=list)
    correct: float | None = 0.0

    def add(self, ctx: EvalContext, sampling: SamplingOptions, num: int, seed: int) -> "_Measured":
        view = replace(ctx, options=replace(ctx.options, num_samples=num))
        result, features, logits, summary = view.sample_features(replace(sampling, seed=seed))
        accuracy = None if self.scorer is None else self.scorer(result, logits)
        self.features.append(features)
        self.correct = None if accuracy is None or self.correct is None else self.correct + accuracy * num
        seconds = summary["seconds"] + (self.summary["seconds"] if self.summary else 0.0)
        self.summary = summary | {"num_samples": sum(len(f) for f in self.features), "seconds": round(seconds, 3)}
        return self

    def row(self, ctx: EvalContext) -> dict:
        metrics = score(ctx.reference, torch.cat(self.features), ctx.options)
        num = self.summary["num_samples"]
        return table_row(self.summary, metrics, None if self.correct is None else self.correct / num)


def search_guidance(checkpoint: Path, options: SearchOptions, progress: Progress | None = None) -> dict:
    """Measure every candidate on the same held-out noise and choose (nothing is written here)."""
    SamplingOptions(solver=options.solver, steps=options.steps)  # an unknown solver fails before any work
    started = time.perf_counter()
    # An image folder has no test split: its own images are the reference (the choice compares settings alike).
    ctx = prepare(
        checkpoint, replace(options.eval, sampling=SamplingOptions(seed=SEARCH_SEED)), progress, train_reference=True
    )
    loaded = ctx.loaded
    candidates, conditional = _candidates(ctx, checkpoint, options)
    scorer, measures = accuracy_scorer(ctx) if conditional else (None, None)
    base = SamplingOptions(solver=options.solver, steps=options.steps, seed=SEARCH_SEED).for_model(loaded.meta)

    def sampling(setting: GuidanceSetting) -> SamplingOptions:
        return replace(base, cfg=setting.scale, guidance_interval=setting.interval or (0.0, 1.0),
                       guide=setting.guide or "none", guide_label=setting.guide_label)  # fmt: skip

    # Rung 1: everyone on the screen's noise (all of it without a screen); rung 2: the finalists on fresh noise.
    total = options.eval.num_samples
    first = max(int(total * options.screen), fid_min_samples(ctx.extractor.dim))  # FID needs N > the dimension
    first = total if first >= total or len(candidates) <= options.finalists else first
    settings = [GuidanceSetting(1.0), *candidates]
    measured = [_Measured({}, scorer).add(ctx, sampling(s), first, SEARCH_SEED) for s in settings]
    rows = [m.row(ctx) for m in measured]
    if first < total:
        kept = {id(r) for r in screened(rows[0], rows[1:], options)}
        for index, row in enumerate(rows):
            if index == 0 or id(row) in kept:
                rows[index] = (
                    measured[index].add(ctx, sampling(settings[index]), total - first, SEARCH_SEED - 1).row(ctx)
                )
    baseline, rows = rows[0], rows[1:]
    finals = [r for r in rows if r["num_samples"] == total]
    best, why = choose(baseline, finals, options.min_recall, options.min_accuracy)
    chosen = GuidanceSetting(
        best["cfg"], best["interval"] and tuple(best["interval"]), best["guide"], best["guide_label"]
    )
    seconds = time.perf_counter() - started
    search = {
        "chosen": chosen.describe(),
        "why": why,
        "rule": f"recall >= {options.min_recall:g} x unguided, FID <= unguided"
        + ("" if baseline["accuracy"] is None else f", accuracy >= {options.min_accuracy:g}"),
        "accuracy": None if baseline["accuracy"] is None else measures,  # what the accuracy column measures
        "num_samples": total,
        "screen": {"num_samples": first, "finalists": options.finalists} if first < total else None,
        "seed": SEARCH_SEED,
        "extractor": ctx.extractor.name,
        "data": ctx.data.name,
        "reference_split": "test" if "test" in ctx.data.splits else ctx.data.splits[0],
        "baseline": baseline,
        "rows": rows,
        "seconds": round(seconds, 1),
    }
    sampler = {"solver": base.solver_name, "steps": base.steps, "weights": loaded.weights}
    return {"stored": StoredGuidance(chosen, conditional, sampler, search), "search": search}


def _candidates(ctx: EvalContext, checkpoint: Path, options: SearchOptions) -> tuple[list[GuidanceSetting], bool]:
    """The guided settings to measure, and whether sampling is conditional (class labels or prompts: the null
    condition is what classifier-free guidance steers away from; unlabelled sampling needs a guide)."""
    meta = ctx.loaded.meta
    if float((meta.train_config or {}).get("train_cfg") or 1.0) != 1.0:
        raise FMError(f"{checkpoint} has its guidance folded in (--train-cfg / fm distill): tune its teacher instead")
    conditional, text = meta.conditional, meta.condition == "text"
    if text and caption_condition(ctx.loaded, ctx.data, 1) is None:
        raise FMError(f"data set {ctx.data.name!r} has no captions to prompt this text model with (--data shapes)")
    dropout = "caption dropout" if text else "label dropout"
    if conditional and meta.label_dropout <= 0 and options.guides is None and run_guide(checkpoint) is None:
        raise FMError(
            f"{checkpoint} was trained without {dropout} and has no guide.safetensors: nothing to guide with "
            "(give --guides CKPT, an earlier checkpoint of the same data)"
        )
    guides = list(options.guides) if options.guides is not None else [None, run_guide(checkpoint)]
    if not conditional or meta.label_dropout <= 0:
        guides = [g for g in guides if g is not None]  # classifier-free guidance needs the unconditional velocity
    if not conditional and not guides:
        raise FMError(f"{checkpoint} is unconditional: only a --guides checkpoint can guide it")
    labels = options.guide_labels if conditional else ("same",)
    candidates = guidance_grid(list(options.scales), list(options.intervals), list(dict.fromkeys(guides)), labels)
    return [c for c in candidates if c.active], conditional
