"""Prompts for text models: read them (``--prompt``, ``--prompts FILE``), check them, and turn them into the
condition rows ``generate`` takes (token ids [num, L], ``fmcli.models.condition``), in the order given.

A prompt to a class model, ``--class`` to a text model, an empty or unreadable prompt file: one line each.
Words the model never saw in training and prompts longer than its context are not errors: ``notes`` says so.
"""

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from fmcli.errors import FMError

if TYPE_CHECKING:
    from fmcli.io.checkpoint import LoadedModel


def read_prompts(prompt: str | None, file: Path | None) -> list[str] | None:
    """``--prompt TEXT`` or ``--prompts FILE`` (one prompt a line, blank lines skipped); None: neither given."""
    if prompt is not None and file is not None:
        raise FMError("give --prompt or --prompts, not both")
    if file is None:
        return None if prompt is None else [prompt.strip()]
    try:
        text = Path(file).read_bytes().decode("utf-8")
    except FileNotFoundError:
        raise FMError(f"--prompts {file}: no such file") from None
    except UnicodeDecodeError as error:
        line = Path(file).read_bytes()[: error.start].count(b"\n") + 1
        raise FMError(f"--prompts {file}: line {line} is not UTF-8 text") from None
    prompts = [line.strip() for line in text.splitlines() if line.strip()]
    if not prompts:
        raise FMError(f"--prompts {file} holds no prompt (one prompt a line)")
    return prompts


def check_condition_kind(loaded: "LoadedModel", prompts: Sequence[str] | None, class_given: bool) -> None:
    """A prompt needs a text model, --class a class model: one line otherwise."""
    condition = loaded.meta.condition
    if prompts is not None and condition != "text":
        raise FMError(
            "this model takes no prompts: it was trained "
            + ("on class labels (use --class)" if condition == "class" else "without captions or labels")
        )
    if class_given and condition == "text":
        raise FMError("this is a text model: describe what to draw with --prompt TEXT (or --prompts FILE), not --class")


def spread(prompts: Sequence[str], num: int) -> list[str]:
    """``num`` prompts, each given prompt an equal share in order (the first ones one more if uneven)."""
    if num < len(prompts):
        raise FMError(f"--num {num} is fewer than the {len(prompts)} prompts: give --num of at least {len(prompts)}")
    return [prompts[i * len(prompts) // num] for i in range(num)]


def negative_condition(
    loaded: "LoadedModel",
    negative: str | None,
    prompts: Sequence[str] | None,
    num: int,
    flag: str = "--negative-prompt",
) -> tuple[Tensor | None, list[str]]:
    """A negative prompt's token ids for ``num`` samples, the reference guidance steers away from (None when none is
    given), and its notes; FMError when there are no prompts to draw (``flag`` names the option in the message)."""
    if negative is None:
        return None, []
    if prompts is None:
        drawn = "--prompt or --prompts" if flag.startswith("--") else "prompts"
        raise FMError(f"{flag} needs {drawn} (what to draw)")
    return prompt_condition(loaded, [negative] * num)


def prompt_condition(loaded: "LoadedModel", prompts: Sequence[str]) -> tuple[Tensor, list[str]]:
    """The token ids [len(prompts), L] of a text model for these prompts, and notes for the user (unknown words,
    truncated prompts), each said once."""
    model = loaded.model
    encoder = getattr(model, "encoder", None)
    if encoder is None:
        raise FMError("this model takes no prompts: it was not trained on captions")
    notes = []
    distinct = list(dict.fromkeys(prompts))
    unknown, examples = encoder.unknown_words(distinct)
    if unknown:
        notes.append(
            f"{unknown} word(s) never seen in training (e.g. {', '.join(examples[:5])}): the model reads them as "
            "unknown"
        )
    long = encoder.truncated(distinct)
    if long:
        notes.append(f"{long} prompt(s) longer than the model's {encoder.context} tokens: truncated")
    ids = model.tokenize(list(prompts))
    return torch.as_tensor(ids, dtype=torch.long), notes
