"""Prompt following of a text model trained on coloured shapes, and the class-conditional baseline beside it.

    python bench/text_following.py runs/text15 --per-pair 20 --out bench/measured/text_following.json
    python bench/text_following.py runs/shapes-class15 --per-pair 20 --out ...   (a class model: shape as class)

The prompts are captions of the built-in ``shapes`` test split, ``--per-pair`` per (colour, shape) pair, sampled
with the checkpoint's default sampler and guidance; separate classifiers trained on the real training split read
back each image's shape and colour (``fmcli.eval.prompts``). Pairs held out of training are reported apart. A
class model (trained with ``--captions none``: the shape is its class) is asked for each shape instead, and only
its shapes are scored (its colours are not asked for).
"""

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path)
    parser.add_argument("--per-pair", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cfg", type=float, default=None, help="guidance scale (default: the checkpoint's)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    import torch

    from fmcli.data.base import LoadOptions, to_model_space, to_uint8
    from fmcli.data.shapes import load_shapes
    from fmcli.eval.prompts import attribute_classifier, prompt_following
    from fmcli.io.checkpoint import load_checkpoint
    from fmcli.io.files import default_cache_dir
    from fmcli.sampling.generate import generate
    from fmcli.sampling.guidance import balanced_classes
    from fmcli.sampling.options import SamplingOptions

    loaded = load_checkpoint(args.run, device="cpu")
    train, test = (load_shapes(LoadOptions(split=split)) for split in ("train", "test"))
    sampling = SamplingOptions(seed=args.seed, cfg=args.cfg).for_model(loaded.meta)
    cache = default_cache_dir()
    if loaded.meta.condition == "text":
        report = prompt_following(loaded, train, test, sampling, per_pair=args.per_pair, cache=cache)
    else:
        shapes = train.attribute_names["shape"]
        num = args.per_pair * 6 * len(shapes)  # as many images as the text model draws
        classes = balanced_classes(num, len(shapes))
        result = generate(loaded, sampling, num=num, condition=classes)
        network, ceiling = attribute_classifier(train, test, "shape", cache, loaded.device)
        with torch.no_grad():
            read = network(to_model_space(to_uint8(result.samples)))[1].argmax(1)  # seen as 8-bit images
        report = {"shape": float((read == classes).float().mean()), "num": num, "cfg": result.cfg, "nfe": result.nfe,
                  "passes": result.passes, "classifier_test_accuracy": {"shape": ceiling}}  # fmt: skip
    report = {"run": str(args.run), "condition": loaded.meta.condition, "step": loaded.meta.step, **report}
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
