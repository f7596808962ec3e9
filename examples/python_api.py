"""fm from Python: sample a grid, try a solver of your own, and read the trajectory of a solve.

    python examples/python_api.py runs/demo out/        # any checkpoint or run folder, and a folder to write to

Everything here is fmcli's public API (``fmcli.__all__``); tests/test_api.py runs this file on a tiny model.
Time convention: t = 1 is noise, t = 0 is data; sampling integrates dx/dt = v from t = 1 down to t = 0.
"""

import sys
from pathlib import Path

import numpy as np

import fmcli


class Ralston(fmcli.FixedStepSolver):
    """Ralston's 2nd-order Runge-Kutta, defined here and used without registering a plugin.

    ``FixedStepSolver`` does the rest: the time grid (t from 1 to 0, so h < 0), NFE counting, class
    conditioning and ``save_at`` trajectories. ``f(x, t)`` is the model's (guided) velocity.
    """

    name = "ralston"
    order = 2
    evals_per_step = 2

    def step(self, f, x, t, h):
        k1 = f(x, t)
        k2 = f(x + 2 / 3 * h * k1, t + 2 / 3 * h)
        return x + h * (k1 / 4 + 3 * k2 / 4)


def main(checkpoint: str, out: str, steps: int = 10) -> dict:
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = fmcli.load(checkpoint, device="cpu")
    print(model, "default sampler:", model.default_sampler)

    # 1. A grid: one row per class (like `fm sample --class all`), written as fm sample writes it.
    per_class = 4
    grid = model.sample(per_class * max(model.num_classes, 1), classes="all" if model.num_classes else None,
                        solver="heun", steps=steps, seed=0)  # fmt: skip
    grid.save(out_dir / "grid.png", nrow=per_class)
    print(f"heun: {len(grid)} samples, NFE {grid.nfe}, {grid.seconds:.2f} s")

    # 2. The same noise (same seed) through a solver object of your own, and a comparison with heun.
    mine = model.sample(len(grid), classes=grid.labels, solver=Ralston(), steps=steps, seed=0)
    gap = (mine.result.samples - grid.result.samples).abs().mean().item()
    print(f"ralston: NFE {mine.nfe}; mean |ralston - heun| = {gap:.4f} (model space, [-1, 1])")

    # 3. The trajectory of one solve: the states x_t at 5 times from noise (t = 1) to data (t = 0).
    some = None if grid.labels is None else grid.labels[:8]
    path = model.sample(8, classes=some, solver="euler", steps=steps, seed=1, save_at=5)
    for t, states in zip(path.times, path.trajectory, strict=True):
        print(f"t = {t:.2f}: std of x_t = {states.std():.3f}")  # 1 at the noise end, the data's spread at t = 0
    if path.images is not None:
        frames = path.trajectory_images()  # uint8 [T, N, H, W, C]
        np.savez(out_dir / "trajectory.npz", times=path.times, frames=frames, labels=path.labels)
    return {"grid": grid, "mine": mine, "path": path, "gap": gap}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python examples/python_api.py CHECKPOINT_OR_RUN_FOLDER OUT_FOLDER")
    main(sys.argv[1], sys.argv[2])
