"""The ``inception`` extractor: the FID Inception-v3 of pytorch-fid, for figures comparable to papers.

The network is TensorFlow's 2015-12-05 Inception-v3 as ported by pytorch-fid (Seitzer), with
its four FID-specific patches: average pooling that ignores padding in the A, C and first E
blocks, and max pooling in the second E block. Features are the 2048-d outputs of the final
average pool. Images are resized to 299x299 (bilinear, no antialiasing, as pytorch-fid does)
and grayscale is repeated to three channels; inputs stay in [-1, 1], the range it expects.

Weights: ``--inception-weights PATH`` (the .pth state dict, or the same tensors converted to
safetensors), or a one-time download into ``<cache>/inception/`` whose SHA-256 must start with
the prefix the file name carries.
"""

import hashlib
import shutil
import urllib.error
import urllib.request
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from fmcli.errors import FMError
from fmcli.eval.features import ExtractorContext

WEIGHTS_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)
WEIGHTS_FILE = "pt_inception-2015-12-05-6726825d.pth"
WEIGHTS_SHA256_PREFIX = "6726825d"   # torch.hub convention: the name carries the hash's first 8 hex digits
FEATURE_DIM = 2048


class BasicConv2d(nn.Module):
    def __init__(self, c_in: int, c_out: int, **kwargs):
        super().__init__()
        self.conv = nn.Conv2d(c_in, c_out, bias=False, **kwargs)
        self.bn = nn.BatchNorm2d(c_out, eps=0.001)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu(self.bn(self.conv(x)))


def _avg_pool_no_pad(x: Tensor) -> Tensor:
    # TensorFlow's average pool leaves the zero padding out of the mean (FID patch).
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


class FIDInceptionA(nn.Module):
    def __init__(self, c_in: int, pool_features: int):
        super().__init__()
        self.branch1x1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch5x5_1 = BasicConv2d(c_in, 48, kernel_size=1)
        self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
        self.branch_pool = BasicConv2d(c_in, pool_features, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch1x1(x),
            self.branch5x5_2(self.branch5x5_1(x)),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            self.branch_pool(_avg_pool_no_pad(x)),
        ], 1)


class InceptionB(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3 = BasicConv2d(c_in, 384, kernel_size=3, stride=2)
        self.branch3x3dbl_1 = BasicConv2d(c_in, 64, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
        self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return torch.cat([
            self.branch3x3(x),
            self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
            F.max_pool2d(x, kernel_size=3, stride=2),
        ], 1)


class FIDInceptionC(nn.Module):
    def __init__(self, c_in: int, channels_7x7: int):
        super().__init__()
        c7 = channels_7x7
        self.branch1x1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_1 = BasicConv2d(c_in, c7, kernel_size=1)
        self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        seven = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        double = self.branch7x7dbl_1(x)
        for layer in (self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4, self.branch7x7dbl_5):
            double = layer(double)
        return torch.cat([self.branch1x1(x), seven, double, self.branch_pool(_avg_pool_no_pad(x))], 1)


class InceptionD(nn.Module):
    def __init__(self, c_in: int):
        super().__init__()
        self.branch3x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
        self.branch7x7x3_1 = BasicConv2d(c_in, 192, kernel_size=1)
        self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
        self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
        self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        seven = self.branch7x7x3_4(self.branch7x7x3_3(self.branch7x7x3_2(self.branch7x7x3_1(x))))
        return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), seven, F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class FIDInceptionE(nn.Module):
    """Inception E block; ``pool="avg"`` for Mixed_7b, ``"max"`` for Mixed_7c (the FID network's quirk)."""

    def __init__(self, c_in: int, pool: str):
        super().__init__()
        self.pool = pool
        self.branch1x1 = BasicConv2d(c_in, 320, kernel_size=1)
        self.branch3x3_1 = BasicConv2d(c_in, 384, kernel_size=1)
        self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch3x3dbl_1 = BasicConv2d(c_in, 448, kernel_size=1)
        self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
        self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
        self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
        self.branch_pool = BasicConv2d(c_in, 192, kernel_size=1)

    def forward(self, x: Tensor) -> Tensor:
        three = self.branch3x3_1(x)
        double = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        pooled = _avg_pool_no_pad(x) if self.pool == "avg" else F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        return torch.cat([
            self.branch1x1(x),
            self.branch3x3_2a(three), self.branch3x3_2b(three),
            self.branch3x3dbl_3a(double), self.branch3x3dbl_3b(double),
            self.branch_pool(pooled),
        ], 1)


class FIDInceptionV3(nn.Module):
    """Inception-v3 up to the final average pool, with the parameter names of pytorch-fid's weights."""

    def __init__(self):
        super().__init__()
        self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
        self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
        self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
        self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
        self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
        self.Mixed_5b = FIDInceptionA(192, pool_features=32)
        self.Mixed_5c = FIDInceptionA(256, pool_features=64)
        self.Mixed_5d = FIDInceptionA(288, pool_features=64)
        self.Mixed_6a = InceptionB(288)
        self.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
        self.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
        self.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
        self.Mixed_7a = InceptionD(768)
        self.Mixed_7b = FIDInceptionE(1280, pool="avg")
        self.Mixed_7c = FIDInceptionE(2048, pool="max")
        self.fc = nn.Linear(2048, 1008)   # unused by FID; present so the official file loads strictly

    def forward(self, x: Tensor, size: int = 299) -> Tensor:
        """Images in [-1, 1], [B, 1 or 3, H, W] -> 2048-d pool features [B, 2048].

        ``size``: the resolution the images are resized to (299 for FID; tests use 75, the smallest
        the strides allow, for speed).
        """
        if x.shape[1] == 1:
            x = x.repeat(1, 3, 1, 1)
        if x.shape[-2:] != (size, size):
            # Bilinear resizing is linear, so resizing [-1, 1] images equals pytorch-fid's
            # resize of [0, 1] images followed by 2x - 1.
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        x = self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x))
        x = F.max_pool2d(x, kernel_size=3, stride=2)
        for block in (self.Mixed_5b, self.Mixed_5c, self.Mixed_5d, self.Mixed_6a, self.Mixed_6b, self.Mixed_6c,
                      self.Mixed_6d, self.Mixed_6e, self.Mixed_7a, self.Mixed_7b, self.Mixed_7c):
            x = block(x)
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


class InceptionExtractor:
    name = "inception"
    dim = FEATURE_DIM
    num_classes = 0

    def __init__(self, network: FIDInceptionV3, *, identity: str, info: dict):
        self.network = network.eval()
        self.identity = identity
        self.info = info

    @torch.no_grad()
    def embed(self, images: Tensor) -> tuple[Tensor, None]:
        return self.network(images), None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_state_dict(path: Path, *, sha256_prefix: str | None = None) -> dict[str, Tensor]:
    """Tensors of a .safetensors file or a .pth/.pt state dict (loaded with weights_only=True).

    With ``sha256_prefix``, the file's SHA-256 must start with it (else FMError).
    """
    path = Path(path)
    if not path.is_file():
        raise FMError(f"Inception weights file {path} does not exist")
    if sha256_prefix is not None:
        digest = sha256_of(path)
        if not digest.startswith(sha256_prefix):
            raise FMError(f"{path} has SHA-256 {digest[:16]}..., expected {sha256_prefix}...: the file is damaged or "
                          f"not {WEIGHTS_FILE}; delete it and try again")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is the same user error
        raise FMError(f"cannot read Inception weights from {path}: {str(error).splitlines()[0][:160]}") from None
    if not isinstance(state, dict) or not all(isinstance(v, Tensor) for v in state.values()):
        raise FMError(f"{path} does not hold a state dict of tensors")
    return state


def load_weights(network: FIDInceptionV3, state: dict[str, Tensor], source: str) -> None:
    """Load strictly, except for BatchNorm step counters the TensorFlow port never had."""
    missing, unexpected = network.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    unexpected = [k for k in unexpected if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise FMError(f"{source} is not the FID Inception-v3 state dict "
                      f"(missing {missing[:3]}, unexpected {unexpected[:3]}); use {WEIGHTS_FILE}")


def download_weights(target: Path) -> Path:
    """Fetch the official weights once into ``target``, checking the SHA-256 prefix."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".part")
    try:
        with urllib.request.urlopen(WEIGHTS_URL, timeout=60) as response, open(partial, "wb") as out:  # noqa: S310
            shutil.copyfileobj(response, out)
    except (urllib.error.URLError, OSError, TimeoutError) as error:
        partial.unlink(missing_ok=True)
        raise FMError(
            f"cannot download the Inception weights ({getattr(error, 'reason', error)}); download {WEIGHTS_URL} "
            f"elsewhere and pass it with --inception-weights PATH, or use --extractor classifier"
        ) from None
    digest = sha256_of(partial)
    if not digest.startswith(WEIGHTS_SHA256_PREFIX):
        partial.unlink(missing_ok=True)
        raise FMError(f"downloaded Inception weights have SHA-256 {digest[:16]}..., expected {WEIGHTS_SHA256_PREFIX}...")
    partial.replace(target)
    return target


def load_inception(context: ExtractorContext) -> InceptionExtractor:
    """The FID Inception from ``context.weights``, the cache, or (online) a one-time download."""
    if context.weights is not None:
        path = Path(context.weights)
        state = read_state_dict(path)
        identity = f"inception-{sha256_of(path)[:8]}"
    else:
        path = context.cache / "inception" / WEIGHTS_FILE
        if not path.exists():
            if not context.download:
                raise FMError(f"the Inception weights are not in {path.parent} and downloading is off; "
                              f"pass --inception-weights PATH ({WEIGHTS_FILE}) or use --extractor classifier")
            download_weights(path)
        state = read_state_dict(path, sha256_prefix=WEIGHTS_SHA256_PREFIX)
        identity = f"inception-{WEIGHTS_SHA256_PREFIX}"
    network = FIDInceptionV3()
    load_weights(network, state, str(path))
    return InceptionExtractor(network.to(context.device), identity=identity, info={"weights": str(path)})
