"""What step k trains on: rank slices (disjoint, complete, each rank reading only its rows) and
horizontal flips (deterministic in (seed, step), so resume stays exact)."""

import dataclasses

import numpy as np
import pytest
import torch
from PIL import Image

from fmcli.data.base import to_model_space
from fmcli.io.checkpoint import read_checkpoint
from fmcli.training.batches import BatchSampler, Conditions
from fmcli.training.config import TrainConfig, resolve
from fmcli.training.loop import train
from fmcli.training.objectives import make_objective


class RowLog(torch.Tensor):
    """A data tensor that remembers which rows were read (as a memory map would page them in)."""

    read: list = []

    def __getitem__(self, index):
        if isinstance(index, torch.Tensor):
            RowLog.read.append(index.tolist())
        return torch.Tensor.__getitem__(self.as_subclass(torch.Tensor), index)


def sampler(config: TrainConfig, rank: int = 0, world: int = 1, inputs=None) -> BatchSampler:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (40, 1, 6, 6), dtype=torch.uint8, generator=generator) if inputs is None else inputs
    labels = torch.arange(40) % 4
    objective = make_objective(config, num_classes=4)
    conditions = Conditions(labels, 4, config.label_dropout)
    return BatchSampler(images, conditions, "image", config, objective, rank, world, torch.device("cpu"))


@pytest.mark.parametrize("coupling", ["independent", "ot"])
@pytest.mark.parametrize("objective", ["fm", "meanflow"])
def test_rank_slices_are_disjoint_and_complete(coupling, objective):
    config = TrainConfig(batch_size=12, coupling=coupling, objective=objective, hflip=True, label_dropout=0.3)
    whole = sampler(config).draw(5)
    parts = [sampler(config, rank, 3).draw(5) for rank in range(3)]
    for field in ("x0", "x1", "t", "labels", "r"):
        if getattr(whole, field) is None:
            continue
        joined = torch.cat([getattr(part, field) for part in parts])
        assert torch.equal(joined, getattr(whole, field)), field


def test_each_rank_reads_only_its_own_rows():
    config = TrainConfig(batch_size=12)
    images = torch.randint(0, 256, (40, 1, 6, 6), dtype=torch.uint8).as_subclass(RowLog)
    RowLog.read = []
    whole = sampler(config, inputs=images).draw(3)
    (all_rows,) = RowLog.read
    for rank in range(3):
        RowLog.read = []
        sampler(config, rank, 3, inputs=images).draw(3)
        assert RowLog.read == [all_rows[4 * rank : 4 * rank + 4]]  # 4 of the 12 rows, and no others
    assert len(whole.x0) == 12


def test_flips_mirror_about_half_the_images_from_seed_and_step():
    config = TrainConfig(batch_size=40, hflip=True)
    draws = sampler(config)
    index = draws.order.indices(7)
    batch = draws.draw(7)
    original = to_model_space(draws.inputs[index])
    pairs = list(zip(batch.x0, original, strict=True))
    flipped = torch.tensor([torch.equal(b, o.flip(-1)) and not torch.equal(b, o) for b, o in pairs])
    unflipped = torch.tensor([torch.equal(b, o) for b, o in pairs])
    assert bool((flipped | unflipped).all())  # every image is itself or its mirror
    assert 10 <= int(flipped.sum()) <= 30  # Binomial(40, 1/2): within 3 standard deviations
    assert torch.equal(sampler(config).draw(7).x0, batch.x0)  # the same step flips the same images
    plain = sampler(dataclasses.replace(config, hflip=False)).draw(7)
    assert torch.equal(plain.x0, original) and torch.equal(plain.x1, batch.x1)  # flips draw after everything else


def test_folders_flip_by_default_digits_and_toys_do_not(tmp_path):
    assert resolve({"data": str(tmp_path)}).hflip is True
    assert resolve({"data": "mnist-mini"}).hflip is False and resolve({"data": "moons"}).hflip is False
    assert resolve({"data": str(tmp_path), "hflip": False}).hflip is False


def test_a_flipped_run_resumes_bit_for_bit(tmp_path):
    folder = tmp_path / "pictures"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (folder / name).mkdir(parents=True)
        for k in range(6):
            Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(folder / name / f"{k}.png")
    tiny = {"base_channels": 8, "channel_mults": [1, 2], "num_res_blocks": 1, "attention_resolutions": []}
    common = dict(data=str(folder), image_size=8, model=tiny, batch_size=4, warmup_steps=1, lr_schedule="constant",
                  sample_every=0, log_every=1000)  # fmt: skip
    whole = train(common | {"steps": 6, "out": str(tmp_path / "whole")})
    train(common | {"steps": 3, "out": str(tmp_path / "half")})
    resumed = train({"steps": 6}, resume=str(tmp_path / "half"))
    assert read_checkpoint(whole.checkpoint)[1].train_config["hflip"] is True
    first, second = read_checkpoint(whole.checkpoint)[0], read_checkpoint(resumed.checkpoint)[0]
    assert all(torch.equal(first[name], second[name]) for name in first)


def test_captions_are_drawn_per_item_from_the_step_seed_and_uncaptioned_items_train_the_empty_prompt():
    captions = [("a b",), ("c", "d e"), ()]
    vocab = {"a": 1, "b": 2, "c": 3, "d": 4, "e": 5}
    tokenize = lambda texts: torch.tensor([[vocab[w] for w in t.split()] + [0] * (2 - len(t.split())) for t in texts])  # noqa: E731
    conditions = Conditions.of_captions(captions, tokenize, dropout=0.0)
    index = torch.tensor([0, 1, 2, 1])
    seen = set()
    for step in range(20):
        rows = conditions.rows(index, torch.Generator().manual_seed(step), torch.device("cpu"))
        assert rows[0].tolist() == [1, 2] and rows[2].tolist() == [0, 0]  # one caption; none: the empty prompt
        assert rows[1].tolist() in ([3, 0], [4, 5]) and rows[3].tolist() in ([3, 0], [4, 5])
        seen.add(tuple(rows[1].tolist()))
        again = conditions.rows(index, torch.Generator().manual_seed(step), torch.device("cpu"))
        assert torch.equal(rows, again)  # from the step's generator alone: resume stays exact
    assert seen == {(3, 0), (4, 5)}  # every caption of an item is trained
