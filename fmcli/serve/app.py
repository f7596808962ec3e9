"""The page of ``fm serve``: pick a checkpoint, a class, a seed and up to two sampling settings; see the grids,
their NFE and time, the generation animations and ``fm info``; download what is shown.

Gradio is imported inside ``build_app`` only, and torch only inside the handlers (``fmcli.serve.render``), so
the page can answer before torch has loaded. Handlers turn every refusal into a one-line message on the page
(``gr.Error``); the server logs one line and goes on serving.
"""

import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from fmcli.errors import FMError
from fmcli.io.header import CheckpointMeta
from fmcli.sampling.info import checkpoint_info
from fmcli.sampling.options import DEFAULT_GUIDANCE, FLOW_DEFAULT, default_sampler
from fmcli.sampling.stored_guidance import interval_text, listed_guidance
from fmcli.serve.catalog import Catalog, Entry
from fmcli.serve.limits import Limits, ServeError, check_item_size, check_setting, checked_prompt, whole

IMAGE_BUTTONS = ["download", "fullscreen"]  # no "share": it posts to Hugging Face
IMAGE_HEIGHT = 300
KEEP_REQUESTS = 16  # request folders kept on disk (Gradio copies results into its own cache)
NO_CLASS = "none"
CSS = """
.fm-caption { min-height: 2.4em; }
.fm-summary { font-size: 0.92em; opacity: 0.85; }
footer { display: none !important; }
"""


def offline_theme() -> Any:
    """Gradio's default look with system fonts only: no font is fetched from anywhere."""
    import gradio as gr

    return gr.themes.Default(
        primary_hue="indigo",
        neutral_hue="slate",
        font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "Roboto", "DejaVu Sans", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "DejaVu Sans Mono", "monospace"],
    )


# --- what the page shows about a checkpoint (headers only: no torch) ------------------------------------------


def class_choices(meta: CheckpointMeta) -> list[str]:
    """'all' (an equal share of every class), each class name, and 'none' (unconditional) where the model has it."""
    choices = ["all", *meta.class_names] if meta.class_names else []
    if not meta.class_names or meta.label_dropout > 0:
        choices.append(NO_CLASS)
    return choices


def default_guidance(meta: CheckpointMeta, classes: str | None, path: Path | None = None) -> tuple[float, str]:
    """fm sample's default guidance scale and interval, from the header and the stored setting alone: the setting
    fm tune --guidance stored (``fmcli.sampling.guidance.resolve_guidance``), else ``default_cfg``'s scale."""
    labelled = classes not in (None, NO_CLASS) or meta.condition == "text"  # a text model's prompt box opens filled
    stored = listed_guidance(path) if path is not None else {}
    if stored.get("setting") and stored["conditional"] == labelled:
        return float(stored["setting"]["cfg"]), interval_text(stored["setting"]["interval"])
    if float((meta.train_config or {}).get("train_cfg") or 1.0) != 1.0:
        return 1.0, "full"
    return (DEFAULT_GUIDANCE if labelled and meta.conditional and meta.label_dropout > 0 else 1.0), "full"


def compare_default(meta: CheckpointMeta) -> tuple[str, int]:
    """Setting B's default: the few-step sampler in one step for students; euler at heun 20's NFE otherwise."""
    solver, steps = default_sampler(meta)
    return (solver, 1) if solver != FLOW_DEFAULT[0] else ("euler", 2 * steps)


def summary(entry: Entry) -> str:
    meta = entry.meta
    if meta is None:
        return f"⚠ {entry.error}"
    solver, steps = default_sampler(meta)
    classes = (
        "prompts"
        if meta.condition == "text"
        else f"{meta.num_classes} classes"
        if meta.num_classes
        else "unconditional"
    )
    objective = (meta.train_config or {}).get("objective", "fm")
    return (
        f"step {meta.step:,} · {meta.data.get('name')} ({classes}, {list(meta.image_shape)}) · objective {objective} · "
        f"samples with **{solver}, {steps} steps** by default"
    )


def info_markdown(entry: Entry) -> str:
    """``fm info``'s table as Markdown (the served name in place of the server's path)."""
    payload = checkpoint_info(entry.path)
    payload["path"] = entry.name
    sampler = payload.pop("default_sampling")
    rows = [(key, payload[key]) for key in ("path", "format_version", "step", "parameters", "tensor_groups",
                                            "objective", "training_guidance", "teacher", "label_dropout")]  # fmt: skip
    rows.append(("default_sampling", f"{sampler['solver']}, {sampler['steps']} steps"))
    rows += [(f"data.{k}", v) for k, v in payload["data"].items()]
    rows += [(f"model.{k}", v) for k, v in payload["model_config"].items()]
    rows += [(f"train.{k}", v) for k, v in sorted((payload["train_config"] or {}).items())]
    cells = "\n".join(f"| {key} | `{str(value).replace('|', '/')[:200]}` |" for key, value in rows)
    return f"| fm info | |\n|---|---|\n{cells}"


def _prune(work: Path, keep: int) -> None:
    folders = sorted((p for p in work.iterdir() if p.is_dir()), key=lambda p: p.stat().st_mtime)
    for old in folders[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def _log(message: str) -> None:
    print(f"fm serve: {message}", file=sys.stderr, flush=True)


def build_app(catalog: Catalog, limits: Limits, models: Any, solver_names: list[str], work: Path) -> Any:
    """The Gradio Blocks of the page. ``models`` is a ``render.ModelCache`` (or anything with ``get(entry)``)."""
    import gradio as gr

    entries = catalog.entries
    first = next((e.name for e in entries if e.error is None), None)

    def refused(error: Exception) -> Exception:
        """A one-line message on the page; one line in the server's log; the server goes on."""
        if isinstance(error, FMError):
            text = str(error)
        else:  # a bug or an environment problem: still one line, the traceback only with FM_DEBUG=1
            text = f"{type(error).__name__}: {(str(error).splitlines() or [''])[0][:300]}"
            if os.environ.get("FM_DEBUG") == "1":
                import traceback

                traceback.print_exception(error)
        _log(f"refused: {text}")
        return gr.Error(text, print_exception=False)

    def describe(name: str | None):
        """The class list, defaults, summary and fm info of the chosen checkpoint."""
        keep = gr.update()
        try:
            entry = catalog.get(name)
            about, info = summary(entry), info_markdown(entry)
        except Exception as error:  # noqa: BLE001 - shown on the page, in one line
            text = str(error) if isinstance(error, FMError) else f"{type(error).__name__}: {error}"
            return (gr.update(choices=[], value=None), *[keep] * 8, f"⚠ {text}", "", keep, keep)
        meta = entry.meta
        classes = class_choices(meta)
        cfg, span = default_guidance(meta, classes[0] if classes else None, entry.path)
        solver_a, steps_a = default_sampler(meta)
        solver_b, steps_b = compare_default(meta)
        steps_a, steps_b = min(steps_a, limits.max_steps), min(steps_b, limits.max_steps)
        return (
            gr.update(
                choices=classes,
                value=classes[0] if classes else None,
                interactive=bool(classes),
                visible=meta.condition != "text",
            ),  # fmt: skip
            gr.update(value=solver_a),
            gr.update(value=steps_a),
            gr.update(value=cfg),
            gr.update(value=span),
            gr.update(value=solver_b),
            gr.update(value=steps_b),
            gr.update(value=cfg),
            gr.update(value=span),
            about,
            info,
            *prompt_boxes(meta),
        )

    def prompt_boxes(meta):
        """A text model: the prompt boxes shown (the first training caption as the example), the class hidden."""
        text = meta.condition == "text"
        example = (meta.data.get("prompts") or [""])[0]
        return (gr.update(visible=text, value=example if text else ""), gr.update(visible=text, value=""))

    def class_changed(name: str | None, klass: str | None):
        """Guidance needs a class: 'none' sets both guidance sliders to 1, a class to the default."""
        try:
            entry = catalog.get(name)
            cfg, span = default_guidance(entry.meta, klass, entry.path)
        except ServeError:
            return gr.update(), gr.update(), gr.update(), gr.update()
        return gr.update(value=cfg), gr.update(value=span), gr.update(value=cfg), gr.update(value=span)

    def rescan(current: str | None):
        found = catalog.scan()
        usable = [e.name for e in found if e.error is None]
        value = current if current in usable else (usable[0] if usable else None)
        return gr.update(choices=[(e.label, e.name) for e in found], value=value)

    def generate(name, klass, seed, num, animate, solver_a, steps_a, cfg_a, compare, solver_b, steps_b, cfg_b,
                 interval_a=None, interval_b=None, prompt=None, negative=None, progress=gr.Progress()):  # fmt: skip
        started = time.perf_counter()
        try:
            settings = [check_setting(limits, solver_a, steps_a, cfg_a, solver_names, interval_a)]
            if compare:
                settings.append(check_setting(limits, solver_b, steps_b, cfg_b, solver_names, interval_b))
            num = whole(num, "number of images", 1, limits.max_images)
            seed = whole(seed, "seed", 0, limits.max_seed)
            entry = catalog.get(name)
            check_item_size(limits, entry.meta.image_shape)
            classes = None if klass in (None, "", NO_CLASS) else klass
            if classes is not None and not isinstance(classes, str):
                raise ServeError("class must be 'all', a class name or 'none'")
            text = entry.meta.condition == "text"
            prompt, negative = (
                (checked_prompt(prompt, "prompt"), checked_prompt(negative, "negative prompt"))
                if text
                else (None, None)
            )
            if text:
                classes = None
            if classes is None and not prompt and any(setting.cfg != 1 for setting in settings):
                raise ServeError(f"guidance needs a {'prompt' if text else 'class'}: give one, or set guidance to 1")
            progress(0, desc="loading the checkpoint")
            from fmcli.serve.render import render  # torch: loaded here, or earlier by the warm-up

            loaded = models.get(entry)
            request_dir = Path(tempfile.mkdtemp(dir=work))
            _prune(work, KEEP_REQUESTS)
            outputs = []
            for tag, setting in zip("AB", settings, strict=False):

                def report(calls: int, expected: int | None, tag: str = tag, solver: str = setting.solver) -> None:
                    text = f"{tag}: {solver}, model evaluation {calls}" + (f" of {expected}" if expected else "")
                    progress((calls, expected) if expected else None, desc=text)

                run = Path(entry.name).parent.name or catalog.root.name.removesuffix(".safetensors")
                stem = f"fm-{run}-{setting.solver}-{setting.steps}-seed{seed}-{tag}"
                words = {"prompt": prompt or None, "negative_prompt": negative or None}
                outputs.append(render(loaded, entry, setting, num=num, classes=classes, seed=seed,
                                      animate=bool(animate), limits=limits, out_dir=request_dir, stem=stem,
                                      report=report, **words))  # fmt: skip
        except Exception as error:  # noqa: BLE001 - every failure becomes one line on the page
            raise refused(error) from None
        _log(f"{entry.name}: {num} x {', '.join(f'{o.nfe} NFE in {o.seconds:.2f} s' for o in outputs)} "
             f"({time.perf_counter() - started:.1f} s in all)")  # fmt: skip
        a, b = outputs[0], (outputs[1] if len(outputs) > 1 else None)
        files = [str(p) for o in outputs for p in (o.grid, o.gif, o.npz) if p is not None]
        return (
            str(a.grid),
            str(a.gif) if a.gif else None,
            a.caption,
            str(b.grid) if b else None,
            str(b.gif) if b and b.gif else None,
            b.caption if b else "*Tick “Compare” to draw a second setting from the same noise.*",
            files,
        )

    def image(label: str, elem_id: str | None = None) -> Any:
        return gr.Image(label=label, type="filepath", interactive=False, buttons=IMAGE_BUTTONS, height=IMAGE_HEIGHT,
                        elem_id=elem_id)  # fmt: skip

    def setting_controls(tag: str) -> tuple[Any, Any, Any]:
        with gr.Row():
            solver = gr.Dropdown(solver_names, value=FLOW_DEFAULT[0], label="Solver", elem_id=f"solver_{tag}")
            steps = gr.Slider(1, limits.max_steps, value=min(FLOW_DEFAULT[1], limits.max_steps), step=1,
                              label="Steps", elem_id=f"steps_{tag}")  # fmt: skip
            cfg = gr.Slider(0, limits.max_cfg, value=1.0, step=0.25, label="Guidance", elem_id=f"cfg_{tag}")
            interval = gr.Textbox("full", label="Guidance interval", elem_id=f"interval_{tag}", max_lines=1,
                                  info="LO,HI: guide for t in [LO, HI] (t = 1 noise); full: everywhere")  # fmt: skip
        return solver, steps, cfg, interval

    with gr.Blocks(title="fm serve", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(
            f"## fm serve\nSample from the flow-matching checkpoints under `{catalog.root.name}/`. Both settings "
            "start from the same noise (the same seed): differences come from the solver, the steps and the guidance."
        )
        with gr.Row(equal_height=True):
            checkpoint = gr.Dropdown([(e.label, e.name) for e in entries], value=first, label="Checkpoint", scale=5,
                                     allow_custom_value=True, elem_id="checkpoint")  # fmt: skip
            rescan_button = gr.Button("Rescan folder", size="sm", scale=0, min_width=140)
        about = gr.Markdown(elem_classes="fm-summary", elem_id="summary")
        with gr.Row(equal_height=True):
            klass = gr.Dropdown([], label="Class", allow_custom_value=True, elem_id="class",
                                info="all: an equal share of every class; none: unconditional")  # fmt: skip
            seed = gr.Number(0, label="Seed", precision=0, minimum=0, maximum=limits.max_seed, elem_id="seed")
            num = gr.Slider(1, limits.max_images, value=min(16, limits.max_images), step=1, label="Images",
                            elem_id="num")  # fmt: skip
            animate = gr.Checkbox(True, label="Animation", info=f"{limits.frames} frames of the same solve (GIF)")
        with gr.Row(equal_height=True):  # text models only
            prompt = gr.Textbox(label="Prompt", max_lines=1, visible=False, elem_id="prompt", scale=3,
                                info="what to draw, in the words of the training captions")  # fmt: skip
            negative = gr.Textbox(label="Negative prompt", max_lines=1, visible=False, elem_id="negative_prompt",
                                  scale=2, info="what guidance steers away from (empty: nothing)")  # fmt: skip
        with gr.Row(equal_height=True):
            with gr.Column(variant="panel"):
                gr.Markdown("**Setting A**")
                solver_a, steps_a, cfg_a, interval_a = setting_controls("a")
            with gr.Column(variant="panel"):
                compare = gr.Checkbox(False, label="Compare: setting B", elem_id="compare")
                solver_b, steps_b, cfg_b, interval_b = setting_controls("b")
        run = gr.Button("Generate", variant="primary", elem_id="generate")
        with gr.Row(equal_height=False):
            with gr.Column():
                caption_a = gr.Markdown("*Setting A*", elem_classes="fm-caption", elem_id="caption_a")
                with gr.Row():
                    grid_a, gif_a = image("A: samples", "grid_a"), image("A: generation", "gif_a")
            with gr.Column():
                caption_b = gr.Markdown("*Setting B*", elem_classes="fm-caption", elem_id="caption_b")
                with gr.Row():
                    grid_b, gif_b = image("B: samples", "grid_b"), image("B: generation", "gif_b")
        downloads = gr.File(label="Download (PNG grid, GIF, NPZ arrays)", file_count="multiple", interactive=False,
                            elem_id="downloads")  # fmt: skip
        with gr.Accordion("Checkpoint info (fm info)", open=False):
            info = gr.Markdown(elem_id="info")

        described = [klass, solver_a, steps_a, cfg_a, interval_a, solver_b, steps_b, cfg_b, interval_b, about, info,
                     prompt, negative]  # fmt: skip
        checkpoint.change(describe, checkpoint, described, api_name="describe", queue=False)
        demo.load(describe, checkpoint, described, queue=False, api_visibility="private")
        klass.input(class_changed, [checkpoint, klass], [cfg_a, interval_a, cfg_b, interval_b], queue=False,
                    api_visibility="private")  # fmt: skip
        rescan_button.click(rescan, checkpoint, checkpoint, api_name="rescan", queue=False)
        run.click(
            generate,
            [
                checkpoint,
                klass,
                seed,
                num,
                animate,
                solver_a,
                steps_a,
                cfg_a,
                compare,
                solver_b,
                steps_b,
                cfg_b,
                interval_a,
                interval_b,
                prompt,
                negative,
            ],  # fmt: skip
            [grid_a, gif_a, caption_a, grid_b, gif_b, caption_b, downloads],
            api_name="generate",
            concurrency_limit=1,  # one sampling at a time: a second request waits in the queue
            concurrency_id="sampling",
            show_progress_on=[grid_a, grid_b],
        )
    return demo
