"""The ``classifier`` extractor: a small CNN trained on the data set's own training split.

For MNIST-like data there is no standard feature network, so fm trains one the first time it
is needed (about 99.3% test accuracy on MNIST, a few minutes on two CPU cores) and caches it
as ``<cache>/classifiers/<data set>-<content hash>-v<version>.safetensors`` with its test accuracy in the
file's metadata. Features are the 128-d penultimate activations; the logits classify samples,
which gives the conditional accuracy of class-conditional models.

Architecture: above 32 px, a stem of stride-2 3x3 convolutions (16 channels) halves the pictures until they are at
most 32 px; then conv32 - pool - conv64 - pool - conv128 - adaptive pool 3x3 - fc128 - fc(classes), with BatchNorm
and ReLU. Training: Adam with a one-cycle schedule, random shifts of up to 2 pixels (light augmentation that MNIST
digits tolerate) and random blur, for two epochs or ``MIN_STEPS`` steps, whichever is more.

Why the stem and the floor on steps (version 3): version 2 ran its first convolutions at full size and trained two
epochs; on 5,000 coloured shapes at 128 px that was 78 steps in 326 s and 80% right on the real test pictures, so a
perfect generator could not score above 0.8. With the stem, the 300 steps take 123 s and are right on 100% of them,
of them after a 3x3 blur and of a 24 dB autoencoder's reconstructions of them (78 steps: 96%; 195 steps: 100%).
"""

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save
from torch import Tensor, nn

from fmcli.data.base import ArrayDataset, to_model_space
from fmcli.data.resolve import content_hash
from fmcli.errors import FMError
from fmcli.eval.features import ExtractorContext, Progress, cache_name
from fmcli.io.files import atomic_write_bytes

FEATURE_DIM = 128
FORMAT = "fmcli-classifier"
FORMAT_VERSION = 3  # 2: trained through random blur; 3: the stem above 32 px and MIN_STEPS. Older files are left alone
MIN_STEPS = 300  # 195 were enough for 100% on 128 px shapes (5,000 pictures); MNIST's two epochs are 937
STEM_TO = 32  # the stem halves pictures until they are at most this size


def _conv_block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallCNN(nn.Module):
    def __init__(self, channels: int, num_classes: int, width: int = 32, image_size: int = STEM_TO):
        super().__init__()
        stem = []
        while image_size > STEM_TO:  # a learned downsampling: a tenth of the time of full-size convolutions at 128 px
            stem.append(nn.Sequential(nn.Conv2d(channels, width // 2, 3, 2, 1, bias=False), nn.BatchNorm2d(width // 2)))
            stem.append(nn.ReLU(inplace=True))
            channels, image_size = width // 2, (image_size + 1) // 2
        self.stem = nn.Sequential(*stem)
        self.body = nn.Sequential(
            _conv_block(channels, width),
            nn.MaxPool2d(2),
            _conv_block(width, 2 * width),
            nn.MaxPool2d(2),
            _conv_block(2 * width, 4 * width),
            nn.AdaptiveMaxPool2d(3),  # any input size -> 3x3, so one network fits every image size
            nn.Flatten(),
            nn.Linear(4 * width * 9, FEATURE_DIM),
            nn.ReLU(inplace=True),
        )
        self.dropout = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Model-space images [B, C, H, W] -> (features [B, 128], logits [B, classes])."""
        features = self.body(self.stem(x))
        return features, self.head(self.dropout(features))


class ClassifierExtractor:
    """A trained ``SmallCNN`` in eval mode, as a ``FeatureExtractor``."""

    name = "classifier"
    dim = FEATURE_DIM

    def __init__(self, network: SmallCNN, *, identity: str, info: dict):
        self.network = network.eval()
        self.identity = identity
        self.info = info
        self.num_classes = network.head.out_features

    @torch.no_grad()
    def embed(self, images: Tensor) -> tuple[Tensor, Tensor]:
        return self.network(images)


def random_blur(images: Tensor, generator: torch.Generator, levels: int = 4) -> Tensor:
    """Blur half the images with a Gaussian of a random width up to ``H / 64`` pixels (2 px at 128 px, 0.5 at 32 px).

    Why: a classifier trained on crisp pictures only calls a slightly soft picture anything (trained without this,
    the 128 px shapes classifier was right on 87% of the real test pictures, on 66% of them after a 3x3 box blur,
    and on 25% of their reconstructions by a 24 dB autoencoder): a generator's softness must not read as the wrong
    class. The widths come in ``levels`` steps, so images sharing one are blurred together."""
    n, channels, height, _ = images.shape
    chosen = torch.randint(0, 2 * levels, (n,), generator=generator)  # levels..2*levels-1: left sharp
    out = images.clone()
    for level in chosen[chosen < levels].unique().tolist():
        sigma = (level + 1) / levels * height / 64
        radius = max(1, round(2 * sigma))
        taps = torch.exp(-0.5 * (torch.arange(-radius, radius + 1, dtype=images.dtype) / sigma) ** 2)
        taps = (taps / taps.sum()).to(images.device)
        rows = (chosen == level).nonzero().squeeze(1).to(images.device)
        picked = F.pad(images[rows], (radius,) * 4, mode="replicate")
        picked = F.conv2d(picked, taps.view(1, 1, 1, -1).expand(channels, 1, 1, -1).contiguous(), groups=channels)
        out[rows] = F.conv2d(picked, taps.view(1, 1, -1, 1).expand(channels, 1, -1, 1).contiguous(), groups=channels)
    return out


def random_shift(images: Tensor, max_shift: int, generator: torch.Generator) -> Tensor:
    """Translate each image by its own whole-pixel offset in [-max_shift, max_shift]^2.

    The vacated border is filled with -1 (black in model space), the background of digits.
    Images sharing an offset are cut from the padded batch together (at most 25 slices for 2 px).
    """
    n, _, h, w = images.shape
    padded = F.pad(images, (max_shift,) * 4, value=-1.0)
    offsets = torch.randint(0, (2 * max_shift + 1) ** 2, (n,), generator=generator)
    shifted = torch.empty_like(images)
    for offset in offsets.unique().tolist():
        rows = (offsets == offset).nonzero().squeeze(1).to(images.device)
        dy, dx = divmod(offset, 2 * max_shift + 1)
        shifted[rows] = padded[rows, :, dy : dy + h, dx : dx + w]
    return shifted


@torch.no_grad()
def accuracy(network: nn.Module, images_uint8: Tensor, labels: Tensor, *, batch_size: int = 1000) -> float:
    network.eval()
    correct = 0
    device = next(network.parameters()).device
    for start in range(0, images_uint8.shape[0], batch_size):
        batch = to_model_space(images_uint8[start : start + batch_size].to(device))
        _, logits = network(batch)
        correct += int((logits.argmax(1).cpu() == labels[start : start + batch_size]).sum())
    return correct / images_uint8.shape[0]


def train_classifier(
    images_uint8: Tensor,
    labels: Tensor,
    num_classes: int,
    *,
    epochs: int | None = None,
    batch_size: int = 128,
    lr: float = 3e-3,
    max_shift: int = 2,
    seed: int = 0,
    device: torch.device | str = "cpu",
    progress: Progress | None = None,
) -> SmallCNN:
    """Train ``SmallCNN`` on uint8 images [N, C, H, W] with integer labels; returns it in eval mode. ``epochs``:
    two, or enough for ``MIN_STEPS`` steps, when not given."""
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    network = SmallCNN(images_uint8.shape[1], num_classes, image_size=max(images_uint8.shape[-2:])).to(device)
    steps_per_epoch = max(1, images_uint8.shape[0] // batch_size)
    if epochs is None:
        epochs = max(2, -(-MIN_STEPS // steps_per_epoch))
    total_steps = epochs * steps_per_epoch
    optimizer = torch.optim.Adam(network.parameters(), lr=lr)
    if total_steps >= 10:
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=0.2)
    else:  # one-cycle needs a few steps per phase; tiny runs (tests) keep a constant rate
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    network.train()
    step = 0
    for _ in range(epochs):
        order = torch.randperm(images_uint8.shape[0], generator=generator)
        for index in range(steps_per_epoch):
            chosen = order[index * batch_size : (index + 1) * batch_size]
            batch = to_model_space(images_uint8[chosen].to(device))
            if max_shift:
                batch = random_shift(batch, max_shift, generator)
            batch = random_blur(batch, generator)
            _, logits = network(batch)
            loss = F.cross_entropy(logits, labels[chosen].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
            step += 1
            if progress and (step % 20 == 0 or step == total_steps):
                progress("training classifier", step, total_steps)
    return network.eval()


def classifier_path(cache: Path, dataset_name: str, train_hash: str) -> Path:
    return cache / "classifiers" / f"{cache_name(dataset_name)}-{train_hash[:16]}-v{FORMAT_VERSION}.safetensors"


def save_classifier(path: Path, network: SmallCNN, metadata: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    encoded = {key: json.dumps(value) for key, value in metadata.items()} | {"format": FORMAT}
    state = {k: v.detach().cpu().contiguous() for k, v in network.state_dict().items()}
    atomic_write_bytes(path, save(state, metadata=encoded))  # another process never sees half a file


def read_cache_file(path: Path, fmt: str, what: str) -> tuple[dict, dict]:
    """Weights and JSON metadata of a cached network (``format`` ``fmt``); one line naming ``what`` it should be
    when the file is unreadable or another kind."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as handle:
            raw = handle.metadata() or {}
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as error:
        raise FMError(f"cached {what} {path} is unreadable ({error}); delete it to retrain") from None
    if raw.get("format") != fmt:
        raise FMError(f"{path} is not an fm {what} file; delete it to retrain")
    return state, {key: json.loads(value) for key, value in raw.items() if key != "format"}


def load_classifier(path: Path, device: torch.device | str = "cpu") -> tuple[SmallCNN, dict]:
    """The network and its metadata (channels, num_classes, test accuracy, ...) from a cache file."""
    state, metadata = read_cache_file(path, FORMAT, "classifier")
    network = SmallCNN(metadata["channels"], metadata["num_classes"], image_size=max(metadata["shape"][-2:]))
    network.load_state_dict(state)
    return network.to(device).eval(), metadata


def trained_classifier(context: ExtractorContext) -> ClassifierExtractor:
    """The cached classifier for this data set, training (and caching) it on first use."""
    train = context.load_split("train")
    if train.labels is None or train.num_classes < 2:
        raise FMError(
            f"the 'classifier' feature extractor needs a labelled data set, and {context.dataset_name!r} has no "
            f"classes; use --extractor inception"
        )
    train_hash = content_hash(train)
    path = classifier_path(context.cache, context.dataset_name, train_hash)
    if path.exists():
        network, metadata = load_classifier(path, context.device)
    else:
        network, metadata = _train_and_cache(context, train, train_hash, path)
    if tuple(metadata["shape"]) != tuple(context.shape):
        raise FMError(
            f"the cached classifier for {context.dataset_name!r} expects images of shape {metadata['shape']}, "
            f"but the evaluated images are {list(context.shape)}"
        )
    info = {key: metadata[key] for key in ("test_accuracy", "accuracy_split", "train_seconds", "train_size")}
    info["path"] = str(path)
    return ClassifierExtractor(network, identity=f"classifier-v{FORMAT_VERSION}-{train_hash[:16]}", info=info)


def _train_and_cache(context: ExtractorContext, train: ArrayDataset, train_hash: str, path: Path):
    images, labels = train.data, train.labels
    if "test" in context.splits:
        test = context.load_split("test")
        held_images, held_labels, accuracy_split = test.data, test.labels, "test"
    else:
        # No test split: hold out a tenth of the training images to measure accuracy.
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))
        held = order[: max(1, len(train) // 10)]
        kept = order[len(held) :]
        held_images, held_labels, accuracy_split = images[held], labels[held], "held-out 10% of train"
        images, labels = images[kept], labels[kept]
    start = time.perf_counter()
    network = train_classifier(images, labels, train.num_classes, device=context.device, progress=context.progress)
    seconds = time.perf_counter() - start
    test_accuracy = accuracy(network, held_images, held_labels)
    metadata = {
        "format_version": FORMAT_VERSION,
        "dataset": context.dataset_name,
        "content_hash": train_hash,
        "channels": int(images.shape[1]),
        "shape": list(images.shape[1:]),
        "num_classes": train.num_classes,
        "class_names": train.class_names,
        "test_accuracy": test_accuracy,
        "accuracy_split": accuracy_split,
        "train_size": int(images.shape[0]),
        "train_seconds": round(seconds, 1),
    }
    save_classifier(path, network, metadata)
    return network, metadata
