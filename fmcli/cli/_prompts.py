"""``fm eval``'s prompt rows for a text model (``fmcli.eval.prompts``' report): the contrastive scorer's rank-1 rate,
the CLIP score and, on data with attributes, shape and colour read back; each beside its real-image figure."""

from rich.table import Table


def _pct(value, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}%}"


def prompt_rows(table: Table, prompts: dict) -> None:
    """The prompt section's rows: attributes (seen and held-out pairs apart), the scorer, the CLIP score."""
    if prompts.get("note"):
        table.add_row("prompts", "-", "", prompts["note"])
        return
    if "classifier_test_accuracy" in prompts:
        _attribute_rows(table, prompts)
    _scorer_rows(table, prompts["scorer"])
    clip = prompts["clip"]
    if clip.get("note"):
        table.add_row("CLIP score", "-", "", clip["note"])
        return
    for label, part in (
        ("CLIP score", clip),
        ("  seen pairs", clip.get("seen")),
        ("  held-out pairs", clip.get("held_out")),
    ):
        if part and part["num"]:
            about = f"100 max(cos, 0) of image and prompt, CLIP at {clip['path']}; " if part is clip else ""
            table.add_row(
                label, f"{part['score']:.2f}", str(part["num"]), f"{about}real images {part['real_score']:.2f}"
            )


def _attribute_rows(table: Table, prompts: dict) -> None:
    """Shape, colour and both right, seen pairs and held-out pairs apart."""
    ceiling = ", ".join(f"{k} {_pct(v)}" for k, v in prompts["classifier_test_accuracy"].items())
    for which, label in (("seen", "pairs seen in training"), ("held_out", "pairs held out of training")):
        part = prompts[which]
        if part["num"]:
            table.add_row(f"prompts: {label}", f"{part['both']:.2%}", str(part["num"]),
                          f"shape and colour right (shape {_pct(part['shape'])}, colour {_pct(part['colour'])}, "
                          f"background {_pct(part['background'])}); classifiers on real images: {ceiling}")  # fmt: skip


def _scorer_rows(table: Table, scorer: dict) -> None:
    """Own prompt ranked first by the contrastive scorer, beside real images and chance."""
    if scorer.get("note"):
        table.add_row("prompt rank-1", "-", "", scorer["note"])
        return
    parts = (
        ("prompt rank-1", scorer),
        ("  seen pairs", scorer.get("seen")),
        ("  held-out pairs", scorer.get("held_out")),
    )
    for label, part in parts:
        if part and part["num"]:
            about = (f"own prompt first of {scorer['candidates']} (or one with {scorer['equivalent']}) by a scorer "
                     f"trained on real pairs; " if part is scorer else "")  # fmt: skip
            table.add_row(label, f"{part['rank1']:.2%}", str(part["num"]),
                          f"{about}real images {_pct(part['real_rank1'])}, chance {_pct(part['chance'])}")  # fmt: skip
