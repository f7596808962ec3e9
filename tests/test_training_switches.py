"""Training options observed where they act: in what the network is fed, in the logged gradient
norm and in the weights. Each test here fails when its option is ignored or wrong (the tests in
test_train.py only check that training with the option runs).

The network is the ``recording-mlp`` / ``recording-unet`` model plugin (tests/recording.py, the
``recorder`` fixture): the real MLP / U-Net, recording every forward call's inputs and state.
"""

import itertools
import math
from pathlib import Path

import pytest
import torch
from helpers import grad_norms, max_difference, weights
from helpers import moons as moons_of

import fmcli.training.batches
from fmcli.training.loop import train

# The minibatch-OT pairing (defined in fmcli.flow), looked up where the batch sampler looks it up.
OT_PAIRING_HOME = fmcli.training.batches


def moons(out: Path, **overrides) -> dict:
    return moons_of(out, **({"model": MLP, "batch_size": 32, "steps": 2, "log_every": 1} | overrides))


def ot_pairing(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
    return OT_PAIRING_HOME.ot_pairing(x0, x1)


def spy_on_ot_pairing(monkeypatch) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Wrap the loop's ot_pairing; returns the list of (x0, x1, returned permutation) of every call."""
    real, calls = OT_PAIRING_HOME.ot_pairing, []

    def spy(x0, x1):
        permutation = real(x0, x1)
        calls.append((x0.detach().clone(), x1.detach().clone(), permutation.clone()))
        return permutation

    monkeypatch.setattr(OT_PAIRING_HOME, "ot_pairing", spy)
    return calls


MLP = {"name": "recording-mlp", "hidden": 32, "depth": 2}
TINY_UNET = {
    "name": "recording-unet",
    "base_channels": 8,
    "channel_mults": [1, 2],
    "num_res_blocks": 1,
    "attention_resolutions": [],
}


def mnist(out: Path, **overrides) -> dict:
    return moons(out, data="mnist-mini", model=TINY_UNET, batch_size=16) | overrides


def take_calls(recorder) -> list:
    """The training forwards recorded so far; clears the recorder for the next run."""
    calls = recorder.training_calls()
    recorder.calls.clear()
    recorder.conv_calls = 0
    return calls


# ----------------------------------------------------------------------------- gradient accumulation


def test_grad_accum_feeds_micro_batches_and_gives_the_gradient_of_the_whole_batch(tmp_path, recorder):
    """grad_accum=2 runs two half batches per step whose summed gradient is that of the full batch."""
    one = train(moons(tmp_path / "one"))
    whole = take_calls(recorder)
    two = train(moons(tmp_path / "two", grad_accum=2))
    micro = take_calls(recorder)
    assert [c.x.shape[0] for c in whole] == [32, 32]
    assert [c.x.shape[0] for c in micro] == [16, 16, 16, 16]
    # The micro-batches are the halves of the same global batch (x_t, t and labels).
    for step in range(2):
        halves = micro[2 * step : 2 * step + 2]
        assert torch.equal(torch.cat([c.x for c in halves]), whole[step].x)
        assert torch.equal(torch.cat([c.t for c in halves]), whole[step].t)
        assert torch.equal(torch.cat([c.y for c in halves]), whole[step].y)
    # The loss is a mean, so each micro-batch loss is divided by grad_accum: the accumulated gradient
    # equals the full-batch gradient up to float32 summation order (relative 1e-5). Forgetting the
    # division doubles the norm; keeping only the last micro-batch changes it by far more than that.
    norms_one, norms_two = grad_norms(tmp_path / "one"), grad_norms(tmp_path / "two")
    assert len(norms_one) == len(norms_two) == 2
    assert norms_two == pytest.approx(norms_one, rel=1e-5)
    # AdamW is invariant to the gradient's scale, so the weights check the direction only.
    for group in ("model", "ema"):
        assert max_difference(weights(one.checkpoint, group), weights(two.checkpoint, group)) < 1e-5


# ----------------------------------------------------------------------------- gradient checkpointing


def test_grad_checkpoint_recomputes_activations_and_keeps_the_gradients(tmp_path, recorder):
    """With --grad-checkpoint the U-Net's convolutions run again in the backward pass; gradients are unchanged."""
    plain = train(mnist(tmp_path / "plain"))
    forwards = len(take_calls(recorder))
    saved = train(mnist(tmp_path / "recompute", grad_checkpoint=True))
    assert len(recorder.training_calls()) == forwards == 2
    recomputed = recorder.conv_calls
    plain_convs = recorder.convs_per_forward * forwards  # each Conv2d once per forward without recomputation
    # Without recomputation each convolution runs exactly once per forward (next test); the surplus is the
    # convolutions inside residual blocks run again in backward (38 instead of 25 per step with torch 2.13,
    # whose non-reentrant checkpoint stops recomputing once the saved tensors it needs are rebuilt).
    assert recomputed > plain_convs + forwards, (recomputed, plain_convs)
    assert grad_norms(tmp_path / "recompute") == pytest.approx(grad_norms(tmp_path / "plain"), rel=1e-6)
    assert max_difference(weights(plain.checkpoint), weights(saved.checkpoint)) < 1e-6


def test_without_grad_checkpoint_every_convolution_runs_once(tmp_path, recorder):
    """The baseline of the test above: no recomputation, one run of each Conv2d per forward."""
    train(mnist(tmp_path / "plain", steps=1))
    assert len(recorder.training_calls()) == 1
    assert recorder.conv_calls == recorder.convs_per_forward


# ----------------------------------------------------------------------------- precision


@pytest.mark.parametrize("precision, dtype", [("fp32", None), ("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_precision_runs_the_forward_under_autocast_of_that_dtype(
    tmp_path, recorder, precision, dtype, half_precision_cpu
):
    """bf16/fp16: every training forward runs under CPU autocast of that dtype (the network's output has it);
    fp32: no autocast, float32 output."""
    train(moons(tmp_path / precision, precision=precision))
    calls = recorder.training_calls()
    assert len(calls) == 2
    for call in calls:
        if dtype is None:
            assert not call.autocast and call.out_dtype == torch.float32
        else:
            assert call.autocast and call.autocast_dtype == dtype and call.out_dtype == dtype


# ----------------------------------------------------------------------------- EMA


def test_ema_follows_the_warmed_up_decay_step_by_step(tmp_path):
    """Recompute the EMA from the raw weights saved after every step.

    The checkpoint step-n holds the state after n optimizer steps: raw weights w_n and EMA e_n, where
    (written here, not imported) e_n = d e_{n-1} + (1 - d) w_n with d = min(decay, (1 + s) / (10 + s)),
    s = n - 1 being the index of the step that produced w_n. decay 0.3 exercises both branches of the
    min: s = 1, 2 give 2/11 and 3/12; s >= 3 gives 0.3.
    """
    decay = 0.3
    run = tmp_path / "run"
    train(moons(run, model={"hidden": 32, "depth": 2}, steps=5, checkpoint_every=1, keep=10, lr=1e-2, ema_decay=decay))
    raw = {n: weights(run / f"step-{n:07d}.safetensors", "model") for n in range(1, 6)}
    ema = {n: weights(run / f"step-{n:07d}.safetensors", "ema") for n in range(1, 6)}
    for n in range(2, 6):
        s = n - 1
        d = min(decay, (1 + s) / (10 + s))
        for name, value in ema[n].items():
            expected = d * ema[n - 1][name].double() + (1 - d) * raw[n][name].double()
            # float32 lerp of values of order 1: a few ulps (1e-6); a wrong d moves it by
            # |d - d'| |e - w| >= 0.05 * 1e-3 here (checked just below).
            assert torch.allclose(value.double(), expected, rtol=1e-6, atol=1e-6), (n, name)
        assert max_difference(ema[n], raw[n]) > 1e-3  # the EMA lags the weights: the check above has teeth


# ----------------------------------------------------------------------------- OT coupling


def squared_cost(x0: torch.Tensor, x1: torch.Tensor, permutation) -> float:
    return float(((x0.flatten(1) - x1.flatten(1)[list(permutation)]) ** 2).sum())


@pytest.mark.parametrize("seed", range(6))
def test_ot_pairing_is_the_optimal_permutation(seed):
    """Against brute force over all 720 permutations of 6 points (squared Euclidean cost)."""
    generator = torch.Generator().manual_seed(seed)
    shape = (6, 3) if seed % 2 else (6, 1, 2, 2)  # points and (tiny) images
    x0, x1 = torch.randn(shape, generator=generator), torch.randn(shape, generator=generator)
    permutation = ot_pairing(x0, x1).tolist()
    assert sorted(permutation) == list(range(6))
    best = min(squared_cost(x0, x1, p) for p in itertools.permutations(range(6)))
    assert squared_cost(x0, x1, permutation) == pytest.approx(best, rel=1e-6)


def test_training_with_ot_coupling_pairs_noise_by_the_optimal_permutation(tmp_path, recorder, monkeypatch):
    """coupling=ot: each step's x_t = (1 - t) x0 + t x1[perm] with perm the OT pairing; independent: never paired."""
    pairings = spy_on_ot_pairing(monkeypatch)
    train(moons(tmp_path / "independent"))
    assert pairings == [] and len(take_calls(recorder)) == 2
    train(moons(tmp_path / "ot", coupling="ot"))
    calls = recorder.training_calls()
    assert len(pairings) == 3 and len(calls) == 2  # the plan's probe drew step 0's batch once more, first
    assert all(torch.equal(a, b) for a, b in zip(pairings[0], pairings[1], strict=True))
    for (x0, x1, permutation), call in zip(pairings[1:], calls, strict=True):
        assert not torch.equal(permutation, torch.arange(32))  # 32 random pairs are never already optimal
        t = call.t[:, None]
        assert torch.allclose(call.x, (1 - t) * x0 + t * x1[permutation], atol=1e-6)
        assert squared_cost(x0, x1, permutation.tolist()) < squared_cost(x0, x1, range(32))


# ----------------------------------------------------------------------------- label dropout


def test_label_dropout_feeds_the_null_class_at_its_rate(tmp_path, recorder):
    """With label_dropout p a label becomes the null class (index num_classes = 2 for moons) with probability p,
    and the other labels are untouched; with p = 0 the null class never appears."""
    train(moons(tmp_path / "none", label_dropout=0.0, batch_size=64, steps=8))
    clean = torch.cat([call.y for call in take_calls(recorder)])
    train(moons(tmp_path / "some", label_dropout=0.3, batch_size=64, steps=8))
    dropped = torch.cat([call.y for call in recorder.training_calls()])
    assert len(clean) == len(dropped) == 512
    assert set(clean.tolist()) == {0, 1}
    null = dropped == 2
    # Binomial(512, 0.3): mean 153.6, sd sqrt(512 * 0.3 * 0.7) = 10.4; 4 sd = 41.5. (p = 0.7, i.e. the
    # comparison turned around, would give 358; p = 0 gives 0.)
    assert abs(int(null.sum()) - 153.6) < 41.5, int(null.sum())
    # Same seed, same batches: a label that was kept is the true label.
    assert torch.equal(dropped[~null], clean[~null])


# ----------------------------------------------------------------------------- time sampling


def normal_cdf(z: float) -> float:
    return 0.5 * (1 + math.erf(z / math.sqrt(2)))


def ks_distance(samples: torch.Tensor, cdf) -> float:
    """Kolmogorov-Smirnov distance between the empirical CDF of ``samples`` and ``cdf``."""
    values = sorted(samples.double().tolist())
    n = len(values)
    return max(max((i + 1) / n - cdf(v), cdf(v) - i / n) for i, v in enumerate(values))


# n = 64 x 16 = 1024 times. KS critical value at level 0.001: 1.95 / sqrt(n) = 0.061.
KS_LIMIT = 1.95 / math.sqrt(1024)


def test_logit_normal_times_reach_the_network(tmp_path, recorder):
    """time_sampling=logit-normal: logit(t) of the t the network sees is N(time_mean, time_std^2)."""
    mean, std = 0.5, 0.5
    train(moons(tmp_path / "run", time_sampling="logit-normal", time_mean=mean, time_std=std, batch_size=64, steps=16))
    t = torch.cat([call.t for call in recorder.training_calls()]).double()
    assert len(t) == 1024 and ((t > 0) & (t < 1)).all()
    logit = torch.log(t / (1 - t))
    # Standard errors: mean std/sqrt(n) = 0.016, sd std/sqrt(2n) = 0.011; allow 4 of each.
    assert abs(float(logit.mean()) - mean) < 4 * std / math.sqrt(1024)
    assert abs(float(logit.std()) - std) < 4 * std / math.sqrt(2 * 1024)
    assert ks_distance(logit, lambda v: normal_cdf((v - mean) / std)) < KS_LIMIT


def test_uniform_times_reach_the_network(tmp_path, recorder):
    """time_sampling=uniform (the default): the t the network sees pass a KS test against U(0, 1)."""
    train(moons(tmp_path / "run", batch_size=64, steps=16))
    t = torch.cat([call.t for call in recorder.training_calls()])
    assert len(t) == 1024
    assert ks_distance(t, lambda v: min(max(v, 0.0), 1.0)) < KS_LIMIT
