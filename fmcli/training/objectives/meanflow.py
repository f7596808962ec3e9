"""MeanFlow's objective: the average velocity u(x_t, r, t) over [r, t], trained through its identity.

With Delta = u(x_t, r, t) - stopgrad(v - (t - r) du/dt) and the per-sample L = ||Delta||^2 (summed over the
data dimensions), the loss is the batch mean of stopgrad(w) L with the adaptive weight
w = 1 / (L + eps)^p (p = 1, the paper's, gives the gradient of log(L + eps); p = 0 the plain L2).

What v is, the "target velocity", is a small object of its own:

    ConditionalVelocity   x1 - x0. The target is linear in v, so its mean given x_t is the target built from
                          the marginal v* (for which the identity holds), as in flow matching.
    SelfGuidedVelocity    S (x1 - x0) + (1 - S) u(x_t, t, t | null): classifier-free guidance of scale S folded
                          into the target with the model's own unconditional velocity (the paper's); the null
                          condition is the null class, or a text model's empty prompt.
    TeacherVelocity       a trained flow's guided v_T(x_t, t) = v_u + S (v_c - v_u): distillation.

Samples with r = t have the target v itself ((t - r) du/dt = 0): they get a plain forward pass, and only
the others go through the jvp. The network therefore sees the batch in two parts, which changes nothing
for networks whose samples do not interact (no batch norm).
"""

import torch
from torch import Tensor

from fmcli.errors import FMError
from fmcli.flow.meanflow import GRID_PAIRS, meanflow_target, sample_interval
from fmcli.flow.path import broadcast_time, interpolate, target_velocity
from fmcli.models.condition import null_rows, null_value
from fmcli.sampling.guidance import balanced_classes
from fmcli.training.objectives.base import Batch, LossOutput, Objective, TimeDistribution, Times
from fmcli.training.objectives.pool import TeacherPool, draw_prompts


class ConditionalVelocity:
    """v = x1 - x0."""

    def __call__(self, net, batch: Batch, xt: Tensor) -> Tensor:
        return target_velocity(batch.x0, batch.x1)


class SelfGuidedVelocity:
    """v = S (x1 - x0) + (1 - S) u(x_t, t, t | null); samples trained on the null condition keep x1 - x0. ``null``:
    the null condition's fill value (``fmcli.models.condition.null_value``: the null class, or PAD for a text
    model, whose null condition is the empty prompt)."""

    def __init__(self, scale: float, null: int):
        self.scale, self.null = scale, null

    @torch.no_grad()
    def __call__(self, net, batch: Batch, xt: Tensor) -> Tensor:
        unconditional = net(xt, batch.t, y=torch.full_like(batch.labels, self.null), r=batch.t)
        plain = target_velocity(batch.x0, batch.x1)
        guided = self.scale * plain + (1 - self.scale) * unconditional
        return torch.where(broadcast_time(null_rows(batch.labels, self.null), xt), plain, guided)


class TeacherVelocity:
    """v = the teacher's velocity at x_t, guided as it samples when conditioned: v_ref + S (v_c - v_ref), v_ref its
    velocity for the null condition (``null``: the null class, or PAD: the empty prompt) or a guide's, within an
    interval of times (``fmcli.sampling.guidance``)."""

    def __init__(self, teacher, scale: float, null: int, interval=None, guide=None, guide_label="null"):
        from fmcli.sampling.guidance import guided_velocity

        self.teacher = teacher  # the guided velocity is also the flow a pool and the jump diagnostics solve
        self.guided = guided_velocity(teacher, scale, null, interval, guide, guide_label)

    @torch.no_grad()
    def __call__(self, net, batch: Batch, xt: Tensor) -> Tensor:
        if batch.labels is None:
            return self.teacher(xt, batch.t)
        return self.guided(xt, batch.t, batch.labels)


class MeanFlow(Objective):
    name = "meanflow"
    interval = True
    uses_ddp = False  # torch.func.jvp cannot run through DDP's wrapper: gradients are averaged after backward
    compiles = False  # nor through a compiled module
    thread_invariant = False  # its forward-mode passes are not proven so: the run keeps one thread count

    def __init__(
        self,
        times: TimeDistribution,
        *,
        interval_fraction: float = 0.25,
        weighting_power: float = 1.0,
        target=None,
        eps: float = 1e-3,
        interval_sampling: str = "pair",
        grid_fraction: float = 0.0,
        interval_scale: float = 1000.0,
        pool: TeacherPool | None = None,
        pool_fraction: float = 0.0,
    ):
        self.times, self.interval_fraction = times, interval_fraction
        self.weighting_power, self.eps = weighting_power, eps
        self.target = target or ConditionalVelocity()
        self.interval_sampling, self.grid_fraction = interval_sampling, grid_fraction
        self.model_extras = {"interval": True, "interval_scale": float(interval_scale)}
        self.pool, self.pool_fraction = pool, pool_fraction if pool is not None else 0.0
        self._diagnostics = None  # the jump reference, built on first use
        self.item_shape: tuple[int, ...] = ()  # one item's shape: the jump diagnostics draw noise of it
        self.prompts: list[str] | None = None  # a text model's: the prompts the jump diagnostics are drawn for

    def draw_times(self, batch_size, generator, device) -> Times:
        """(r, t) as ``sample_interval`` draws them; then, with a pool, a share ``pool_fraction`` of the rows is
        taken from the pool instead, each on a jump of the sampler's grids (drawn after everything else)."""
        dist = self.times
        r, t = sample_interval(batch_size, equal_fraction=1 - self.interval_fraction, method=dist.method,
                               mean=dist.mean, std=dist.std, generator=generator, device=device,
                               interval_sampling=self.interval_sampling, grid_fraction=self.grid_fraction)  # fmt: skip
        if self.pool is None:
            return Times(t, r)
        chosen = torch.rand(batch_size, generator=generator, device=device) < self.pool_fraction
        rows = torch.randint(len(self.pool), (batch_size,), generator=generator, device=device)
        pairs = torch.tensor(GRID_PAIRS, device=device, dtype=t.dtype)
        pair = pairs[torch.randint(len(GRID_PAIRS), (batch_size,), generator=generator, device=device)]
        t, r = torch.where(chosen, pair[:, 0], t), torch.where(chosen, pair[:, 1], r)
        return Times(t, r, torch.where(chosen, rows, torch.full_like(rows, -1)))

    def __call__(self, net, batch: Batch) -> LossOutput:
        from_pool = batch.pool >= 0 if batch.pool is not None else torch.zeros_like(batch.t, dtype=torch.bool)
        errors = self._identity_errors(net, batch.select(~from_pool)) if not from_pool.all() else []
        if from_pool.any():
            errors.append(self._pool_errors(net, batch.select(from_pool)))
        error = torch.cat([e.flatten(1) for e in errors])
        per_sample = error.pow(2).sum(1)
        weight = (per_sample.detach() + self.eps).pow(-self.weighting_power)
        return LossOutput(loss=(weight * per_sample).mean(), logged=error.detach().pow(2).mean())

    def _identity_errors(self, net, batch: Batch) -> list[Tensor]:
        """u - v where r = t (a plain forward), u - stopgrad(v - (t - r) du/dt) where r < t (one jvp)."""
        xt = interpolate(batch.x0, batch.x1, batch.t)
        v = self.target(net, batch, xt).detach().to(xt.dtype)
        r, t, size = batch.r, batch.t, len(batch.t)
        equal = r == t
        plain, jvp = equal.nonzero().squeeze(1), (~equal).nonzero().squeeze(1)
        errors = []
        if plain.numel():
            u = net(xt[plain], t[plain], r=r[plain], **_take(batch.conditioning, plain, size))
            errors.append(u.float() - v[plain].float())
        if jvp.numel():
            cond = _take(batch.conditioning, jvp, size)
            u, target = meanflow_target(lambda x, r, t: net(x, t, r=r, **cond), xt[jvp], r[jvp], t[jvp], v[jvp])
            errors.append(u.float() - target.float())
        return errors

    def _pool_errors(self, net, batch: Batch) -> Tensor:
        """u(x_t, r, t) - (x_t - x_r) / (t - r) on the teacher's solved states (rows from the pool)."""
        x_t, exact, labels = self.pool.targets(batch.pool, batch.t, batch.r)
        u = net(x_t.to(batch.x0.dtype), batch.t, r=batch.r, **({} if labels is None else {"y": labels}))
        return u.float() - exact.float()

    def diagnostics(self, net) -> dict[str, float]:
        """The jumps from t = 1 against the flow they stand for (``fmcli.sampling.jumps``): the teacher's guided
        flow when distilling, else the model's own instantaneous velocity (re-solved each time, as it changes)."""
        from fmcli.sampling.guidance import guided_velocity
        from fmcli.sampling.jumps import jump_errors, jump_reference

        device, num_classes = next(net.parameters()).device, int(net.config.get("num_classes", 0))
        noise = torch.randn((DIAGNOSTIC_DRAWS, *self.item_shape), generator=torch.Generator().manual_seed(12345))
        if self.prompts:
            labels = net.tokenize(self.prompts).to(device)
        else:
            labels = balanced_classes(DIAGNOSTIC_DRAWS, num_classes).to(device) if num_classes else None
        average = guided_velocity(net, 1.0, num_classes)
        if isinstance(self.target, TeacherVelocity):
            if self._diagnostics is None:
                self._diagnostics = jump_reference(self.target.guided, noise.to(device), labels, rtol=DIAGNOSTIC_RTOL)
            reference = self._diagnostics
        else:
            reference = jump_reference(average, noise.to(device), labels, rtol=DIAGNOSTIC_RTOL)
        return {f"jumps/{name}": value for name, value in jump_errors(average, reference).items()}


DIAGNOSTIC_DRAWS = 64
# dopri5's tolerance for the reference: 1e-4 lands within 0.004 of a 1e-5 solve at r = 0 (0.0003 at 0.9), far below
# the jump errors it judges, in 110 teacher evaluations instead of 266 (the demo model, guided, 64 draws).
DIAGNOSTIC_RTOL = 1e-4


def _take(conditioning: dict, index: Tensor, batch_size: int) -> dict:
    """The conditioning of the samples ``index``: per-sample tensors (first dimension = batch) are indexed."""
    return {
        key: value[index] if isinstance(value, Tensor) and value.dim() > 0 and value.shape[0] == batch_size else value
        for key, value in conditioning.items()
    }


def teacher_guidance(config, teacher):
    """The teacher's guidance interval ((lo, hi) or None) and guide network (None: its unconditional velocity)."""
    from fmcli.sampling.guidance import load_guide

    chosen = config.teacher_guidance or {}
    interval = tuple(chosen["interval"]) if chosen.get("interval") else None
    guide = load_guide(chosen["guide"], teacher).model.requires_grad_(False) if chosen.get("guide") else None
    return interval, guide


def make_meanflow(
    config, times: TimeDistribution, num_classes: int, teacher=None, item_shape=None, captions=None
) -> MeanFlow:
    """MeanFlow against x1 - x0, a teacher's guided velocity, or x1 - x0 with guidance folded in (--train-cfg);
    with ``--pool N`` (distillation only) also against the teacher's solved jumps. ``captions``: a text model's
    training captions (one tuple per item), which its pool's and diagnostics' prompts are drawn from; the null
    condition guidance takes is then the empty prompt."""
    null = null_value("text" if captions is not None else "class", num_classes)
    if teacher is not None:
        interval, guide = teacher_guidance(config, teacher)
        label = (config.teacher_guidance or {}).get("guide_label", "null")
        target = TeacherVelocity(teacher.model, config.train_cfg, null, interval, guide, label)
    elif config.train_cfg != 1:
        target = SelfGuidedVelocity(config.train_cfg, null)
    else:
        target = ConditionalVelocity()
    objective = MeanFlow(
        times,
        interval_fraction=config.interval_fraction,
        weighting_power=config.weighting_power,
        target=target,
        interval_sampling=config.interval_sampling,
        grid_fraction=config.grid_fraction,
        interval_scale=config.interval_scale,
        pool=teacher_pool(config, target, num_classes, teacher, captions),
        pool_fraction=config.pool_fraction,
    )
    objective.item_shape = tuple(item_shape or (teacher.meta.shape if teacher is not None else ()))
    if captions is not None:
        objective.prompts = draw_prompts(captions, DIAGNOSTIC_DRAWS, 12345)
    return objective


def teacher_pool(config, target, num_classes: int, teacher, captions) -> TeacherPool | None:
    """The pool of ``--pool N`` teacher solves: equal per class, or each for a training caption (a text teacher,
    at its guidance: the empty prompt is the null condition); None without --pool."""
    if not config.pool:
        return None
    if teacher is None:
        raise FMError("--pool solves a teacher's flow: it is for fm distill (or a run with a teacher)")
    seed = config.seed * 7 + 5
    rows = None
    if captions is not None:
        rows = teacher.model.tokenize(draw_prompts(captions, config.pool, seed))
    return TeacherPool.build(target.guided, teacher.meta.shape, config.pool, num_classes, solver=config.pool_solver,
                             steps=config.pool_steps, seed=seed, device=teacher.device, rows=rows)  # fmt: skip
