"""Autoguidance, guidance intervals and the stored setting, end to end on tiny runs: fm train keeps a guide,
fm sample / eval / tune / distill / info use it, and bad input is one line with nothing written."""

import json
import shutil

import pytest
import torch
from conftest import train_tiny
from helpers import assert_one_line_error, fm

import fmcli.eval.classifier as classifier_module
from fmcli.eval.guidance_search import SearchOptions, choose, screened
from fmcli.io.checkpoint import load_checkpoint, read_header
from fmcli.sampling.stored_guidance import GuidanceSetting, StoredGuidance, guidance_file, read_stored, store


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny class-conditional run of 4 steps: last.safetensors and the guide fm train keeps (step 1)."""
    out = tmp_path_factory.mktemp("runs") / "run"
    train_tiny(out, steps=4)
    return out


@pytest.fixture
def copy(run, tmp_path):
    """A private copy of the run (tests that store settings beside it)."""
    target = tmp_path / "run"
    shutil.copytree(run, target, symlinks=True)
    return target


@pytest.fixture(scope="module")
def quick_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("fm-cache")


@pytest.fixture
def fast_classifier(monkeypatch, quick_cache):
    """A quickly trained classifier, cached apart (other tests count on a cold reference cache); this module's
    tests share its cache, so it is trained once."""
    monkeypatch.setenv("FM_CACHE_DIR", str(quick_cache))
    original = classifier_module.train_classifier

    def quick(images, labels, num_classes, **kwargs):
        return original(images[:640], labels[:640], num_classes, **{**kwargs, "epochs": 1})

    monkeypatch.setattr(classifier_module, "train_classifier", quick)


def sample_json(*args) -> dict:
    result = fm("sample", *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_train_keeps_an_early_checkpoint_as_the_guide(run, tmp_path):
    """--guide-at 0.25 of 4 steps: guide.safetensors is the step-1 checkpoint, outside --keep's rotation."""
    _, meta = read_header(run / "guide.safetensors")
    assert meta.step == 1 and read_header(run / "last.safetensors")[1].step == 4
    none = train_tiny(tmp_path / "none", steps=2, guide_at=0.0)
    assert not (none.parent / "guide.safetensors").exists()


def test_guide_and_interval_reach_the_samples_and_the_passes_count_what_was_spent(run, tmp_path):
    """euler 4 evaluates at t = 1, 0.75, 0.5, 0.25: [0.3, 0.8] guides two of them: 4 + 2 passes."""
    common = ["--class", "3", "--num", "4", "--solver", "euler", "--steps", "4", "--seed", "1"]
    guide = str(run / "guide.safetensors")
    guided = sample_json(run, *common, "--guide", guide, "--guidance-interval", "0.3,0.8", "--out", tmp_path / "a.npz")
    assert (guided["nfe"], guided["passes"], guided["cfg"]) == (4, 6, 2.0)  # a guide alone guides at the default 2
    assert guided["guidance"]["interval"] == [0.3, 0.8] and guided["guidance"]["guide"] == guide
    everywhere = sample_json(run, *common, "--guide", guide, "--out", tmp_path / "b.npz")
    assert everywhere["passes"] == 8
    plain = sample_json(run, *common, "--cfg", "1", "--out", tmp_path / "c.npz")
    assert plain["passes"] == 4
    same = sample_json(run, *common, "--guide", guide, "--guide-label", "same", "--out", tmp_path / "d.npz")
    assert same["guidance"]["guide_label"] == "same" and guided["guidance"]["guide_label"] == "null"
    import numpy as np

    images = [np.load(tmp_path / f"{name}.npz")["images"] for name in "abc"]
    assert not np.array_equal(images[0], images[2]) and not np.array_equal(images[0], images[1])
    # The API gives the same samples for the same options (the guide's velocity, in the interval).
    from fmcli import load

    again = load(run, device="cpu").sample(4, 3, solver="euler", steps=4, seed=1, guide=guide,
                                             guidance_interval=(0.3, 0.8))  # fmt: skip
    assert np.array_equal(again.images, images[0])  # both [N, H, W, C] uint8
    assert again.passes == 6 and again.guidance["guide"] == guide


def test_bad_guides_and_intervals_are_one_line_and_write_nothing(run, tiny_checkpoint, toy_checkpoint, tmp_path):
    out = tmp_path / "never.png"
    cases = [
        (["--guide", run / "last.safetensors"], "is the model itself"),
        (["--guide", toy_checkpoint], "cannot guide this model"),
        (["--guide", tmp_path / "missing.safetensors"], "no such checkpoint"),
        (["--guidance-interval", "0.8,0.2"], "is empty"),
        (["--guidance-interval", "0.5,1.2"], "outside [0, 1]"),
        (["--guidance-interval", "half"], "LO,HI"),
        (["--guide", run / "guide.safetensors", "--guide-label", "maybe"], "--guide-label must be null"),
    ]
    for args, message in cases:
        assert_one_line_error(fm("sample", run, "--class", "1", "--num", "2", *args, "--out", out), message, code=1)
    assert not out.exists()


def test_a_stored_setting_is_used_by_default_flags_win_and_fm_info_shows_it(copy, tmp_path):
    guide = copy / "guide.safetensors"
    chosen = StoredGuidance(GuidanceSetting(3.0, (0.2, 0.9), str(guide)), True, {"solver": "heun", "steps": 20},
                            {"chosen": "cfg 3 for t in [0.2, 0.9], guide guide.safetensors"})  # fmt: skip
    path = store(copy, chosen)
    assert path == guidance_file(copy / "last.safetensors") and read_stored(copy).setting == chosen.setting
    args = ["--class", "2", "--num", "2", "--solver", "euler", "--steps", "4", "--out", tmp_path / "s.png"]
    used = sample_json(copy, *args)
    expected = {"cfg": 3.0, "interval": [0.2, 0.9], "guide": str(guide.resolve()), "guide_label": "null"}
    assert used["guidance"] == expected | {"source": "tuned"}
    flagged = sample_json(copy, *args, "--cfg", "1.5")
    assert flagged["cfg"] == 1.5 and flagged["guidance"]["interval"] == [0.2, 0.9]  # only the flag given changes
    assert flagged["guidance"]["source"] == "options"
    restated = sample_json(copy, *args, "--cfg", "3", "--guidance-interval", "0.2,0.9")  # as fm serve's boxes do
    assert restated["guidance"]["source"] == "tuned"
    classifier_free = sample_json(copy, *args, "--guide", "none")
    assert classifier_free["guidance"]["guide"] is None and classifier_free["cfg"] == 3.0
    unlabelled = sample_json(copy, "--num", "2", "--solver", "euler", "--steps", "4", "--out", tmp_path / "u.png")
    assert unlabelled["cfg"] == 1.0  # stored for --class sampling: unlabelled draws keep their default
    info = fm("info", copy, "--json")
    assert json.loads(info.stdout)["tuned_guidance"]["setting"]["cfg"] == 3.0
    assert "tuned guidance" in fm("info", copy).stdout


def test_a_damaged_or_stale_stored_setting_is_one_line(copy, tmp_path):
    guide = copy / "guide.safetensors"
    store(copy, StoredGuidance(GuidanceSetting(2.5, None, str(guide)), True, {"solver": "heun", "steps": 20}))
    out = tmp_path / "s.png"
    args = ["sample", copy, "--class", "1", "--num", "2", "--out", out]
    shutil.copy(copy / "last.safetensors", guide)  # the guide replaced by other content (here: the model itself)
    assert_one_line_error(fm(*args), "has changed", code=1)
    guidance_file(copy).write_text('{"format": "fm-tuned-guidance", "version": 1, "checkpoint": {}}')
    assert_one_line_error(fm(*args), "is damaged", code=1)
    guidance_file(copy).write_text("{not json")
    assert_one_line_error(fm(*args), "is damaged", code=1)
    assert "unusable" in fm("info", copy).stdout
    assert not out.exists()


def test_choose_keeps_recall_and_fid_then_reaches_accuracy_at_the_lowest_fid():
    base = {"fid": 50.0, "recall": 0.80, "accuracy": 0.88, "passes": 40, "cfg": 1.0}
    rows = [
        {"fid": 55.0, "recall": 0.67, "accuracy": 0.99, "passes": 80, "cfg": 2.0},  # over-guided: recall spent
        {"fid": 45.0, "recall": 0.79, "accuracy": 0.991, "passes": 62, "cfg": 2.5},
        {"fid": 44.0, "recall": 0.78, "accuracy": 0.992, "passes": 70, "cfg": 3.0},  # lowest FID reaching 0.99
        {"fid": 40.0, "recall": 0.80, "accuracy": 0.95, "passes": 60, "cfg": 1.5},  # best FID, short of 0.99
    ]
    assert choose(base, rows, 0.95, 0.99)[0]["cfg"] == 3.0
    assert choose(base, rows, 0.95, 0.999)[0]["cfg"] == 3.0  # none reaches 0.999: the most accurate admissible
    assert choose(base, rows[:1], 0.95, 0.99)[0] is base  # nothing admissible: no guidance
    unlabelled = [r | {"accuracy": None} for r in rows]
    assert choose(base | {"accuracy": None}, unlabelled, 0.95, 0.99)[0]["cfg"] == 1.5


def test_the_screen_keeps_the_finalists_the_rule_would_favour_with_slack():
    # The demo search's 500-sample rows (bench/measured/guidance_search_demo.json), as a screen would see them.
    base = {"fid": 57.9, "recall": 0.832, "accuracy": 0.88, "passes": 40, "name": "none"}
    rows = [
        {"fid": 24.2, "recall": 0.752, "accuracy": 0.994, "passes": 80, "name": "cfg 2"},  # recall 0.904x: slack
        {"fid": 24.7, "recall": 0.808, "accuracy": 0.990, "passes": 80, "name": "cfg 2 + guide"},
        {"fid": 15.6, "recall": 0.826, "accuracy": 0.982, "passes": 66, "name": "cfg 2 in [0.2, 0.8]"},  # 0.99 - 0.01
        {"fid": 12.2, "recall": 0.870, "accuracy": 0.972, "passes": 66, "name": "cfg 2 in [0.2, 0.8] + guide"},
        {"fid": 74.8, "recall": 0.594, "accuracy": 1.000, "passes": 80, "name": "cfg 3"},  # recall and FID spent
        {"fid": 28.5, "recall": 0.800, "accuracy": 0.994, "passes": 66, "name": "cfg 3 in [0.2, 0.8] + guide"},
    ]
    kept = [r["name"] for r in screened(base, rows, SearchOptions(finalists=3))]
    assert kept == ["cfg 2 in [0.2, 0.8]", "cfg 2", "cfg 2 + guide"]  # the 500-sample choice is among them
    assert [r["name"] for r in screened(base, rows, SearchOptions(finalists=5))][3:] == [
        "cfg 3 in [0.2, 0.8] + guide",
        "cfg 2 in [0.2, 0.8] + guide",  # short of 0.98: after every one reaching it
    ]


def test_fm_tune_guidance_measures_stores_and_sampling_uses_it(copy, fast_classifier, tmp_path):
    result = fm("tune", copy, "--guidance", "--solver", "euler", "--steps", "2", "--num", "150", "--cfgs", "2",
                "--intervals", "full;0.3,0.8", "--finalists", "2",
                "--min-recall", "0.5", "--device", "cpu", "--json")  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = report["rows"]
    # The screen: every setting on 129 samples (FID's minimum in the classifier's 128 dimensions, above 150 / 4),
    # the unguided and two finalists on to 150; the choice is one of those.
    assert report["screen"] == {"num_samples": 129, "finalists": 2} and report["baseline"]["num_samples"] == 150
    assert sorted(r["num_samples"] for r in rows) == [129, 129, 150, 150]
    assert report["chosen"] in {setting_of(r).describe() for r in rows if r["num_samples"] == 150} | {"no guidance"}
    # none and the run's guide.safetensors, each everywhere and in [0.3, 0.8], beside the unguided baseline
    assert len(rows) == 4 and report["baseline"]["cfg"] == 1.0 and report["baseline"]["passes"] == 2
    assert {(r["guide"] is not None, r["interval"] is not None) for r in rows} == {
        (a, b) for a in (0, 1) for b in (0, 1)
    }
    for row in rows:
        assert row["passes"] == (4 if row["interval"] is None else 2 + 1)  # euler 2 guides at t = 0.5, not at 1
        assert 0 <= row["accuracy"] <= 1 and row["fid"] > 0 and 0 <= row["recall"] <= 1
    stored = read_stored(copy)
    assert stored is not None and stored.search["chosen"] == report["chosen"] == stored.setting.describe()
    used = sample_json(copy, "--class", "1", "--num", "2", "--out", tmp_path / "s.png")
    assert used["guidance"]["source"] == "tuned" and used["cfg"] == stored.setting.scale


def setting_of(row: dict) -> GuidanceSetting:
    return GuidanceSetting(row["cfg"], row["interval"] and tuple(row["interval"]), row["guide"], row["guide_label"])


def test_eval_sweeps_guidance_settings_as_rows(run, fast_classifier):
    guides = f"none,{run / 'guide.safetensors'}"
    result = fm("eval", run, "--num", "150", "--metrics", "fid,pr", "--sweep", "euler", "--steps", "2", "--grids",
                "uniform", "--cfgs", "1,2", "--intervals", "full;0.3,0.8", "--guides", guides, "--device", "cpu",
                "--json", "--out", run.parent / "sweep")  # fmt: skip
    assert result.exit_code == 0, result.output
    runs = json.loads(result.stdout)["runs"]
    assert len(runs) == 1 + 2 * 2  # cfg 1 once, cfg 2 x interval x guide
    assert sorted(r["passes"] for r in runs) == [2, 3, 3, 4, 4]  # euler 2 guides at t = 0.5 in [0.3, 0.8]
    assert all(r["accuracy"] is not None for r in runs)


def test_distill_folds_the_stored_setting_into_the_student(copy, tmp_path):
    from fmcli.flow.path import interpolate
    from fmcli.sampling.guidance import guided_velocity
    from fmcli.training.distill import distill_overrides
    from fmcli.training.objectives import TeacherVelocity

    guide = copy / "guide.safetensors"
    store(copy, StoredGuidance(GuidanceSetting(2.5, (0.2, 0.9), str(guide)), True, {"solver": "heun", "steps": 20}))
    overrides = distill_overrides(copy / "last.safetensors", {"out": str(tmp_path / "s"), "steps": 1, "pool": 0})
    assert overrides["train_cfg"] == 2.5
    assert overrides["teacher_guidance"] == {
        "interval": [0.2, 0.9],
        "guide": str(guide.resolve()),
        "guide_label": "null",
    }
    flags = distill_overrides(copy / "last.safetensors", {}, (0.0, 1.0), "none")
    assert flags["teacher_guidance"] == {"interval": None, "guide": None, "guide_label": "null"}
    assert flags["train_cfg"] == 2.5
    seen = []
    real = TeacherVelocity.__call__

    def spy(self, net, batch, xt):
        seen.append((batch, real(self, net, batch, xt)))
        return seen[-1][1]

    from unittest import mock

    from fmcli.training.loop import train

    with mock.patch.object(TeacherVelocity, "__call__", spy):
        train(overrides | {"batch_size": 8, "diagnose_every": 0})  # the target is the point, not the jump report
    batch, velocity = seen[0]
    teacher, guide_model = load_checkpoint(copy / "last.safetensors").model, load_checkpoint(guide).model
    expected = guided_velocity(teacher, 2.5, 10, interval=(0.2, 0.9), guide=guide_model, guide_label="null")
    xt = interpolate(batch.x0, batch.x1, batch.t)
    rows = [expected(xt[i : i + 1], batch.t[i : i + 1], batch.labels[i : i + 1]) for i in range(len(xt))]
    torch.testing.assert_close(velocity, torch.cat(rows), atol=1e-5, rtol=1e-5)
