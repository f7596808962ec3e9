"""`fm eval` on a "model" whose samples ARE real held-out digits of the requested class.

The per-class accuracy and FID code paths must then report what the real data would: accuracy
near the classifier's own test accuracy (and per class exactly what that classifier says about
those digits), FID exactly the Fréchet distance of those digits' features (formula written here)
and near the real-data floor of `fm eval --real` at the same count.
"""

import json

import numpy as np
import pytest
import torch
from torch import nn
from typer.testing import CliRunner

import fmcli.eval.classifier as classifier_module
from fmcli import registry
from fmcli.cli import app
from fmcli.data.base import LoadOptions, to_model_space
from fmcli.hookspecs import hookimpl
from fmcli.models import ModelSpec
from fmcli.plugins import load_plugins, pm
from fmcli.training.loop import train

runner = CliRunner()
CLASSIFIER_IMAGES = 1000  # the classifier trains on mnist-mini train[:1000]; samples come from train[1000:]
NUM = 200  # FID needs more samples than its 128 feature dimensions


def train_classifier_briefly(monkeypatch) -> None:
    """The eval classifier, trained on the first CLASSIFIER_IMAGES train digits for one epoch of batches of 16
    (62 steps, about 80% test accuracy): seconds instead of minutes. The test compares against this
    classifier's own test accuracy."""
    original = classifier_module.train_classifier

    def brief(images, labels, num_classes, **kwargs):
        return original(
            images[:CLASSIFIER_IMAGES],
            labels[:CLASSIFIER_IMAGES],
            num_classes,
            **{**kwargs, "epochs": 1, "batch_size": 16},
        )

    monkeypatch.setattr(classifier_module, "train_classifier", brief)


def load_classifier(path: str):
    """The cached classifier network the report names (features, logits = network(model-space images))."""
    return classifier_module.load_classifier(path)[0]


DRAWN: list = []  # (label, uint8 digit) of every sample RealDigits produced, in order


class RealDigits(nn.Module):
    """v(x, t, y) = x - x0 with x0 a real held-out digit of class y chosen by the noise x.

    One Euler step from t = 1 to t = 0 gives x1 - 1 * v(x1, 1, y) = x0: the "samples" are those digits.
    Every returned (label, digit) pair is appended to DRAWN.
    """

    def __init__(self, *, num_classes: int = 10, **preset_keys):
        super().__init__()
        self.config = {"name": "real-digits", "num_classes": num_classes}
        self.anchor = nn.Parameter(torch.zeros(()))  # something to train and to read the device from
        train_split = registry.get_dataset("mnist-mini").load(LoadOptions(split="train"))
        images, labels = train_split.data[CLASSIFIER_IMAGES:], train_split.labels[CLASSIFIER_IMAGES:]
        self.pools = [images[labels == c] for c in range(num_classes)]

    def forward(self, x, t, y=None):
        y = torch.zeros(len(x), dtype=torch.long) if y is None else y
        # A pseudo-random digit per sample, from its noise: different noise, (almost always) a different digit.
        choice = (x.flatten(1)[:, 0].abs() * 1e4).long()
        pairs = zip(y.tolist(), choice.tolist(), strict=True)
        digits = torch.stack([self.pools[c][i % len(self.pools[c])] for c, i in pairs])
        DRAWN.extend(zip(y.tolist(), digits, strict=True))
        return x - to_model_space(digits).to(x.device) + 0 * self.anchor


class RealDigitsPlugin:
    @hookimpl
    def fm_register_models(self, register):
        register(ModelSpec(name="real-digits", description="lands on real digits (tests)", build=RealDigits))


@pytest.fixture
def real_digits_checkpoint(tmp_path):
    load_plugins()
    plugin = RealDigitsPlugin()
    pm.register(plugin, name="real-digits-plugin")
    registry.reset()
    try:
        result = train(
            {
                "data": "mnist-mini",
                "model": {"name": "real-digits"},
                "steps": 1,
                "batch_size": 16,
                "label_dropout": 0.0,
                "out": str(tmp_path / "run"),
                "sample_every": 0,
                "log_every": 1000,
                "checkpoint_every": 1000,
            }
        )
        DRAWN.clear()
        yield result.checkpoint
    finally:
        pm.unregister(plugin)
        registry.reset()
        DRAWN.clear()


def fm_eval(*args) -> dict:
    result = runner.invoke(
        app, ["eval", "--num", str(NUM), "--metrics", "fid", "--device", "cpu", "--json", *map(str, args)]
    )
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """FID of two feature sets [N, d]: ||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^(1/2)), unbiased
    covariances; Tr((S_a S_b)^(1/2)) is the sum of the square roots of the (real, >= 0) eigenvalues of S_a S_b."""
    mean_a, mean_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    trace_root = np.sqrt(np.linalg.eigvals(cov_a @ cov_b).real.clip(min=0)).sum()
    return float(((mean_a - mean_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * trace_root)


def test_real_digits_as_samples_score_like_real_data(real_digits_checkpoint, tmp_path, monkeypatch):
    """Samples that are real held-out digits: per-class accuracy = the classifier's verdict on them, overall
    accuracy near its test accuracy, FID = the Fréchet distance of their features, near --real."""
    train_classifier_briefly(monkeypatch)
    cache = tmp_path / "cache"
    # An explicit batch: the default one is chosen from a measuring pass of the model, which would draw a digit too.
    report = fm_eval(
        real_digits_checkpoint, "--solver", "euler", "--steps", "1", "--batch-size", "500", "--cache-dir", cache
    )
    real = fm_eval("--real", "--data", "mnist-mini", "--cache-dir", cache)
    assert report["extractor"]["identity"] == real["extractor"]["identity"]  # one classifier for both

    # The samples are exactly DRAWN's digits (in order), NUM/10 of each class.
    labels = torch.tensor([label for label, _ in DRAWN])
    assert torch.bincount(labels, minlength=10).tolist() == [NUM // 10] * 10
    digits = torch.stack([digit for _, digit in DRAWN])
    assert len({bytes(d.numpy()) for d in digits}) > 0.9 * NUM  # nearly all different

    network = load_classifier(report["extractor"]["path"])
    with torch.no_grad():
        features, logits = network(to_model_space(digits))
        test_digits = registry.get_dataset("mnist-mini").load(LoadOptions(split="test")).data
        reference = torch.cat([network(to_model_space(test_digits[i : i + 500]))[0] for i in range(0, 2000, 500)])

    conditional = report["conditional"]
    p = conditional["classifier_test_accuracy"]
    # Per class: exactly what the classifier says about those digits.
    correct = (logits.argmax(1) == labels).double()
    expected = [float(correct[labels == c].mean()) for c in range(10)]
    assert list(conditional["per_class"].values()) == pytest.approx(expected, abs=1e-9)
    assert conditional["accuracy"] == pytest.approx(float(correct.mean()), abs=1e-9)
    # Held-out digits are classified about as well as the test split: binomial sd sqrt(p (1 - p) / n) over
    # n = 200 samples (0.028 at p = 0.8) and over the 2000 test digits (0.009); allow 3 of each.
    tolerance = 3 * (p * (1 - p) / NUM) ** 0.5 + 3 * (p * (1 - p) / 2000) ** 0.5
    assert p > 0.5 and conditional["accuracy"] > p - tolerance, (conditional, p)

    # FID: the Fréchet distance of these digits' features to the test split's, computed here (float64; the
    # report's float32 features come in other batch sizes: relative 1e-4).
    fid, floor = report["metrics"]["fid"]["value"], real["metrics"]["fid"]["value"]
    assert report["metrics"]["fid"]["num_samples"] == real["metrics"]["fid"]["num_samples"] == NUM
    assert fid == pytest.approx(frechet_distance(features.double().numpy(), reference.double().numpy()), rel=1e-4)
    # ... and near the real-data floor (--real: 200 other train digits, balanced by class as the samples are;
    # measured 0.83 vs 0.89): within 30% either way, the spread between two draws of 200.
    assert 0.7 * floor < fid < 1.3 * floor, (fid, floor)
