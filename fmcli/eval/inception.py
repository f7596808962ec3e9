"""The ``inception`` extractor: the FID Inception-v3, for figures comparable to papers.

The network comes from torch-fidelity (``pip install 'fmcli[inception]'``, imported only when
this extractor loads): TensorFlow's 2015-12-05 Inception-v3 as ported by pytorch-fid, with its
four FID patches (average pools that leave the padding out in the A, C and first E blocks, a max
pool in the second E block) and pytorch-fid's parameter names, so pytorch-fid's weights file
loads into it unchanged. Features are the 2048-d outputs of the final average pool.

fm keeps pytorch-fid's preprocessing rather than torch-fidelity's own (TensorFlow-style resize
of uint8 images): images in [-1, 1] are resized to 299x299 (bilinear, no antialiasing) and
grayscale is repeated to three channels. fm's figures and cached reference statistics are
therefore the ones the earlier hand-written copy of the network gave (a test checks this).

Weights: ``--inception-weights PATH`` (pytorch-fid's .pth state dict, or the same tensors
converted to safetensors), or a one-time download into ``<cache>/inception/`` whose SHA-256
must start with the prefix the file name carries. torch-fidelity never downloads anything here.
"""

import functools
import hashlib
import importlib
import importlib.util
import io
import shutil
import sys
import types
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
WEIGHTS_SHA256_PREFIX = "6726825d"  # torch.hub convention: the name carries the hash's first 8 hex digits
FEATURE_DIM = 2048
INPUT_SIZE = 299
PACKAGE = "torch_fidelity"
INSTALL_HINT = "pip install 'fmcli[inception]'"

# torch-fidelity's layers up to the final average pool, in the order its forward() applies them;
# its ``fc`` (1008 ImageNet logits) is left out, as FID uses the pool features.
BODY = (
    "Conv2d_1a_3x3",
    "Conv2d_2a_3x3",
    "Conv2d_2b_3x3",
    "MaxPool_1",
    "Conv2d_3b_1x1",
    "Conv2d_4a_3x3",
    "MaxPool_2",
    "Mixed_5b",
    "Mixed_5c",
    "Mixed_5d",
    "Mixed_6a",
    "Mixed_6b",
    "Mixed_6c",
    "Mixed_6d",
    "Mixed_6e",
    "Mixed_7a",
    "Mixed_7b",
    "Mixed_7c",
    "AvgPool",
)


@functools.cache
def package_modules() -> tuple[types.ModuleType, str]:
    """torch-fidelity's Inception module and the package's version, or FMError naming the extra.

    ``torch_fidelity/__init__`` imports torchvision (for its CLIP, DINOv2 and VGG extractors and
    its data sets) although the Inception module needs only torch, and a torchvision build that
    does not match the installed torch fails at import. So, unless torch-fidelity is already
    imported, its ``__init__`` is skipped: a bare stand-in package lets the two modules import,
    and ``sys.modules`` is then restored, so that a later ``import torch_fidelity`` runs as usual.
    """
    if PACKAGE in sys.modules and hasattr(sys.modules[PACKAGE], "__version__"):
        return (importlib.import_module(f"{PACKAGE}.feature_extractor_inceptionv3"), sys.modules[PACKAGE].__version__)
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or spec.submodule_search_locations is None:
        raise FMError(f"the inception extractor needs torch-fidelity: {INSTALL_HINT}, or use --extractor classifier")
    before = {name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")}
    stand_in = types.ModuleType(PACKAGE)
    stand_in.__path__ = list(spec.submodule_search_locations)
    sys.modules[PACKAGE] = stand_in
    try:
        module = importlib.import_module(f"{PACKAGE}.feature_extractor_inceptionv3")
        version = importlib.import_module(f"{PACKAGE}.version").__version__
    except (ImportError, AttributeError) as error:
        raise FMError(
            f"cannot import torch-fidelity's Inception ({' '.join(str(error).split())[:120]}); {INSTALL_HINT}"
        ) from None
    finally:
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(PACKAGE + ".")]:
            if name not in before:
                del sys.modules[name]
    return module, version


def with_bn_counters(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """``state`` plus the BatchNorm step counters that the TensorFlow port never had (unused in eval)."""
    state = dict(state)
    for key in [key for key in state if key.endswith(".running_mean")]:
        state.setdefault(key.removesuffix("running_mean") + "num_batches_tracked", torch.tensor(0))
    return state


def inception_network(state: dict[str, Tensor], source: str) -> nn.Module:
    """torch-fidelity's FID Inception-v3 holding ``state`` (strictly: every tensor, every name)."""
    module, _ = package_modules()
    # Its constructor loads weights itself, from a URL or from what torch.load reads, and pickles
    # are not for untrusted files: hand it the tensors fm has already read (safely) instead.
    buffer = io.BytesIO()
    torch.save(with_bn_counters(state), buffer)
    buffer.seek(0)
    try:
        network = module.FeatureExtractorInceptionV3(
            "inception-v3-compat", ["2048"], feature_extractor_weights_path=buffer
        )
    except RuntimeError as error:  # load_state_dict: missing, unexpected or misshapen tensors
        lines = str(error).splitlines()  # the first says only "Error(s) in loading state_dict for ..."
        detail = " ".join(" ".join(lines[1:] or lines).split())[:160]
        raise FMError(f"{source} is not the FID Inception-v3 state dict ({detail}); use {WEIGHTS_FILE}") from None
    return network.eval()


def inception_features(network: nn.Module, images: Tensor, size: int = INPUT_SIZE) -> Tensor:
    """Images in [-1, 1], [B, 1 or 3, H, W] -> 2048-d pool features [B, 2048].

    ``size``: the resolution the images are resized to (299 for FID; tests use 75, the smallest
    the strides allow, for speed).
    """
    if images.shape[1] == 1:
        images = images.repeat(1, 3, 1, 1)
    if images.shape[-2:] != (size, size):
        # Bilinear resizing is linear, so resizing [-1, 1] images equals pytorch-fid's
        # resize of [0, 1] images followed by 2x - 1.
        images = F.interpolate(images, size=(size, size), mode="bilinear", align_corners=False)
    x = images
    for name in BODY:
        x = getattr(network, name)(x)
    return x.flatten(1)


class InceptionExtractor:
    name = "inception"
    dim = FEATURE_DIM
    num_classes = 0

    def __init__(self, network: nn.Module, *, identity: str, info: dict):
        self.network = network.eval()
        self.identity = identity
        self.info = info

    @torch.no_grad()
    def embed(self, images: Tensor) -> tuple[Tensor, None]:
        return inception_features(self.network, images), None


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
            raise FMError(
                f"{path} has SHA-256 {digest[:16]}..., expected {sha256_prefix}...: the file is damaged or "
                f"not {WEIGHTS_FILE}; delete it and try again"
            )
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
        raise FMError(
            f"downloaded Inception weights have SHA-256 {digest[:16]}..., expected {WEIGHTS_SHA256_PREFIX}..."
        )
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
                raise FMError(
                    f"the Inception weights are not in {path.parent} and downloading is off; "
                    f"pass --inception-weights PATH ({WEIGHTS_FILE}) or use --extractor classifier"
                )
            package_modules()  # a missing package is reported before a 95 MB download, not after it
            download_weights(path)
        state = read_state_dict(path, sha256_prefix=WEIGHTS_SHA256_PREFIX)
        identity = f"inception-{WEIGHTS_SHA256_PREFIX}"
    network = inception_network(state, str(path))
    _, version = package_modules()
    # The identity (a cache key) names only the weights: the features are those of the earlier
    # hand-written network, so reference statistics cached before stay valid.
    return InceptionExtractor(
        network.to(context.device),
        identity=identity,
        info={"weights": str(path), "network": f"torch-fidelity {version}"},
    )
