"""Writes inception_reference.safetensors: features of fm's hand-written FID Inception-v3.

Run once, before that network was deleted, from the repository root:
    python tests/data/make_inception_reference.py
Weights and images come from the seeded helpers in tests/test_eval_metrics.py, which the
permanent test uses to rebuild the same inputs for torch-fidelity's network.
"""

import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_eval_metrics import (  # noqa: E402
    INCEPTION_REFERENCE, inception_shapes, seeded_images, seeded_inception_state, weights_fingerprint,
)

from fmcli.data.base import to_model_space  # noqa: E402
from fmcli.eval.inception import FIDInceptionV3, with_bn_counters  # noqa: E402

WEIGHTS_SEED, IMAGES_SEED, SIZES = 0, 1, (64, 299)

torch.set_num_threads(1)
state = seeded_inception_state(inception_shapes(), seed=WEIGHTS_SEED)
network = FIDInceptionV3()
network.load_state_dict(with_bn_counters(state), strict=True)
network.eval()
tensors, metadata = {}, {
    "weights_seed": str(WEIGHTS_SEED), "images_seed": str(IMAGES_SEED),
    "weights_abs_sum": repr(weights_fingerprint(state)),
    "made_by": f"fm's hand-written FIDInceptionV3, float32, torch {torch.__version__}, 1 CPU thread",
}
for size in SIZES:
    images = seeded_images(size, seed=IMAGES_SEED)
    metadata[f"images_{size}_sum"] = str(int(images.long().sum()))
    with torch.no_grad():
        tensors[f"features_{size}"] = network(to_model_space(images)).contiguous()
save_file(tensors, str(INCEPTION_REFERENCE), metadata=metadata)
print(INCEPTION_REFERENCE, INCEPTION_REFERENCE.stat().st_size, metadata)
