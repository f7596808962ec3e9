"""Conditional flow matching: regress v(x_t, t) on the straight path's velocity x1 - x0."""

from fmcli.flow.path import interpolate, target_velocity
from fmcli.training.objectives.base import Batch, LossOutput, Objective, TimeDistribution, Times


class FlowMatching(Objective):
    """loss = E || v(x_t, t, y) - (x1 - x0) ||^2,  x_t = (1 - t) x0 + t x1  (t = 0 data, t = 1 noise)."""

    name = "fm"

    def __init__(self, times: TimeDistribution = TimeDistribution()):
        self.times = times

    def draw_times(self, batch_size, generator, device) -> Times:
        return Times(self.times.sample(batch_size, generator, device))

    def __call__(self, net, batch: Batch) -> LossOutput:
        v = net(interpolate(batch.x0, batch.x1, batch.t), batch.t, **batch.conditioning)
        loss = (v.float() - target_velocity(batch.x0, batch.x1).float()).pow(2).mean()
        return LossOutput(loss=loss, logged=loss.detach())
