"""The CPU training kernels give PyTorch's results (to float rounding) and take their fast path
only where they should."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dp_gym.policies.diffusion.train_kernels import Conv1d, GroupNorm, Mish, pytorch_kernels


def _pair(c_in: int, c_out: int, k: int) -> tuple[Conv1d, nn.Conv1d]:
    torch.manual_seed(0)
    ours = Conv1d(c_in, c_out, k, padding=k // 2)
    ref = nn.Conv1d(c_in, c_out, k, padding=k // 2)
    ref.load_state_dict(ours.state_dict())
    return ours, ref


def _forward_backward(conv: nn.Module, x: torch.Tensor, grad: torch.Tensor, autocast: bool):
    x = x.clone().requires_grad_()
    conv.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        y = conv(x)
    y.float().backward(grad)
    return y, x.grad, conv.weight.grad, conv.bias.grad


@pytest.mark.parametrize("c_in,c_out,k", [(256, 256, 5), (512, 128, 5), (64, 2, 1)])
def test_bf16_conv_matches_pytorch_on_short_sequences(c_in, c_out, k):
    ours, ref = _pair(c_in, c_out, k)
    x, grad = torch.randn(8, c_in, 4), torch.randn(8, c_out, 4)
    y, gx, gw, gb = _forward_backward(ours, x, grad, autocast=True)
    assert type(y.grad_fn).__name__ == "_Bf16Conv1dFunctionBackward"
    y_ref, gx_ref, gw_ref, gb_ref = _forward_backward(ref, x, grad, autocast=True)
    assert y.dtype == y_ref.dtype == torch.bfloat16
    torch.testing.assert_close(y, y_ref, rtol=0, atol=0)  # the same oneDNN forward
    torch.testing.assert_close(gx, gx_ref, rtol=0, atol=0)  # the same oneDNN input gradient
    # the weight gradient sums in another order: bfloat16 rounding of the result apart
    assert gw.dtype == torch.float32 and gb.dtype == torch.float32
    assert (gw - gw_ref).abs().max() <= 8e-3 * gw_ref.abs().max()
    torch.testing.assert_close(gb, gb_ref, rtol=8e-3, atol=8e-3 * gb_ref.abs().max().item())


def test_bf16_conv_weight_gradient_against_float64():
    ours, _ = _pair(128, 64, 5)
    x, grad = torch.randn(16, 128, 4), torch.randn(16, 64, 4)
    _, _, gw, _ = _forward_backward(ours, x, grad, autocast=True)
    w64 = ours.weight.detach().double().bfloat16().double().requires_grad_()
    y64 = F.conv1d(x.bfloat16().double(), w64, padding=2)
    y64.backward(grad.bfloat16().double())
    assert (gw.double() - w64.grad).abs().max() <= 1e-2 * w64.grad.abs().max()


@pytest.mark.parametrize("c_in,c_out,k,t", [(256, 256, 5, 4), (512, 128, 5, 4), (6, 7, 5, 1), (6, 7, 5, 2), (6, 7, 5, 3),
                                          (8, 8, 3, 2), (8, 8, 3, 3)])
def test_float32_conv_on_short_axes_is_winograd_with_pytorchs_results(c_in, c_out, k, t):
    ours, ref = _pair(c_in, c_out, k)
    x, grad = torch.randn(16, c_in, t), torch.randn(16, c_out, t)
    y, *grads = _forward_backward(ours, x, grad, autocast=False)
    assert type(y.grad_fn).__name__ == "_WholeAxisConv1dFunctionBackward"
    y_ref, *grads_ref = _forward_backward(ref, x, grad, autocast=False)
    for a, b in zip([y, *grads], [y_ref, *grads_ref]):  # output, input, weight and bias gradients
        assert a.shape == b.shape and a.dtype == b.dtype == torch.float32
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_conv_takes_pytorch_path_elsewhere():
    ours, ref = _pair(64, 64, 5)
    grad8 = torch.randn(4, 64, 8)
    x8 = torch.randn(4, 64, 8)
    # longer sequences, inference and the reference context: nn.Conv1d's own result
    for autocast in (False, True):
        y, *grads = _forward_backward(ours, x8, grad8, autocast=autocast)
        assert type(y.grad_fn).__name__ == "ConvolutionBackward0"
    y, *grads = _forward_backward(ours, x8, grad8, autocast=False)
    y_ref, *grads_ref = _forward_backward(ref, x8, grad8, autocast=False)
    for a, b in zip([y, *grads], [y_ref, *grads_ref]):
        assert torch.equal(a, b)
    x4, grad4 = torch.randn(4, 64, 4), torch.randn(4, 64, 4)
    for autocast in (False, True):
        with pytorch_kernels():
            y, *grads = _forward_backward(ours, x4, grad4, autocast=autocast)
        assert type(y.grad_fn).__name__ == "ConvolutionBackward0"
    # a 3-tap convolution over 4 steps: F(4, 3) needs 6 multiplies, the swapped tile 7
    three_tap = Conv1d(8, 8, 3, padding=1)
    y, *grads = _forward_backward(three_tap, torch.randn(2, 8, 4), torch.randn(2, 8, 4), autocast=False)
    assert type(y.grad_fn).__name__ == "ConvolutionBackward0"
    with torch.no_grad():
        assert torch.equal(ours(x4), ref(x4))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(ours(x4), ref(x4))
    assert list(ours.state_dict()) == ["weight", "bias"]


def test_group_norm_on_short_axes_matches_pytorch():
    torch.manual_seed(0)
    ours, ref = GroupNorm(8, 64), nn.GroupNorm(8, 64)
    with torch.no_grad():
        ours.weight.normal_(), ours.bias.normal_()
    ref.load_state_dict(ours.state_dict())
    for t, fast in ((1, True), (4, True), (8, False)):
        x, grad = torch.randn(16, 64, t) * 3 + 1, torch.randn(16, 64, t)
        outs = []
        for norm in (ours, ref):
            xi = x.clone().requires_grad_()
            norm.zero_grad(set_to_none=True)
            y = norm(xi)
            y.backward(grad)
            outs.append((y, xi.grad, norm.weight.grad, norm.bias.grad))
        assert (type(outs[0][0].grad_fn).__name__ == "_ChannelAffineFunctionBackward") == fast
        for a, b in zip(*outs):
            assert (a - b).abs().max() <= 1e-5 * b.abs().max()
    x = torch.randn(4, 64, 4)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
    with pytorch_kernels():
        assert type(ours(x.requires_grad_()).grad_fn).__name__ == "NativeGroupNormBackward0"
    assert list(ours.state_dict()) == ["weight", "bias"]


def test_strided_conv_is_not_rerouted():
    conv = Conv1d(8, 8, 3, padding=0)  # not same-padded
    x = torch.randn(2, 8, 4, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = conv(x)
    assert type(y.grad_fn).__name__ == "ConvolutionBackward0" and y.shape == (2, 8, 2)


def test_mish_matches_pytorch_float32():
    x = torch.cat([torch.linspace(-30, 30, 20001), torch.tensor([-1e4, -88.0, 0.0, 88.0, 1e4])])
    ours, ref = x.clone().requires_grad_(), x.clone().requires_grad_()
    y, y_ref = Mish()(ours), F.mish(ref)
    assert type(y.grad_fn).__name__ == "_MishFunctionBackward"
    torch.testing.assert_close(y, y_ref, rtol=1e-6, atol=1e-30)
    grad = torch.randn_like(x)
    y.backward(grad)
    y_ref.backward(grad)
    torch.testing.assert_close(ours.grad, ref.grad, rtol=2e-5, atol=1e-6)
    assert torch.isfinite(ours.grad).all()


def test_mish_bfloat16_rounds_once_like_pytorch():
    x = (torch.randn(4096) * 4).bfloat16().requires_grad_()
    y = Mish()(x)
    assert y.dtype == torch.bfloat16
    exact = F.mish(x.detach().double())
    # float32 inside, one rounding to bfloat16: within half a bfloat16 ulp (2^-9 relative) of exact
    assert ((y.double() - exact).abs() <= exact.abs() * 2.0 ** -8 + 1e-30).all()
    y.backward(torch.ones_like(y))
    assert x.grad.dtype == torch.bfloat16


def test_mish_without_autograd_is_pytorchs():
    x = torch.randn(1000)
    with torch.no_grad():
        assert torch.equal(Mish()(x.requires_grad_()), F.mish(x))
    with pytorch_kernels():
        y = Mish()(x.requires_grad_())
    assert type(y.grad_fn).__name__ == "MishBackward0"


def test_unet_training_step_matches_pytorch_kernels():
    from dp_gym.policies.diffusion.unet import ConditionalUnet1D

    torch.manual_seed(0)
    net = ConditionalUnet1D(action_dim=2, cond_dim=5, n_obs_steps=2, down_dims=(32, 64, 128), n_groups=8)
    sample, t, cond = torch.randn(4, 16, 2), torch.randint(0, 100, (4,)), torch.randn(4, 2, 5)

    def grads(autocast: bool) -> tuple[torch.Tensor, list[torch.Tensor]]:
        net.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = net(sample, t, cond).float().square().mean()
        loss.backward()
        return loss.detach(), [p.grad.clone() for p in net.parameters()]

    for autocast, tol in ((False, 1e-5), (True, 3e-2)):
        loss, ours = grads(autocast)
        with pytorch_kernels():
            loss_ref, ref = grads(autocast)
        torch.testing.assert_close(loss, loss_ref, rtol=tol, atol=0)
        for a, b in zip(ours, ref):
            assert (a - b).abs().max() <= tol * b.abs().max() + 1e-7


def test_cpu_bf16_flags_and_training_hint():
    from dp_gym.train import TrainConfig, bf16_hint
    from dp_gym.utils.machine import cpu_bf16_flags

    assert cpu_bf16_flags("processor\t: 0\nflags\t\t: fpu avx512f amx_bf16 avx512_bf16\n") == ["avx512_bf16", "amx_bf16"]
    assert cpu_bf16_flags("flags\t\t: fpu avx2\n") == [] and cpu_bf16_flags("") == []
    cpu = torch.device("cpu")
    cfg = TrainConfig(task="pusht_keypoints", policy="diffusion")
    assert "--mixed-precision bf16" in bf16_hint(cfg, cpu, ["avx512_bf16"])
    assert bf16_hint(cfg, cpu, []) is None
    assert bf16_hint(TrainConfig(task="pusht_keypoints", policy="diffusion", mixed_precision="bf16"), cpu, ["avx512_bf16"]) is None
    assert bf16_hint(TrainConfig(task="pusht_keypoints", policy="bc"), cpu, ["avx512_bf16"]) is None
    assert bf16_hint(cfg, torch.device("cuda"), ["avx512_bf16"]) is None
