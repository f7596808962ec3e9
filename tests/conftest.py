"""Test isolation: no installed third-party plugin loads by accident, caches go to a temp folder."""

import os
from pathlib import Path

import pytest

os.environ["FM_LOAD_PLUGINS"] = ""  # before fmcli.plugins loads: built-ins only
os.environ.setdefault("FM_CACHE_DIR", str(Path(__file__).parent / ".cache"))
# Tiny test models: a second OpenMP thread only adds overhead. Set before torch loads (torch follows it) and read by
# fm's thread rule as the user's choice, so no test's timing depends on what else the machine is doing; the
# subprocesses tests start inherit it. tests/test_threads.py tests the rule itself.
os.environ["OMP_NUM_THREADS"] = "1"

import torch  # noqa: E402

torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]


def find_mnist_dir() -> Path | None:
    candidates = [os.environ.get("FM_DATA_DIR"), REPO.parent / "shared" / "data" / "mnist"]
    for candidate in filter(None, candidates):
        path = Path(candidate)
        if (path / "t10k-images-idx3-ubyte.gz").exists() or (path / "t10k-images-idx3-ubyte").exists():
            return path
    return None


@pytest.fixture
def mnist_dir() -> Path:
    path = find_mnist_dir()
    if path is None:
        pytest.skip("real MNIST IDX files not found (set FM_DATA_DIR)")
    return path


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("FM_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "fm-cache"))


TINY_UNET = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": []}


def train_tiny(out: Path, **overrides) -> Path:
    """A few steps of a tiny model: enough for shapes, files and round trips, not for quality."""
    from fmcli.training.loop import train

    options = {
        "data": "mnist-mini",
        "steps": 3,
        "out": str(out),
        "model": TINY_UNET,
        "batch_size": 16,
        "warmup_steps": 1,
        "sample_every": 0,
        "checkpoint_every": 1000,
        "log_every": 1000,
    }
    options.update(overrides)
    return train(options).checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A class-conditional MNIST U-Net (with label dropout), trained for 3 steps."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "tiny")


@pytest.fixture(scope="session")
def toy_checkpoint(tmp_path_factory) -> Path:
    """A 2-D MLP on moons, trained for 3 steps."""
    return train_tiny(tmp_path_factory.mktemp("runs") / "toy", data="moons", model={"hidden": 32, "depth": 2})


@pytest.fixture
def recorder():
    """Register the ``recording-mlp`` / ``recording-unet`` models (tests/recording.py) for one test.

    Yields the ``Recorder`` whose ``calls`` list receives every forward call of those networks.
    """
    from recording import Recorder, RecordingPlugin

    from fmcli import registry
    from fmcli.plugins import load_plugins, pm

    load_plugins()  # built-ins first, as a user would have them
    rec = Recorder()
    plugin = RecordingPlugin(rec)
    pm.register(plugin, name="recording-models")
    registry.reset()
    try:
        yield rec
    finally:
        pm.unregister(plugin)
        registry.reset()


@pytest.fixture
def half_precision_cpu(monkeypatch):
    """Pretend this CPU does bf16 and fp16 natively, so the autocast plumbing can be tested on any CPU (fm refuses
    --precision bf16/fp16 on a CPU that would only emulate them)."""
    monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: True)
    monkeypatch.setattr(torch.cpu, "_is_amx_fp16_supported", lambda: True)


def captioned_folder(root: Path) -> Path:
    """16 RGB 8x8 squares, half red and half blue, captioned in metadata.jsonl (the Hugging Face convention)."""
    import json

    from PIL import Image

    root.mkdir()
    lines = []
    for i in range(16):
        colour = "red" if i % 2 == 0 else "blue"
        Image.new("RGB", (8, 8), (220, 30, 30) if colour == "red" else (30, 30, 220)).save(root / f"{i:02d}.png")
        lines.append(json.dumps({"file_name": f"{i:02d}.png", "text": [f"a {colour} square", f"{colour} square"]}))
    (root / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    return root


@pytest.fixture(scope="session")
def text_checkpoint(tmp_path_factory) -> Path:
    """A text model (the built-in encoder) of 8x8 captioned squares, trained for 3 steps."""
    root = tmp_path_factory.mktemp("text")
    data = captioned_folder(root / "squares")
    model = {**TINY_UNET, "channel_mults": [1, 2], "attention_resolutions": []}
    return train_tiny(root / "run", data=str(data), image_size=8, model=model, hflip=False, cache=False,
                      cross_attention=["4"])  # fmt: skip
