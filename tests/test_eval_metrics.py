"""fm eval's metrics against known answers, the feature extractors, the caches and the plot."""

import importlib.util
import io
import math
import os
import sys
import time
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image

from fmcli.data.base import ArrayDataset, LoadOptions
from fmcli.errors import FMError
from fmcli.eval import inception, metrics
from fmcli.eval.classifier import accuracy, train_classifier
from fmcli.eval.features import ExtractorContext, extract_features
from fmcli.eval.plot import plot_metric_vs_nfe
from fmcli.eval.reference import reference_features


def gaussian(n: int, mean: torch.Tensor, cov: torch.Tensor, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    z = torch.randn(n, mean.shape[0], generator=generator, dtype=torch.float64)
    return mean + z @ torch.linalg.cholesky(cov).T


def closed_form_fid(m1, s1, m2, s2) -> float:
    """||m1 - m2||^2 + Tr(S1 + S2 - 2 (S1 S2)^{1/2}), with scipy's general matrix square root."""
    import scipy.linalg

    root = scipy.linalg.sqrtm(s1.numpy() @ s2.numpy()).real
    return float((m1 - m2).pow(2).sum() + torch.trace(s1) + torch.trace(s2) - 2 * float(root.trace()))


def random_cov(dim: int, seed: int) -> torch.Tensor:
    a = torch.randn(dim, dim, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    return a @ a.T / dim + 0.1 * torch.eye(dim, dtype=torch.float64)


def test_fid_and_kid_of_identical_sets_are_zero():
    features = gaussian(500, torch.zeros(8, dtype=torch.float64), random_cov(8, 0), seed=1)
    assert metrics.fid_from_features(features, features) == pytest.approx(0.0, abs=1e-8)
    kid, _ = metrics.kernel_inception_distance(features, features, subset_size=500)
    shifted, _ = metrics.kernel_inception_distance(features, features + 0.5, subset_size=500)
    # Literally identical sets leave only the cross term's diagonal: KID = -2 (mean diag K - mean K) / (m - 1),
    # a tiny negative number next to the KID of a slightly shifted copy.
    kernel = (features @ features.T / 8 + 1) ** 3
    expected = -2 * (kernel.diagonal().mean() - kernel.mean()) / (500 - 1)
    assert kid == pytest.approx(float(expected), rel=1e-9)
    assert abs(kid) < 0.05 * shifted


def test_fid_matches_the_closed_form_for_two_gaussians():
    dim = 6
    m1, m2 = torch.zeros(dim, dtype=torch.float64), torch.linspace(-1, 1, dim, dtype=torch.float64)
    s1, s2 = random_cov(dim, 1), random_cov(dim, 2)
    exact = closed_form_fid(m1, s1, m2, s2)
    # The exact-statistics path agrees with scipy's matrix square root...
    assert metrics.frechet_distance(m1, s1, m2, s2) == pytest.approx(exact, rel=1e-9)
    # ...and statistics of large samples converge to it.
    estimate = metrics.fid_from_features(gaussian(200_000, m1, s1, 3), gaussian(200_000, m2, s2, 4))
    assert estimate == pytest.approx(exact, rel=0.02)
    assert exact > 1.0  # the test compares different distributions


def test_kid_is_near_zero_for_one_distribution_and_positive_for_two():
    cov = random_cov(4, 5)
    a = gaussian(2000, torch.zeros(4, dtype=torch.float64), cov, 6)
    b = gaussian(2000, torch.zeros(4, dtype=torch.float64), cov, 7)
    shifted = gaussian(2000, torch.full((4,), 0.7, dtype=torch.float64), cov, 8)
    same, same_std = metrics.kernel_inception_distance(a, b, num_subsets=20, subset_size=500)
    different, _ = metrics.kernel_inception_distance(a, shifted, num_subsets=20, subset_size=500)
    assert abs(same) < 3 * same_std + 1e-3
    assert different > 20 * max(abs(same), same_std)


def test_kid_works_with_few_samples_where_fid_would_be_singular():
    a, b = torch.randn(5, 64), torch.randn(5, 64) + 3
    value, _ = metrics.kernel_inception_distance(a, b)
    assert value > 0
    assert metrics.fid_min_samples(64) == 65


def test_precision_recall_of_a_set_against_itself_is_one_and_precision_drops_when_shifted():
    real = torch.randn(600, 5, generator=torch.Generator().manual_seed(0))
    assert metrics.precision_recall(real, real, k=3) == (1.0, 1.0)
    shifted = real + 3.0
    precision, recall = metrics.precision_recall(real, shifted, k=3)
    assert precision < 0.3 and recall < 0.3
    # A generated set collapsed onto a quarter of the real modes: high fidelity, low diversity.
    modes = torch.tensor([[8.0 * i, 0, 0, 0, 0] for i in range(4)])
    real_modes = modes.repeat_interleave(150, 0) + 0.3 * torch.randn(600, 5, generator=torch.Generator().manual_seed(1))
    collapsed = modes[:1].repeat(600, 1) + 0.3 * torch.randn(600, 5, generator=torch.Generator().manual_seed(2))
    precision, recall = metrics.precision_recall(real_modes, collapsed, k=3)
    assert precision > 0.9 and recall < 0.35


def test_class_accuracy_and_histogram():
    requested = torch.tensor([0, 0, 1, 1, 2, 2])
    predicted = torch.tensor([0, 1, 1, 1, 0, 2])
    overall, per_class = metrics.class_accuracy(predicted, requested, 4)
    assert overall == pytest.approx(4 / 6)
    assert per_class == [0.5, 1.0, 0.5, None]
    assert metrics.class_histogram(predicted, 4) == [2, 3, 1, 0]


INCEPTION_REFERENCE = Path(__file__).parent / "data" / "inception_reference.safetensors"


def require_torch_fidelity() -> None:
    """Skip without torch-fidelity here; in CI, where ``make setup`` installs it, its absence fails."""
    if importlib.util.find_spec("torch_fidelity") is None:
        message = "torch-fidelity is not installed (make setup installs it; or pip install 'fmcli[inception]')"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


def inception_shapes() -> dict[str, torch.Tensor]:
    """The names and shapes of torch-fidelity's FID Inception state dict, as meta tensors.

    Its constructor loads weights (from a URL by default); with that switched off and on the
    meta device, building it reads, downloads and allocates nothing.
    """
    network_class = inception.package_modules()[0].FeatureExtractorInceptionV3
    empty = io.BytesIO()
    torch.save({}, empty)
    empty.seek(0)
    with mock.patch.object(network_class, "load_state_dict"), torch.device("meta"):
        network = network_class("shapes-only", ["2048"], feature_extractor_weights_path=empty)
    return network.state_dict()


def seeded_inception_state(shapes: dict[str, torch.Tensor], seed: int) -> dict[str, torch.Tensor]:
    """Random FID Inception weights, the same on every machine (CPU generator, sorted names).

    He-normal convolutions and BatchNorm statistics near the identity keep the activations of
    order one through the 94 conv/BN/ReLU layers (PyTorch's default init lets them shrink layer
    after layer); non-trivial BatchNorm statistics make a wrong use of them show in the features.
    No BatchNorm step counters, like the TensorFlow port's file.
    """
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for name in sorted(shapes):
        shape = shapes[name].shape
        if name.endswith("num_batches_tracked"):
            continue
        if name.endswith("conv.weight"):
            state[name] = torch.randn(shape, generator=generator) * math.sqrt(2.0 / math.prod(shape[1:]))
        elif name.endswith("bn.weight"):
            state[name] = 0.75 + 0.5 * torch.rand(shape, generator=generator)
        elif name.endswith(("bn.bias", "bn.running_mean")):
            state[name] = 0.1 * torch.randn(shape, generator=generator)
        elif name.endswith("bn.running_var"):
            state[name] = 0.5 + torch.rand(shape, generator=generator)
        elif name in ("fc.weight", "fc.bias"):
            state[name] = 0.01 * torch.randn(shape, generator=generator)
        else:
            raise KeyError(f"no initialisation for {name}")
    return state


def seeded_images(size: int, seed: int) -> torch.Tensor:
    """Four random RGB uint8 images [4, 3, size, size], the same on every machine."""
    return torch.randint(0, 256, (4, 3, size, size), generator=torch.Generator().manual_seed(seed), dtype=torch.uint8)


def weights_fingerprint(state: dict[str, torch.Tensor]) -> float:
    return float(sum(state[name].double().abs().sum() for name in sorted(state)))


@pytest.fixture(scope="module")
def inception_state():
    """Seeded random weights for torch-fidelity's FID Inception (never the real, downloaded ones)."""
    require_torch_fidelity()
    return seeded_inception_state(inception_shapes(), seed=0)


@pytest.fixture(scope="module")
def seeded_inception(inception_state):
    return inception.inception_network(inception_state, "seeded weights")


def test_inception_network_gives_2048_features_with_random_weights(seeded_inception):
    grayscale = torch.rand(2, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        # Grayscale in (repeated to RGB inside), resized to 75x75: the smallest size the strides allow.
        features = inception.inception_features(seeded_inception, grayscale, size=75)
    assert features.shape == (2, 2048)
    assert torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])


def test_inception_features_match_those_of_the_hand_written_network(tmp_path, inception_state):
    """fm's extractor (weights file, torch-fidelity's network, resize, normalisation, pooling)
    against the features that fm's own hand-written FID Inception-v3 gave before it was deleted,
    on the same seeded weights and images: tests/data/inception_reference.safetensors (66 KB),
    written by tests/data/make_inception_reference.py in the commit that added it (git log -- tests/data),
    where a test also found both networks equal (max |diff| 0.0 on one machine)."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    with safe_open(str(INCEPTION_REFERENCE), "pt") as reference:
        expected = {name: reference.get_tensor(name) for name in reference.keys()}
        metadata = reference.metadata()
    assert metadata["weights_seed"] == "0"  # the seed inception_state uses
    # The generators still give the weights and images the reference was made from.
    assert weights_fingerprint(inception_state) == pytest.approx(float(metadata["weights_abs_sum"]), rel=1e-12)
    weights = tmp_path / "seeded.safetensors"
    save_file(inception_state, str(weights))
    context = ExtractorContext(
        dataset_name="x", shape=(3, 64, 64), splits=("train",), load_split=None, weights=weights, download=False
    )
    extractor = inception.load_inception(context)
    assert (extractor.name, extractor.dim, extractor.num_classes) == ("inception", 2048, 0)
    for size in (64, 299):  # resized to 299 / already 299
        images = seeded_images(size, seed=int(metadata["images_seed"]))
        assert int(images.long().sum()) == int(metadata[f"images_{size}_sum"])
        features, logits = extract_features(extractor, images)
        assert logits is None
        # float32 rounding only: on one machine the two networks agree exactly, float32 and
        # float64 features differ by < 1e-5 and 1 or 2 threads by ~6e-6; a wrong preprocessing
        # step moves them by far more (TensorFlow's (x - 128) / 128 normalisation by 3e-2).
        torch.testing.assert_close(features, expected[f"features_{size}"], rtol=1e-4, atol=1e-4)


def test_inception_weights_load_from_safetensors_and_pth_and_checksum_mismatch_fails(
    tmp_path, inception_state, seeded_inception
):
    from safetensors.torch import save_file

    # safetensors without BatchNorm step counters (like the TensorFlow port), .pth with them.
    st_path, pth_path = tmp_path / "w.safetensors", tmp_path / "w.pth"
    save_file(inception_state, str(st_path))
    torch.save(seeded_inception.state_dict(), pth_path)
    for path, state in ((st_path, inception_state), (pth_path, seeded_inception.state_dict())):
        loaded = inception.read_state_dict(path, sha256_prefix=inception.sha256_of(path)[:8])
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
        inception.inception_network(loaded, str(path))  # every tensor fits the network (strictly)
    with pytest.raises(FMError, match="SHA-256"):
        inception.read_state_dict(st_path, sha256_prefix="0" * 8 if inception.sha256_of(st_path)[0] != "0" else "f" * 8)
    with pytest.raises(FMError, match="not the FID Inception"):
        inception.inception_network({"conv.weight": torch.zeros(1)}, "bad file")


def test_inception_without_weights_offline_is_a_clear_error(tmp_path):
    context = ExtractorContext(
        dataset_name="x", shape=(3, 32, 32), splits=("train",), load_split=None, cache_dir=tmp_path, download=False
    )
    with pytest.raises(FMError, match="--inception-weights"):
        inception.load_inception(context)


def test_inception_without_torch_fidelity_names_the_extra(tmp_path, monkeypatch):
    from safetensors.torch import save_file

    save_file({"fc.bias": torch.zeros(1)}, str(tmp_path / "w.safetensors"))
    context = ExtractorContext(
        dataset_name="x",
        shape=(3, 32, 32),
        splits=("train",),
        load_split=None,
        weights=tmp_path / "w.safetensors",
        download=False,
    )
    monkeypatch.setattr(inception, "PACKAGE", "torch_fidelity_not_installed")
    inception.package_modules.cache_clear()
    try:
        with pytest.raises(FMError, match=r"pip install 'fmcli\[inception\]'"):
            inception.load_inception(context)
    finally:
        inception.package_modules.cache_clear()


def test_torch_fidelity_inception_imports_alone_and_leaves_sys_modules_as_it_was():
    require_torch_fidelity()
    inception.package_modules.cache_clear()
    before = set(sys.modules)
    module, version = inception.package_modules()
    assert module.FeatureExtractorInceptionV3.__name__ == "FeatureExtractorInceptionV3" and version
    added = set(sys.modules) - before
    # Neither the rest of torch-fidelity (its __init__ imports torchvision) nor its Inception module
    # stays imported under the package's name: a later ``import torch_fidelity`` runs as usual.
    assert not any(name == "torch_fidelity" or name.startswith("torch_fidelity.") for name in added)
    assert "torchvision" not in added


class CountingExtractor:
    name, dim, identity, num_classes, info = "count", 3, "count-v1", 0, {}

    def __init__(self):
        self.calls = 0

    def embed(self, images):
        self.calls += 1
        flat = images.reshape(images.shape[0], -1)
        return torch.stack([flat.mean(1), flat.std(1), flat[:, 0]], 1), None


def test_reference_features_are_cached_and_keyed_by_content(tmp_path):
    images = torch.randint(0, 256, (40, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    dataset = ArrayDataset(name="tiny", split="test", kind="image", data=images)
    extractor = CountingExtractor()
    first = reference_features(extractor, dataset, cache=tmp_path, batch_size=16)
    calls = extractor.calls
    assert calls == 3 and not first.cached
    second = reference_features(extractor, dataset, cache=tmp_path, batch_size=16)
    assert extractor.calls == calls and second.cached  # nothing recomputed
    assert torch.equal(first.features, second.features)
    assert torch.allclose(first.stats.cov, second.stats.cov)
    changed = ArrayDataset(name="tiny", split="test", kind="image", data=images.flip(0))
    third = reference_features(extractor, changed, cache=tmp_path, batch_size=16)
    assert not third.cached and extractor.calls == calls + 3


def test_extract_features_quantises_generated_images_like_real_ones():
    real = torch.randint(0, 256, (6, 1, 8, 8), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    model_space = real.float() / 127.5 - 1 + 0.001  # off the 8-bit grid by less than half a level
    a, _ = extract_features(CountingExtractor(), real)
    b, _ = extract_features(CountingExtractor(), model_space)
    assert torch.equal(a, b)


def test_classifier_trains_to_high_accuracy_on_a_small_subset_quickly():
    from fmcli.data.resolve import load_data

    train = load_data("mnist-mini", LoadOptions(split="train"))
    test = load_data("mnist-mini", LoadOptions(split="test"))
    start = time.perf_counter()
    network = train_classifier(train.data[:3000], train.labels[:3000], 10, epochs=2, seed=0)
    seconds = time.perf_counter() - start
    held_out = accuracy(network, test.data[:1000], test.labels[:1000])
    assert held_out > 0.9, held_out
    print(f"classifier: 3000 images, 2 epochs, {seconds:.1f} s, held-out accuracy {held_out:.3f}")


def test_sweep_plot_is_written(tmp_path):
    runs = [{"solver": "euler", "adaptive": False, "nfe": n, "fid": 50 / n} for n in (2, 5, 10)]
    runs.append({"solver": "dopri5", "adaptive": True, "nfe": 44, "fid": 2.0})
    path = tmp_path / "sweep.png"
    plot_metric_vs_nfe(runs, path, title="FID vs NFE")
    image = Image.open(path)
    assert image.size == (720, 480)
    # Both series are drawn in their colours (blue line, orange point).
    colours = {c for _, c in image.getcolors(1 << 20)}
    assert (31, 119, 180) in colours and (255, 127, 14) in colours


def test_bits_per_dim_of_a_uniform_density_is_eight():
    from fmcli.eval.nll import bits_per_dim

    dim = 784
    log_prob = torch.tensor([dim * math.log(0.5)])  # uniform on [-1, 1]^D in model space
    assert float(bits_per_dim(log_prob, dim, dequantised_8bit=True)) == pytest.approx(8.0)


def test_the_classifier_trains_through_blur_of_half_its_pictures():
    """A classifier trained on crisp pictures only called a soft picture anything (fmcli.eval.classifier.random_blur):
    half the batch is blurred, by widths up to H / 64, flat pictures stay flat, blurred ones lose edge energy."""
    from fmcli.eval.classifier import random_blur

    images = torch.rand(64, 3, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    images[:8] = 0.25
    out = random_blur(images, torch.Generator().manual_seed(0))
    torch.testing.assert_close(out[:8], images[:8])
    sharp = (out[8:] == images[8:]).flatten(1).all(1)
    assert 12 <= int(sharp.sum()) <= 44
    edges = lambda x: (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3))  # noqa: E731
    assert (edges(out[8:][~sharp]) < edges(images[8:][~sharp])).all()


def test_the_classifier_stem_brings_large_pictures_to_32_px_and_survives_its_cache_file(tmp_path):
    """Above 32 px stride-2 convolutions halve the pictures first (version 3: the full-size network of version 2
    trained 78 steps in 326 s and read 80% of 128 px test shapes right); the cache file rebuilds the same network."""
    from fmcli.eval.classifier import SmallCNN, load_classifier, save_classifier

    network = SmallCNN(3, 5, image_size=128).eval()
    images = torch.rand(2, 3, 128, 128) * 2 - 1
    assert network.stem(images).shape == (2, 16, 32, 32)
    assert len(SmallCNN(1, 10, image_size=28).stem) == 0  # MNIST and 32 px data keep the version 2 network
    save_classifier(tmp_path / "c.safetensors", network, {"channels": 3, "num_classes": 5, "shape": [3, 128, 128]})
    loaded, _ = load_classifier(tmp_path / "c.safetensors")
    torch.testing.assert_close(loaded(images)[1], network(images)[1])


def test_the_classifier_trains_two_epochs_or_min_steps_whichever_is_more():
    from fmcli.eval import classifier

    images = torch.randint(0, 256, (256, 1, 8, 8), dtype=torch.uint8)
    labels = torch.randint(0, 2, (256,))
    totals = []
    classifier.train_classifier(images, labels, 2, progress=lambda what, step, total: totals.append(total))
    assert totals[-1] == classifier.MIN_STEPS  # 2 steps an epoch: MIN_STEPS, not 4
    totals.clear()
    classifier.train_classifier(images, labels, 2, epochs=3, progress=lambda what, step, total: totals.append(total))
    assert totals[-1] == 6


def test_the_classifier_reads_64_px_shapes_after_two_short_epochs():
    """Real pictures at 64 px (fm's shapes drawing code), 2,000 to train on, two epochs of batches of 32 (125 steps)."""
    spec = importlib.util.spec_from_file_location("procedural", Path(__file__).parents[1] / "bench" / "procedural.py")
    procedural = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(procedural)
    rng = np.random.default_rng(0)
    kinds = rng.integers(0, 5, 2500)
    images = torch.from_numpy(procedural.shape_images(kinds, 64, rng)).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(kinds)
    start = time.perf_counter()
    network = train_classifier(images[:2000], labels[:2000], 5, epochs=2, batch_size=32, seed=0)
    held_out = accuracy(network, images[2000:], labels[2000:])
    seconds = time.perf_counter() - start
    print(f"classifier: 2000 shapes at 64 px, 2 epochs of 32, {seconds:.1f} s, held out {held_out:.3f}")
    assert held_out > 0.9, held_out
