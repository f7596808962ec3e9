"""fm eval's metrics against known answers, the feature extractors, the caches and the plot."""

import math
import time

import pytest
import torch
from PIL import Image

from fmcli.data.base import ArrayDataset, LoadOptions
from fmcli.errors import FMError
from fmcli.eval import metrics
from fmcli.eval.classifier import accuracy, train_classifier
from fmcli.eval.features import ExtractorContext, extract_features
from fmcli.eval.inception import FIDInceptionV3, load_weights, read_state_dict
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


@pytest.fixture(scope="module")
def inception():
    """One randomly initialised FID Inception for the module (building it takes a few seconds)."""
    return FIDInceptionV3().eval()


def test_inception_network_gives_2048_features_with_random_weights(inception):
    network = inception
    grayscale = torch.rand(2, 1, 28, 28) * 2 - 1
    with torch.no_grad():
        # Grayscale in (repeated to RGB inside), resized to 75x75: the smallest size the strides allow.
        features = network(grayscale, size=75)
    assert features.shape == (2, 2048)
    assert torch.isfinite(features).all()
    assert not torch.allclose(features[0], features[1])


def test_inception_weights_load_from_safetensors_and_pth_and_checksum_mismatch_fails(tmp_path, inception):
    from safetensors.torch import save_file

    from fmcli.eval.inception import sha256_of

    state = inception.state_dict()   # random weights
    st_path, pth_path = tmp_path / "w.safetensors", tmp_path / "w.pth"
    save_file({k: v.contiguous() for k, v in state.items()}, str(st_path))
    torch.save(state, pth_path)
    for path in (st_path, pth_path):
        loaded = read_state_dict(path, sha256_prefix=sha256_of(path)[:8])
        assert loaded.keys() == state.keys()
        assert all(torch.equal(loaded[k], v) for k, v in state.items())
        load_weights(inception, loaded, str(path))  # every key fits the network (strict, but for BN counters)
    with pytest.raises(FMError, match="SHA-256"):
        read_state_dict(st_path, sha256_prefix="00000000" if not sha256_of(st_path).startswith("0") else "ffffffff")
    with pytest.raises(FMError, match="not the FID Inception"):
        load_weights(inception, {"conv.weight": torch.zeros(1)}, "bad file")


def test_inception_without_weights_offline_is_a_clear_error(tmp_path):
    from fmcli.eval.inception import load_inception

    context = ExtractorContext(dataset_name="x", shape=(3, 32, 32), splits=("train",), load_split=None,
                               cache_dir=tmp_path, download=False)
    with pytest.raises(FMError, match="--inception-weights"):
        load_inception(context)


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
    model_space = real.float() / 127.5 - 1 + 0.001   # off the 8-bit grid by less than half a level
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
