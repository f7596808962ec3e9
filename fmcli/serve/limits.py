"""What one request to ``fm serve`` may ask for, and the checks every request passes before any work.

The page's sliders stop at these limits, but a client of the HTTP API can send anything, so the server checks
again: whole numbers in range, a registered solver, guidance in range. Together they bound a request's memory
and time (images x item size x steps), so one request cannot exhaust the machine. No torch here.
"""

import math
from dataclasses import dataclass

from fmcli.errors import FMError
from fmcli.sampling.stored_guidance import parse_interval


class ServeError(FMError):
    """A refused request; its one-line message is shown on the page."""


@dataclass(frozen=True)
class Limits:
    max_images: int = 64  # images (or 2-D points x 16) per request
    max_steps: int = 200  # steps of a fixed-step solver
    max_nfe: int = 2000  # model evaluations of one solve: stops adaptive solvers that would run on
    max_item_values: int = 3 * 256 * 256  # resolution: checkpoints with larger items are refused
    max_cfg: float = 10.0
    max_seed: int = 2**31 - 1
    frames: int = 40  # frames of the generation GIF (fm animate's default), read from the same solve

    def __post_init__(self) -> None:
        if min(self.max_images, self.max_steps, self.max_nfe, self.max_item_values) < 1 or self.frames < 2:
            raise FMError("fm serve's limits must be positive (and at least 2 frames)")


@dataclass(frozen=True)
class Setting:
    """One column of the page: how to sample."""

    solver: str
    steps: int
    cfg: float
    interval: tuple[float, float] | None = None  # where guidance acts (t = 1 noise); None: the stored setting's


def whole(value: object, name: str, low: int, high: int) -> int:
    """``value`` as an int in [low, high] (a float like 4.0 from a slider is fine); ServeError otherwise."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise ServeError(f"{name} must be a whole number in {low}..{high} (got {str(value)[:40]!r})")
    if not low <= value <= high:
        raise ServeError(f"{name} must be in {low}..{high} (got {int(value)}): fm serve caps each request")
    return int(value)


def check_setting(
    limits: Limits, solver: object, steps: object, cfg: object, solvers: list[str], interval: object = None
) -> Setting:
    if not isinstance(solver, str) or solver not in solvers:
        raise ServeError(f"unknown solver {str(solver)[:40]!r}: choose one of {', '.join(solvers)}")
    steps = whole(steps, "steps", 1, limits.max_steps)
    if isinstance(cfg, bool) or not isinstance(cfg, (int, float)) or not math.isfinite(cfg):
        raise ServeError(f"guidance must be a number in 0..{limits.max_cfg:g} (got {str(cfg)[:40]!r})")
    if not 0 <= cfg <= limits.max_cfg:
        raise ServeError(f"guidance must be in 0..{limits.max_cfg:g} (got {cfg:g})")
    if interval is not None and not isinstance(interval, str):
        raise ServeError(f"the guidance interval must be text such as 0.2,0.8 or full (got {str(interval)[:40]!r})")
    try:
        span = parse_interval(interval.strip() or None if interval else None, "the guidance interval")
    except FMError as error:
        raise ServeError(str(error)) from None
    return Setting(solver, steps, float(cfg), span)


def check_item_size(limits: Limits, shape: tuple[int, ...]) -> None:
    values = math.prod(shape)
    if values > limits.max_item_values:
        raise ServeError(
            f"this checkpoint draws items of shape {list(shape)} ({values:,} values), more than fm serve draws "
            f"({limits.max_item_values:,}); use fm sample"
        )


MAX_PROMPT = 500  # characters of a prompt box: far more than any encoder's context


def checked_prompt(value: object, name: str) -> str:
    """A prompt box's text, stripped ("" when empty); ServeError for anything that is not text or is too long."""
    if value is None:
        return ""
    if not isinstance(value, str):
        raise ServeError(f"the {name} must be text")
    if len(value) > MAX_PROMPT:
        raise ServeError(f"the {name} is {len(value)} characters long; at most {MAX_PROMPT}")
    return value.strip()
