"""``fm eval``: sample quality (FID, KID, precision/recall), class accuracy, likelihood, solver sweeps."""

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.table import Table

from fmcli import registry
from fmcli.cli._common import (
    DeviceOption,
    StageProgress,
    ThreadsOption,
    WeightsOption,
    cli_errors,
    console,
    err_console,
    parse_guides,
    parse_list,
    print_json,
    progress_bar,
    sampling_options,
    use_threads,
)
from fmcli.cli._prompts import prompt_rows as _prompt_rows
from fmcli.errors import FMError

METRICS = ("fid", "kid", "pr")  # fmcli.eval.run.METRICS, named here without importing torch
EXTRACTOR_HELP = (
    "Feature network: classifier (trained on the data set on first use, cached; default for MNIST and "
    "other 1-channel/small images), inception (FID Inception-v3, comparable to papers; default for RGB "
    ">= 32x32; needs pip install 'fmcli[inception]'), points (2-D toys). `fm plugins` lists all."
)


@cli_errors
@sampling_options(defaults={"cfg": 1.0}, step_lists=True)
def eval_command(
    checkpoint: Annotated[
        Optional[Path],
        typer.Argument(help="A .safetensors checkpoint or a run folder (uses its last.safetensors). Omit with --real."),
    ] = None,
    data: Annotated[
        Optional[str],
        typer.Option(
            help="Data set to score against (default: the checkpoint's own); with --real, the data set to score."
        ),
    ] = None,
    data_dir: Annotated[Optional[Path], typer.Option(help="Where data files live (else $FM_DATA_DIR).")] = None,
    num: Annotated[
        int,
        typer.Option(
            help=(
                "Number of generated samples (every figure states it). FID needs more than the feature "
                "dimension (129 for the classifier, 2049 for Inception)."
            )
        ),
    ] = 5000,
    metrics: Annotated[str, typer.Option(help="Comma-separated: fid, kid, pr (precision/recall).")] = ",".join(METRICS),
    extractor: Annotated[
        Optional[str], typer.Option(help=EXTRACTOR_HELP, autocompletion=registry.completer(registry.feature_extractors))
    ] = None,
    inception_weights: Annotated[
        Optional[Path],
        typer.Option(
            help=(
                "Local pt_inception-2015-12-05-6726825d.pth (or its safetensors conversion); otherwise "
                "downloaded once into the cache."
            )
        ),
    ] = None,
    k: Annotated[int, typer.Option(help="Neighbours defining the k-NN manifolds of precision/recall.")] = 3,
    kid_subsets: Annotated[int, typer.Option(help="Random subsets KID is averaged over (its ± is their std).")] = 100,
    kid_subset_size: Annotated[int, typer.Option(help="Samples per KID subset (capped at the sample count).")] = 1000,
    sampling=None,
    step_counts: list | None = None,
    weights: WeightsOption = "ema",
    device: DeviceOption = "auto",
    threads: ThreadsOption = None,
    real: Annotated[
        bool,
        typer.Option(
            "--real", help="Score real TRAIN images (same count) against the test split: the floor a model can reach."
        ),
    ] = False,
    class_histogram: Annotated[
        bool,
        typer.Option(
            "--class-histogram",
            help="Conditional models: also draw --num samples without a label and report their classes "
            "(does the model cover every class?). Doubles the sampling.",
        ),
    ] = False,
    nll: Annotated[
        bool,
        typer.Option("--nll", help="Also report the negative log-likelihood of test items (bits/dim for images)."),
    ] = False,
    nll_samples: Annotated[int, typer.Option(help="Test items for --nll.")] = 500,
    nll_solver: Annotated[str, typer.Option(help="Solver of the likelihood ODE (data t=0 -> noise t=1).")] = "dopri5",
    nll_steps: Annotated[int, typer.Option(help="Steps for a fixed-step --nll-solver.")] = 20,
    probes: Annotated[
        int, typer.Option(help="Hutchinson probes per item (more: lower variance; the spread is reported).")
    ] = 1,
    jumps: Annotated[
        bool,
        typer.Option(
            "--jumps",
            help="Interval (MeanFlow) models only, instead of the scores: the error of the one-step jumps from t = 1 "
            "and of the 2- and 4-step grids against an accurate solve of the teacher, beside one Euler step's.",
        ),
    ] = False,
    jump_samples: Annotated[int, typer.Option(help="Noise draws for --jumps (balanced over the classes).")] = 256,
    sweep_solvers: Annotated[
        Optional[str],
        typer.Option(
            "--sweep",
            help=(
                "Comma-separated solvers to compare, e.g. euler,heun,dopri5: every fixed-step solver runs"
                " at every --steps value, adaptive ones once per --rtols value."
            ),
        ),
    ] = None,
    grids: Annotated[
        Optional[str],
        typer.Option(
            help="Time grids a sweep compares, e.g. uniform,cosine,tuned (tuned: fm tune's grid, where one exists "
            "for the setting). \\[default: --time-grid if given, else uniform and tuned]",
            show_default=False,
        ),
    ] = None,
    cfgs: Annotated[
        Optional[str],
        typer.Option(help="Guidance scales a sweep compares, e.g. 1,2,3 (each with every --intervals and --guides)."),
    ] = None,
    intervals: Annotated[
        Optional[str],
        typer.Option(help='Guidance intervals a sweep compares, ";"-separated, e.g. "full;0.2,0.8" (t = 1 noise).'),
    ] = None,
    guides: Annotated[
        Optional[str],
        typer.Option(
            help="Guides a sweep compares, comma-separated checkpoints or none, e.g. none,runs/demo/guide.safetensors."
        ),
    ] = None,
    guide_labels: Annotated[
        Optional[str], typer.Option(help="Guide labels a sweep compares with each guide: null, same or null,same.")
    ] = None,
    rtols: Annotated[
        Optional[str],
        typer.Option(help="Tolerances for adaptive solvers in a sweep, e.g. 1e-3,1e-5 (default: --rtol)."),
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for sweep.json and sweep.png.")] = Path("eval"),
    cache_dir: Annotated[
        Optional[Path],
        typer.Option(
            help="Cache of classifiers, weights and reference features (default $FM_CACHE_DIR or ~/.cache/fmcli)."
        ),
    ] = None,
    clip_path: Annotated[
        Optional[Path],
        typer.Option(
            help="Text models: a local CLIP (a whole CLIPModel saved with save_pretrained) for the CLIP score of the "
            "images and their prompts (default: FM_CLIP_PATH, if it holds one). Never downloaded.",
        ),
    ] = None,
    offline: Annotated[bool, typer.Option("--offline", help="Never download (data or Inception weights).")] = False,
    json_output: Annotated[
        bool,
        typer.Option("--json", help="Print one JSON object with every figure, its sample count and the options."),
    ] = False,
) -> None:
    """Score a model: FID, KID and precision/recall against the test split, class accuracy, likelihood.

    Text models: prompt following too (an image-text scorer trained offline, CLIP score with --clip-path).

    Examples:

      fm eval runs/demo --num 10000

      fm eval runs/demo --nll --nll-samples 1000 --probes 4

      fm eval runs/demo --sweep euler,heun,dopri5 --steps 2,5,10,20 --num 2000 --out sweep/

      fm eval runs/demo --sweep euler --steps 4,8 --grids uniform,cosine,tuned --num 2000  (after fm tune --cfg 1)

      fm eval --real --data mnist --num 10000

      fm eval runs/student --jumps

      fm eval runs/text --clip-path ~/models/clip-vit-base-patch32 --num 2000

      fm eval runs/cifar --extractor inception --inception-weights pt_inception-2015-12-05-6726825d.pth --json
    """
    from fmcli.eval.nll import NLLOptions
    from fmcli.eval.real import evaluate_real
    from fmcli.eval.run import EvalOptions, evaluate_checkpoint
    from fmcli.eval.sweep import sweep

    machine = use_threads(threads, quiet=json_output)
    if jumps:
        _jumps(checkpoint, jump_samples, device, weights, json_output)
        return
    if sweep_solvers and step_counts == [None]:
        raise FMError("--sweep needs --steps, the step counts to compare, e.g. --steps 2,5,10,20")
    if not sweep_solvers and len(step_counts) != 1:
        raise FMError("--steps takes one number (a list only with --sweep)")
    if grids and not sweep_solvers:
        raise FMError("--grids is for a sweep (--sweep); use --time-grid for one run")
    solvers = parse_list(sweep_solvers, "--sweep") if sweep_solvers else None
    listed = cfgs or intervals or guides or guide_labels
    guidances = _guidances(cfgs, intervals, guides, guide_labels, sampling) if listed else None
    if guidances and not sweep_solvers:
        raise FMError(
            "--cfgs, --intervals and --guides are for a sweep (--sweep); use --cfg, --guidance-interval, --guide"
        )
    tolerances = parse_list(rtols, "--rtols", float) if rtols else None
    if real and checkpoint is not None:
        raise FMError("--real scores real images; give either a checkpoint or --real, not both")
    if real and data is None:
        raise FMError("--real needs --data (the data set whose train split is scored against its test split)")
    if not real and checkpoint is None:
        raise FMError("give a checkpoint to evaluate, or --real --data NAME for the real-data floor")
    if clip_path is not None and (real or solvers):
        raise FMError("--clip-path scores one text model's images against their prompts: not with --real or --sweep")
    options = EvalOptions(
        num_samples=num,
        metrics=tuple(parse_list(metrics, "--metrics")),
        extractor=extractor,
        k=k,
        kid_subsets=kid_subsets,
        kid_subset_size=kid_subset_size,
        sampling=sampling,
        weights=weights,
        device=device,
        data=data,
        data_dir=data_dir,
        cache_dir=cache_dir,
        inception_weights=inception_weights,
        download=not offline,
        class_histogram=class_histogram,
        clip_path=clip_path,
        nll=NLLOptions.from_sampling(sampling, samples=nll_samples, solver=nll_solver, steps=nll_steps, probes=probes)
        if nll
        else None,
    )
    with progress_bar() as bar:
        progress = StageProgress(bar)
        if real:
            report = evaluate_real(data, options, progress)
        elif solvers:
            report = sweep(
                checkpoint,
                options,
                solvers,
                step_counts,
                rtols=tolerances,
                out_dir=out,
                progress=progress,
                grids=parse_list(grids, "--grids") if grids else None,
                guidances=guidances,
            )
        else:
            report = evaluate_checkpoint(checkpoint, options, progress)
    if json_output:
        print_json(report | {"machine": machine})
    elif solvers and not real:
        _print_sweep(report)
    else:
        _print_report(report)


def _fmt(value, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _print_report(report: dict) -> None:
    title = "real train images vs test" if report.get("real") else str(report["checkpoint"])
    table = Table(title=f"fm eval: {title}", title_justify="left")
    for column in ("figure", "value", "samples", "notes"):
        # Figures and numbers never wrap (a split "0.9" reads as two numbers); the notes fold.
        table.add_column(
            column,
            justify="right" if column in ("value", "samples") else "left",
            no_wrap=column != "notes",
            overflow="fold" if column == "notes" else None,
        )
    metrics = report["metrics"]
    ref = report["reference"]["num_items"]
    if "fid" in metrics:
        table.add_row(
            "FID",
            _fmt(metrics["fid"]["value"]),
            str(metrics["fid"]["num_samples"]),
            f"vs {ref} test items (biased upwards at small N)",
        )
    if "kid" in metrics:
        kid = metrics["kid"]
        table.add_row(
            "KID",
            f"{kid['value']:.5f} ± {kid['std']:.5f}",
            str(kid["num_samples"]),
            f"unbiased; subsets of {kid['subset_size']}",
        )
    for name in ("precision", "recall"):
        if name in metrics:
            entry = metrics[name]
            what = "fidelity" if name == "precision" else "diversity"
            table.add_row(
                name,
                _fmt(entry["value"]),
                str(entry["num_samples"]),
                f"{what}; k={entry['k']}, {entry['num_reference']} real",
            )
    conditional = report.get("conditional")
    if conditional:
        table.add_row(
            "class accuracy",
            f"{conditional['accuracy']:.2%}",
            str(conditional["num_samples"]),
            f"classifier test accuracy {_pct(conditional.get('classifier_test_accuracy'))}",
        )
        per_class = "  ".join(f"{name}:{_pct(value, 0)}" for name, value in conditional["per_class"].items())
        table.add_row("  per class", "", "", per_class)
    prompts = report.get("prompts")
    if prompts:
        _prompt_rows(table, prompts)
    histogram = report.get("class_histogram")
    if histogram:
        counts = "  ".join(f"{name}:{count}" for name, count in histogram["counts"].items())
        table.add_row("class histogram", "", str(histogram["num_samples"]), f"{histogram['source']}: {counts}")
    nll = report.get("nll")
    if nll:
        spread = f" ± {nll['bits_per_dim_stderr']:.3f}" if nll.get("bits_per_dim_stderr") is not None else ""
        notes = f"{nll['divergence']} divergence, {nll['solver']}, NFE {nll['nfe']}"
        if nll.get("probe_std_bits_per_dim") is not None:
            notes += f", probe std {nll['probe_std_bits_per_dim']:.3f}"
        table.add_row("NLL (bits/dim)", f"{nll['bits_per_dim']:.4f}{spread}", str(nll["num_samples"]), notes)
    sampling = report["sampling"]
    if not report.get("real"):
        table.add_row(
            "sampling",
            f"{sampling['seconds']:.2f} s",
            str(sampling["num_samples"]),
            f"{sampling['solver']}, steps {sampling['steps']}, {sampling['time_grid']} grid, NFE {sampling['nfe']}",
        )
    extractor = report["extractor"]
    note = f"{extractor['dim']}-d"
    if extractor.get("test_accuracy") is not None:
        note += f", test accuracy {_pct(extractor['test_accuracy'])}"
    table.add_row("features", extractor["name"], "", note)
    table.add_row("device", report["device"], "", "")
    console.print(table)


def _pct(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}%}"


def _jumps(checkpoint: Optional[Path], num: int, device: str, weights: str, json_output: bool) -> None:
    from fmcli.device import resolve_device
    from fmcli.eval.jumps import evaluate_jumps
    from fmcli.io.checkpoint import load_checkpoint

    if checkpoint is None:
        raise FMError("--jumps measures a checkpoint: give one")
    target = resolve_device(device)
    with console.status("solving the reference flow and the jumps"):
        loaded = load_checkpoint(checkpoint, device=target, weights=weights)
        report = {"checkpoint": str(checkpoint), **evaluate_jumps(loaded, num, target)}
    if json_output:
        print_json(report)
        return
    errors = report["errors"]
    table = Table(title=f"fm eval --jumps: {checkpoint}", title_justify="left")
    for column, justify in (("from t = 1 to", "left"), ("jump", "right"), ("one Euler step", "right")):
        table.add_column(column, justify=justify, no_wrap=True)
    for name, value in errors.items():
        if name.startswith("jump_"):
            r = name.removeprefix("jump_")
            table.add_row(f"r = {r}", f"{value:.4f}", f"{errors['euler_' + r]:.4f}")
    for name, value in errors.items():
        if name.startswith("grid_"):
            table.add_row(f"0 in {name.removeprefix('grid_')} jumps", f"{value:.4f}", "")
    console.print(table)
    console.print(
        f"RMSE in [0, 1] image units over {report['num_samples']} noise draws, against {report['reference']} "
        f"(dopri5, guidance {report['guidance']:g}); a jump no better than one Euler step is untrained."
    )


def _guidances(cfgs, intervals, guides, labels, sampling) -> list[dict]:
    """--cfgs x --intervals x --guides as SamplingOptions fields (what is not listed: --cfg, --guidance-interval,
    --guide's single value)."""
    from fmcli.sampling.stored_guidance import guidance_grid, parse_intervals

    scales = parse_list(cfgs, "--cfgs", float) if cfgs else [sampling.cfg if sampling.cfg is not None else 1.0]
    spans = parse_intervals(intervals) if intervals else [sampling.guidance_interval]
    named = parse_guides(guides) if guides else [sampling.guide]
    kinds = tuple(parse_list(labels, "--guide-labels")) if labels else (sampling.guide_label or "null",)
    return [
        {"cfg": g.scale, "guidance_interval": g.interval or (0.0, 1.0), "guide": g.guide or "none",
         "guide_label": g.guide_label}
        for g in guidance_grid(scales, spans, named, kinds)
    ]  # fmt: skip


def _print_sweep(report: dict) -> None:
    from fmcli.sampling.stored_guidance import GuidanceSetting

    table = Table(
        title=f"fm eval sweep: {report['checkpoint']} ({report['num_samples']} samples per run, "
        f"{report['extractor']['name']} features)",
        title_justify="left",
    )
    names = [m for m in ("fid", "kid", "precision", "recall") if any(run.get(m) is not None for run in report["runs"])]
    guided = any(run["cfg"] != 1 for run in report["runs"])  # guidance columns only where guidance is compared
    names += ["accuracy"] if guided and any(run.get("accuracy") is not None for run in report["runs"]) else []
    columns = ["solver", "grid", "steps / rtol", *(["guidance"] if guided else []), "NFE",
               *(["passes"] if guided else []), "seconds", *names]  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column in ("solver", "grid", "guidance") else "right", no_wrap=True)
    for run in report["runs"]:
        budget = f"rtol {run['rtol']:g}" if run["adaptive"] else str(run["steps"])
        grid = "-" if run["adaptive"] else str(run.get("time_grid"))
        interval = run["interval"] and tuple(run["interval"])
        guidance = GuidanceSetting(run["cfg"], interval, run["guide"], run["guide_label"]).describe()
        cells = [run["solver"], grid, budget, *([guidance] if guided else []), str(run["nfe"]),
                 *([str(run["passes"])] if guided else []), f"{run['seconds']:.2f}"]  # fmt: skip
        table.add_row(*cells, *[_fmt(run.get(n)) for n in names])
    console.print(table)
    for path in report.get("files", []):
        err_console.print(f"wrote {path}", highlight=False)
