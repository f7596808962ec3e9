"""Conv2d and GroupNorm with cheap forward-mode derivatives, for MeanFlow's jvp through the U-Net.

``torch.func.jvp(model, (x, r, t), (v, 0, 1))`` differentiates along the input only: the parameters
carry no tangent. PyTorch's own forward-mode formulas do not exploit that (torch 2.x on the CPU):

    conv2d      d(W * x) = W * dx + dW * x: the second convolution runs on a zero tensor, so a jvp
                costs 3 convolutions instead of 2;
    group_norm  a decomposition into ~20 element-wise passes, ~10x the forward's time.

These modules are ``nn.Conv2d`` / ``nn.GroupNorm`` (same parameters, same state-dict keys) whose forward
switches, only inside a jvp, to an ``autograd.Function`` with an explicit jvp:

    conv2d      d(W * x + b) = W * dx (+ dW * x + db when the parameters do carry tangents);
    group_norm  y = xhat w + b, xhat = (x - mean) / std per (sample, group):
                dy = w (dx - mean(dx) - xhat mean(xhat dx)) / std      (means per sample and group).

Their backward passes call the same ATen kernels as the built-in modules, so gradients are unchanged.
Outside a jvp (training with flow matching, sampling, torch.compile) they are the built-in modules.

Memory: with the parameters requiring grad, autograd records every tangent computation too, in case
someone differentiates the tangent. MeanFlow does not (its target is detached), so ``meanflow_target``
runs the jvp inside ``detached_tangents()``, where these modules compute their tangents without
recording them: a MeanFlow step's peak memory then rises 1.45x as much as a flow-matching step's
instead of 3.2x (default 28x28 U-Net, batch 64; bench/meanflow_step_cost.py).

Autocast: PyTorch's conv jvp fails under CPU bfloat16 autocast (a float32 tangent meets bfloat16
weights); these formulas run there (tested, within bfloat16 rounding).
"""

import contextlib
import contextvars
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def in_forward_ad(x: Tensor) -> bool:
    """True inside ``torch.func.jvp`` (x is a functorch-wrapped tensor) or for a forward-AD dual tensor."""
    compiler = getattr(torch, "compiler", None)
    if compiler is not None and hasattr(compiler, "is_compiling") and compiler.is_compiling():
        return False
    wrapped = getattr(torch._C._functorch, "is_functorch_wrapped_tensor", None)
    if wrapped is not None and wrapped(x):
        return True
    return torch.autograd.forward_ad.unpack_dual(x).tangent is not None


_DETACHED_TANGENTS = contextvars.ContextVar("fm_detached_tangents", default=False)


@contextlib.contextmanager
def detached_tangents() -> Iterator[None]:
    """Inside: Conv2d and GroupNorm tangents are not recorded for backward (their outputs' gradients are
    unchanged, but gradients *through the jvp's tangent output* are then incomplete: detach it)."""
    token = _DETACHED_TANGENTS.set(True)
    try:
        yield
    finally:
        _DETACHED_TANGENTS.reset(token)


def _tangent_grad_mode() -> contextlib.AbstractContextManager:
    return torch.set_grad_enabled(torch.is_grad_enabled() and not _DETACHED_TANGENTS.get())


class _Conv2d(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, stride, padding, dilation, groups):
        return F.conv2d(x, weight, bias, stride, padding, dilation, groups)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, *ctx.conv = inputs
        ctx.has_bias = bias is not None
        ctx.set_materialize_grads(False)  # absent tangents stay None instead of zero tensors (the point)
        ctx.save_for_backward(x, weight)
        ctx.save_for_forward(x, weight)

    @staticmethod
    def jvp(ctx, x_t, weight_t, bias_t, *_):
        x, weight = ctx.saved_tensors
        with _tangent_grad_mode():
            out_t = F.conv2d(torch.zeros_like(x) if x_t is None else x_t, weight, None, *ctx.conv)
            if weight_t is not None:  # parameters with tangents (not MeanFlow's case): the full product rule
                out_t = out_t + F.conv2d(x, weight_t, None, *ctx.conv)
            if bias_t is not None:
                out_t = out_t + bias_t[None, :, None, None]
        return out_t

    @staticmethod
    def backward(ctx, grad):
        if grad is None:
            return (None,) * 7
        x, weight = ctx.saved_tensors
        # Under autocast the forward convolved bf16/fp16 copies of x and the weight: differentiate in
        # the dtype it ran in (autograd casts each gradient back to its input's dtype).
        x, weight = x.to(grad.dtype), weight.to(grad.dtype)
        stride, padding, dilation, groups = ctx.conv
        mask = [ctx.needs_input_grad[0], ctx.needs_input_grad[1], ctx.has_bias and ctx.needs_input_grad[2]]
        grad_x, grad_w, grad_b = torch.ops.aten.convolution_backward(
            grad,
            x,
            weight,
            [weight.shape[0]] if ctx.has_bias else None,
            stride,
            padding,
            dilation,
            False,
            [0, 0],
            groups,
            mask,
        )
        return grad_x, grad_w, grad_b, None, None, None, None


class _GroupNorm(torch.autograd.Function):
    @staticmethod
    def forward(x, weight, bias, groups, eps):
        n, c = x.shape[:2]
        out, mean, rstd = torch.ops.aten.native_group_norm(x, weight, bias, n, c, x[0, 0].numel(), groups, eps)
        return out, mean, rstd

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, ctx.groups, _ = inputs
        _, mean, rstd = output
        ctx.mark_non_differentiable(mean, rstd)
        ctx.set_materialize_grads(False)
        ctx.save_for_backward(x, weight, mean, rstd)
        ctx.save_for_forward(x, weight, mean, rstd)

    @staticmethod
    def jvp(ctx, x_t, weight_t, bias_t, *_):
        x, weight, mean, rstd = ctx.saved_tensors
        with _tangent_grad_mode():
            if x_t is None:
                x_t = torch.zeros_like(x)
            n, c = x.shape[:2]
            grouped = (n, ctx.groups, -1)
            rstd_ = rstd.to(x.dtype).reshape(n, ctx.groups, 1)
            xhat = (x.reshape(grouped) - mean.to(x.dtype).reshape(n, ctx.groups, 1)) * rstd_
            dx = x_t.reshape(grouped)
            dxhat = (dx - dx.mean(-1, keepdim=True) - xhat * (xhat * dx).mean(-1, keepdim=True)) * rstd_
            out_t = dxhat.reshape(x.shape)
            if weight is not None:
                out_t = out_t * weight[None, :, None, None]
            if weight_t is not None:
                out_t = out_t + xhat.reshape(x.shape) * weight_t[None, :, None, None]
            if bias_t is not None:
                out_t = out_t + bias_t[None, :, None, None]
        return out_t, None, None

    @staticmethod
    def backward(ctx, grad, _grad_mean, _grad_rstd):
        if grad is None:
            return (None,) * 5
        x, weight, mean, rstd = ctx.saved_tensors
        n, c = x.shape[:2]
        if x.device.type == "cpu" and weight is not None:
            return (*_group_norm_backward(grad, x, weight, mean, rstd, ctx.groups), None, None)
        mask = [ctx.needs_input_grad[0], weight is not None and ctx.needs_input_grad[1], ctx.needs_input_grad[2]]
        grad_x, grad_w, grad_b = torch.ops.aten.native_group_norm_backward(
            grad.contiguous(), x, mean, rstd, weight, n, c, x[0, 0].numel(), ctx.groups, mask
        )
        return grad_x, grad_w, grad_b, None, None


def _group_norm_backward(grad: Tensor, x: Tensor, weight: Tensor, mean: Tensor, rstd: Tensor, groups: int):
    """GroupNorm's gradients (x, weight, bias), torch's CPU formulas written with sums that torch computes one
    output at a time: the same bits at any thread count (torch's own kernel for the x gradient is not, for some
    shapes). Per channel: ds = sum dy x, db = sum dy over the pixels; then per group, with s = 1 / (its size),
    dx = rstd w dy + c2 x + c3 where c2 = (db_w mean - ds_w) rstd^3 s and c3 = -c2 mean - db_w rstd s."""
    n, c = x.shape[:2]
    per_group = (n, groups, c // groups)
    dy, xs = grad.reshape(n, c, -1), x.reshape(n, c, -1)
    ds, db = (dy * xs).sum(-1).reshape(per_group), dy.sum(-1).reshape(per_group)
    mean_ = mean.to(x.dtype).reshape(n, groups, 1)
    rstd_ = rstd.to(x.dtype).reshape(n, groups, 1)
    w = weight.reshape(1, *per_group[1:])
    ds_w, db_w = (ds * w).sum(-1, keepdim=True), (db * w).sum(-1, keepdim=True)
    s = 1.0 / (per_group[2] * xs.shape[-1])
    c2 = (db_w * mean_ - ds_w) * rstd_.pow(3) * s
    c3 = -c2 * mean_ - db_w * rstd_ * s
    per_channel = (n, c, 1)
    grad_x = torch.addcmul(c3.expand(per_group).reshape(per_channel), xs, c2.expand(per_group).reshape(per_channel))
    grad_x.addcmul_(dy, (w * rstd_).reshape(per_channel))
    grad_w = ((ds - db * mean_) * rstd_).sum(0).reshape(c)
    return grad_x.reshape(x.shape), grad_w, db.sum(0).reshape(c)


def _per_sample(bias: Tensor, out: Tensor) -> Tensor:
    """The bias as a [B, C, 1, 1] expansion, in the output's dtype (autocast): its gradient sums per sample first."""
    return bias.to(out.dtype).view(1, -1, 1, 1).expand(out.shape[0], -1, 1, 1)


FEW_CHANNELS = 16  # below this many output channels oneDNN splits the bias gradient over the batch


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (zero padding) with the cheap jvp of ``_Conv2d`` inside a forward-mode pass."""

    def _conv_forward(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        # On the CPU the gradients must have the same bits at any thread count (the thread governor changes the
        # count between steps, and resume stays exact: fmcli.runtime.threads). Two of torch's convolution
        # gradients do not: oneDNN's weight gradient of a 1x1 convolution, and its bias gradient for a few output
        # channels (an image's velocity: split over the batch by thread count). A 1x1 convolution is a matrix
        # product (the same forward bits, and faster here); the bias of a narrow output is added so that its
        # gradient sums per sample first, then over the samples.
        narrow = bias is not None and weight.shape[0] < FEW_CHANNELS
        if x.device.type == "cpu" and (self.kernel_size == (1, 1) or narrow):
            if self.kernel_size == (1, 1) and self.stride == (1, 1) and self.padding in ((0, 0), "valid"):
                if self.groups == 1 and self.padding_mode == "zeros":
                    # one product per sample (bmm: the same kernel in plain and forward-mode passes)
                    out = torch.bmm(weight.flatten(1).expand(x.shape[0], -1, -1), x.flatten(2))
                    out = out.view(x.shape[0], -1, *x.shape[2:])
                    return out if bias is None else out + _per_sample(bias, out)
            if bias is not None:
                out = self._conv_forward(x, weight, None)
                return out + _per_sample(bias, out)
        if self.padding_mode == "zeros" and in_forward_ad(x):
            return _Conv2d.apply(x, weight, bias, self.stride, self.padding, self.dilation, self.groups)
        return super()._conv_forward(x, weight, bias)


class GroupNorm(nn.GroupNorm):
    """``nn.GroupNorm`` with the cheap jvp of ``_GroupNorm`` inside a forward-mode pass."""

    def forward(self, x: Tensor) -> Tensor:
        # In training on the CPU too: its backward is written to give the same bits at any thread count.
        trains_on_cpu = x.device.type == "cpu" and torch.is_grad_enabled() and self.weight is not None
        if (in_forward_ad(x) or trains_on_cpu) and x.dim() == 4:
            return _GroupNorm.apply(x, self.weight, self.bias, self.num_groups, self.eps)[0]
        return super().forward(x)
