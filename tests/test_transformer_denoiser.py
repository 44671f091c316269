import pytest
import torch

from dp_gym.policies.diffusion.transformer import SinusoidalPosEmb, TransformerDenoiser

A, H, C, TO = 3, 8, 5, 2  # action_dim, horizon, cond_dim, n_obs_steps


def make(**kw):
    cfg = dict(action_dim=A, horizon=H, cond_dim=C, n_obs_steps=TO, n_layer=2, n_head=2, n_emb=32)
    cfg.update(kw)
    torch.manual_seed(0)
    return TransformerDenoiser(**cfg)


def boost(model, std=0.2):
    """GPT init (std 0.02) makes the network nearly insensitive to its inputs; for the
    sensitivity / masking tests use larger random weights so effects are O(0.1)."""
    g = torch.Generator().manual_seed(123)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def max_diff_per_pos(a, b):
    return (a - b).abs().amax(dim=(0, 2))  # (horizon,)


def inputs(b, seed=1):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(b, H, A, generator=g),
        torch.randint(0, 100, (b,), generator=g),
        torch.randn(b, TO, C, generator=g),
    )


@pytest.mark.parametrize("n_cond_layers", [0, 1])
@pytest.mark.parametrize("b", [1, 3, 7])
def test_output_shape(b, n_cond_layers):
    model = make(n_cond_layers=n_cond_layers)
    x, t, c = inputs(b)
    out = model(x, t, c)
    assert out.shape == (b, H, A)
    assert torch.isfinite(out).all()


def test_backward_reaches_all_params():
    model = make(n_cond_layers=1)
    x, t, c = inputs(2)
    model(x, t, c).square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None, name


@pytest.mark.parametrize("n_cond_layers", [0, 1])
def test_causal_self_attention(n_cond_layers):
    model = boost(make(causal_attn=True, p_drop_attn=0.1, p_drop_emb=0.1, n_cond_layers=n_cond_layers)).eval()
    x, t, c = inputs(2)
    with torch.no_grad():
        ref = model(x, t, c)
        for pos in range(1, H):
            x2 = x.clone()
            x2[:, pos:] = torch.randn_like(x2[:, pos:]) * 3
            d = max_diff_per_pos(model(x2, t, c), ref)
            assert (d[:pos] < 1e-5).all(), (pos, d)
            assert (d[pos:] > 1e-3).all(), (pos, d)


def test_causal_memory_mask_obs_steps():
    # With the MLP cond encoder cond tokens are processed independently, so obs step i
    # (cond token s = i + 1) must only influence action tokens t >= i.
    to = 4
    torch.manual_seed(0)
    model = boost(TransformerDenoiser(A, H, C, to, n_layer=2, n_head=2, n_emb=32, causal_attn=True)).eval()
    x = torch.randn(2, H, A)
    t = torch.tensor([3, 50])
    c = torch.randn(2, to, C)
    with torch.no_grad():
        ref = model(x, t, c)
        for i in range(to):
            c2 = c.clone()
            c2[:, i] += 3.0
            d = max_diff_per_pos(model(x, t, c2), ref)
            assert (d[:i] < 1e-5).all(), (i, d)
            assert (d[i:] > 1e-3).all(), (i, d)
    # the masks themselves
    assert model.tgt_mask.dtype == torch.bool and model.tgt_mask.shape == (H, H)
    assert model.memory_mask.shape == (H, 1 + to)
    assert not model.memory_mask[:, 0].any()  # everyone sees the diffusion-step token
    assert not model.memory_mask[0, 1] and model.memory_mask[0, 2]


def test_non_causal_sees_future():
    model = boost(make(causal_attn=False)).eval()
    assert model.tgt_mask is None and model.memory_mask is None
    x, t, c = inputs(2)
    with torch.no_grad():
        ref = model(x, t, c)
        x2 = x.clone()
        x2[:, -1] += 3.0
        d = max_diff_per_pos(model(x2, t, c), ref)
    assert (d > 1e-3).all(), d


@pytest.mark.parametrize("n_cond_layers", [0, 2])
def test_cond_and_timestep_change_output(n_cond_layers):
    model = make(n_cond_layers=n_cond_layers).eval()
    x, t, c = inputs(2)
    with torch.no_grad():
        ref = model(x, t, c)
        # even at GPT init (small weights) the effect must be clearly non-zero
        assert (model(x, t, c + 1.0) - ref).abs().max() > 1e-6
        assert (model(x, t + 7, c) - ref).abs().max() > 1e-6
        boost(model)
        ref = model(x, t, c)
        assert max_diff_per_pos(model(x, t, c + 1.0), ref).min() > 1e-3
        assert max_diff_per_pos(model(x, t + 7, c), ref).min() > 1e-3


def test_timestep_broadcast():
    model = make().eval()
    x, _, c = inputs(3)
    with torch.no_grad():
        ref = model(x, torch.full((3,), 17, dtype=torch.long), c)
        for ts in (17, 17.0, torch.tensor(17), torch.tensor(17.0), torch.tensor([17])):
            torch.testing.assert_close(model(x, ts, c), ref)
        # float (B,) timesteps are accepted as well
        assert model(x, torch.tensor([0.5, 1.5, 2.5]), c).shape == (3, H, A)


def test_shape_errors():
    model = make()
    x, t, c = inputs(2)
    with pytest.raises(ValueError, match=r"sample.*\(B, 8, 3\).*\(2, 7, 3\)"):
        model(x[:, :7], t, c)
    with pytest.raises(ValueError, match="sample"):
        model(torch.randn(2, H, A + 1), t, c)
    with pytest.raises(ValueError, match="sample"):
        model(torch.randn(H, A), t, c)
    with pytest.raises(ValueError, match=r"cond.*\(2, 2, 5\).*\(2, 3, 5\)"):
        model(x, t, torch.randn(2, TO + 1, C))
    with pytest.raises(ValueError, match="cond"):
        model(x, t, torch.randn(2, TO, C + 1))
    with pytest.raises(ValueError, match="cond"):
        model(x, t, torch.randn(3, TO, C))  # batch mismatch
    with pytest.raises(ValueError, match="timestep"):
        model(x, torch.zeros(3, dtype=torch.long), c)


@pytest.mark.parametrize(
    "kw",
    [
        dict(n_emb=30, n_head=4),
        dict(n_head=0),
        dict(action_dim=0),
        dict(horizon=-1),
        dict(cond_dim=2.5),
        dict(n_obs_steps=True),
        dict(n_layer=0),
        dict(n_cond_layers=-1),
        dict(p_drop_attn=1.0),
        dict(p_drop_emb=-0.1),
    ],
)
def test_constructor_validation(kw):
    with pytest.raises(ValueError):
        make(**kw)


def test_init_and_optim_groups():
    model = make(n_cond_layers=1)
    assert abs(model.input_emb.weight.std().item() - 0.02) < 0.01
    assert model.input_emb.bias.abs().max() == 0
    assert abs(model.pos_emb.std().item() - 0.02) < 0.005
    groups = model.get_optim_groups(weight_decay=0.1)
    assert len(groups) == 2
    assert groups[0]["weight_decay"] == 0.1 and groups[1]["weight_decay"] == 0.0
    decay_ids = {id(p) for p in groups[0]["params"]}
    no_decay_ids = {id(p) for p in groups[1]["params"]}
    assert not decay_ids & no_decay_ids
    assert decay_ids | no_decay_ids == {id(p) for p in model.parameters()}
    assert id(model.input_emb.weight) in decay_ids
    assert id(model.decoder.layers[0].self_attn.in_proj_weight) in decay_ids
    for p in (model.pos_emb, model.cond_pos_emb, model.input_emb.bias, model.ln_f.weight, model.ln_f.bias):
        assert id(p) in no_decay_ids
    torch.optim.AdamW(groups, lr=1e-4)  # usable as-is


def test_sinusoidal_pos_emb():
    emb = SinusoidalPosEmb(16)(torch.tensor([0, 1, 10]))
    assert emb.shape == (3, 16)
    torch.testing.assert_close(emb[0, :8], torch.zeros(8))
    torch.testing.assert_close(emb[0, 8:], torch.ones(8))
    assert SinusoidalPosEmb(7)(torch.arange(4)).shape == (4, 7)


def test_tiny_model_overfits():
    torch.manual_seed(0)
    model = TransformerDenoiser(A, H, C, TO, n_layer=2, n_head=2, n_emb=32, p_drop_attn=0.0)
    x, t, c = inputs(4, seed=3)
    target = torch.randn(4, H, A, generator=torch.Generator().manual_seed(4))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(200):
        loss = torch.nn.functional.mse_loss(model(x, t, c), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] / 10, (losses[0], losses[-1])
