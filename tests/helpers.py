"""Helpers the tests share (conftest.py holds the fixtures): the CLI runner, one-line errors, tiny runs,
checkpoint comparisons, and the objectives called the way the maths is written."""

import json
from pathlib import Path

import torch
from torch import nn
from typer.testing import CliRunner

from fmcli.cli import app
from fmcli.io.checkpoint import read_checkpoint, split_prefix
from fmcli.training.objectives import Batch, ConditionalVelocity, FlowMatching, MeanFlow, TimeDistribution

MLP = {"hidden": 32, "depth": 2}  # a small point model: fast, and enough to learn the toys a little
runner = CliRunner()


def fm(*args):
    """Run ``fm ARGS`` in-process; the result has ``exit_code`` and ``output`` (stdout and stderr)."""
    return runner.invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str, code: int | None = None) -> str:
    """The command failed (with ``code`` if given) and said so in exactly one line holding every fragment."""
    assert result.exit_code != 0 if code is None else result.exit_code == code, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error:"), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def moons(out: Path, **overrides) -> dict:
    """Training overrides for a few steps of the small MLP on moons, writing into ``out``."""
    options = dict(data="moons", model=MLP, batch_size=16, steps=4, warmup_steps=2, out=str(out), log_every=1000,
                   sample_every=0, checkpoint_every=1000)  # fmt: skip
    return options | overrides


def assert_identical(a: Path, b: Path) -> None:
    """Two checkpoints hold bit-identical tensors."""
    first, second = read_checkpoint(a)[0], read_checkpoint(b)[0]
    assert first.keys() == second.keys()
    for name in first:
        assert torch.equal(first[name], second[name]), name


def randomise_zero_init(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give zero-initialised parameters random values: a fresh model outputs exactly 0 for any input (its output
    layer starts at zero), which would hide every conditioning bug."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if torch.all(p == 0):
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))
    return model.eval()


def flow_matching_loss(net, x0, x1, t, **conditioning) -> torch.Tensor:
    """E || v(x_t, t) - (x1 - x0) ||^2 through ``FlowMatching``."""
    labels = conditioning.get("y")
    return FlowMatching()(net, Batch(x0, x1, t, labels)).loss


def meanflow_loss(net, x0, x1, r, t, *, weighting_power=1.0, eps=1e-3, velocity=None, y=None):
    """(loss, logged mse) of ``MeanFlow`` against x1 - x0, or against a given ``velocity`` (a teacher's)."""
    target = ConditionalVelocity() if velocity is None else (lambda net, batch, xt: velocity)
    objective = MeanFlow(TimeDistribution(), weighting_power=weighting_power, eps=eps, target=target)
    out = objective(net, Batch(x0, x1, t, y, r))
    return out.loss, out.logged


def fm_ok(*args) -> str:
    """Run ``fm ARGS``, which must succeed; its output."""
    result = fm(*args)
    assert result.exit_code == 0, result.output
    return result.output


def grad_norms(run: Path) -> list[float]:
    """The gradient norm of every logged step of a run (log_every=1 logs them all)."""
    return [json.loads(line)["grad_norm"] for line in (run / "metrics.jsonl").read_text().splitlines()]


def weights(checkpoint: Path, group: str = "model") -> dict[str, torch.Tensor]:
    return split_prefix(read_checkpoint(checkpoint)[0], group)


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((a[k].double() - b[k].double()).abs().max().item() for k in a)
