"""Image-conditioned diffusion policy: ResNet-18 (GroupNorm) + spatial softmax encoder, crops,
multi-camera dict observations, one encoder pass per predict, learning, input validation, the
hybrid transformer, the Push-T image task and its uint8 image reader."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from dp_gym.agent import DiffusionAgent
from dp_gym.policies.diffusion.config import DiffusionConfig
from dp_gym.policies.diffusion.policy import DiffusionPolicy
from dp_gym.policies.vision import CameraEncoder, ImageObsEncoder, SpatialSoftmax, crop_images

A = 2
# Smallest sizes for which ResNet-18's final map is still 2x2 (a 1x1 map makes spatial softmax constant).
IMG = [40, 40, 3]
CROP = [36, 36]


def image_config(cameras=("cam",), **kw) -> DiffusionConfig:
    shapes = {c: list(IMG) for c in cameras}
    shapes["agent_pos"] = [2]
    base = dict(obs_shapes=shapes, action_dim=A, horizon=8, n_obs_steps=2, n_action_steps=4, down_dims=[16, 32],
                diffusion_step_embed_dim=16, num_inference_steps=5, crop_shape=CROP, image_feature_dim=8,
                spatial_softmax_keypoints=4)
    base.update(kw)
    return DiffusionConfig(**base)


def image_policy(cameras=("cam",), **kw) -> DiffusionPolicy:
    torch.manual_seed(0)
    p = DiffusionPolicy(image_config(cameras, **kw))
    g = torch.Generator().manual_seed(1)
    p.fit_normalizers({"agent_pos": torch.rand(50, 2, generator=g) * 500, "action": torch.rand(50, A, generator=g) * 500})
    return p


def image_obs(cameras=("cam",), b=3, to=2, seed=0) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    obs = {c: torch.randint(0, 256, (b, to, *IMG), generator=g, dtype=torch.uint8) for c in cameras}
    obs["agent_pos"] = torch.rand(b, to, 2, generator=g) * 500
    return obs


# --- encoder ----------------------------------------------------------------------------------

@pytest.mark.parametrize("cameras", [("agentview_image",), ("agentview_image", "robot0_eye_in_hand_image")])
def test_encoder_output_shape_one_and_two_cameras(cameras):
    enc = ImageObsEncoder({c: (84, 84, 3) for c in cameras}, crop_shape=(76, 76), feature_dim=64)
    feats = enc({c: torch.zeros(5, 84, 84, 3, dtype=torch.uint8) for c in cameras})
    assert feats.shape == (5, 64 * len(cameras))
    assert enc.feature_dim == 64 * len(cameras)
    assert list(enc.cameras) == list(cameras)  # one encoder per camera, in key order
    if len(cameras) == 2:
        a, b = enc.cameras.values()
        assert a.trunk.stem[0].weight.data_ptr() != b.trunk.stem[0].weight.data_ptr()


def test_resnet18_structure_groupnorm_everywhere():
    enc = CameraEncoder((96, 96, 3), crop_shape=(84, 84))
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in enc.modules())
    norms = [m for m in enc.modules() if isinstance(m, nn.GroupNorm)]
    assert norms and all(m.num_channels // m.num_groups == 16 for m in norms)
    convs = [m for m in enc.trunk.modules() if isinstance(m, nn.Conv2d)]
    assert len([c for c in convs if c.kernel_size != (1, 1)]) == 17  # stem + 16 in 8 basic blocks = ResNet-18
    assert not any(isinstance(m, (nn.AdaptiveAvgPool2d, nn.AvgPool2d)) for m in enc.modules())
    # Paper setup: 84x84 crops give a 3x3 final map, spatial softmax over it, 32 keypoints -> 64-d.
    x = enc.preprocess(torch.zeros(2, 96, 96, 3, dtype=torch.uint8))
    assert enc.trunk(x).shape == (2, 512, 3, 3)
    assert enc.keypoints.num_keypoints == 32 and enc.project.out_features == 64
    n_params = sum(p.numel() for p in enc.trunk.parameters())
    assert 11.0e6 < n_params < 11.3e6  # ResNet-18 without its classifier head: ~11.2M


def test_half_width_resnet_has_a_quarter_of_the_parameters_and_the_same_layout():
    full, half = CameraEncoder((96, 96, 3), crop_shape=(84, 84)), CameraEncoder((96, 96, 3), crop_shape=(84, 84), width=32)
    x = half.preprocess(torch.zeros(2, 96, 96, 3, dtype=torch.uint8))
    assert half.trunk(x).shape == (2, 256, 3, 3) and half.keypoints.to_keypoints.in_channels == 256
    assert half(torch.zeros(2, 96, 96, 3, dtype=torch.uint8)).shape == (2, 64)
    n_full, n_half = (sum(p.numel() for p in e.trunk.parameters()) for e in (full, half))
    assert 0.24 < n_half / n_full < 0.26
    assert [type(m) for m in half.trunk.modules()] == [type(m) for m in full.trunk.modules()]
    with pytest.raises(ValueError, match="multiple of the GroupNorm group size"):
        CameraEncoder((96, 96, 3), width=24)


def test_policy_config_sets_the_encoder_width_and_checks_it():
    p = image_policy(image_encoder_width=32)
    assert p.image_encoder.cameras["cam"].trunk.out_channels == 256
    assert image_policy().image_encoder.cameras["cam"].trunk.out_channels == 512  # the paper's ResNet-18 by default
    with pytest.raises(ValueError, match="image_encoder_width"):
        image_config(image_encoder_width=40)


def test_spatial_softmax_finds_the_peak():
    ss = SpatialSoftmax(1, num_keypoints=1)
    with torch.no_grad():
        ss.to_keypoints.weight.fill_(1.0)
        ss.to_keypoints.bias.zero_()
    feat = torch.zeros(1, 1, 5, 7)
    feat[0, 0, 4, 0] = 100.0  # bottom-left corner
    torch.testing.assert_close(ss(feat), torch.tensor([[-1.0, 1.0]]), atol=1e-4, rtol=0)


def test_crop_eval_is_centre_train_is_random():
    imgs = torch.arange(6 * 10 * 3, dtype=torch.int32).reshape(1, 6, 10, 3).repeat(8, 1, 1, 1).to(torch.uint8)
    centre = crop_images(imgs, (4, 6), random=False)
    assert torch.equal(centre, imgs[:, 1:5, 2:8])
    g = torch.Generator().manual_seed(0)
    rand = crop_images(imgs, (4, 6), random=True, generator=g)
    assert rand.shape == (8, 4, 6, 3)
    # every random crop is a real window of the image, and they are not all the same window
    windows = {(t, l) for t in range(3) for l in range(5)}
    found = set()
    for i in range(8):
        match = [(t, l) for (t, l) in windows if torch.equal(rand[i], imgs[i, t : t + 4, l : l + 6])]
        assert len(match) == 1
        found.add(match[0])
    assert len(found) > 1
    with pytest.raises(ValueError, match="larger than the image"):
        crop_images(imgs, (7, 6), random=False)


def test_encoder_train_mode_random_eval_mode_deterministic():
    enc = CameraEncoder(IMG, crop_shape=CROP, feature_dim=8, num_keypoints=4)
    x = torch.randint(0, 256, (4, *IMG), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    enc.eval()
    torch.testing.assert_close(enc(x), enc(x))
    assert not torch.allclose(enc(x)[0], enc(x)[1])  # the features depend on the image
    assert torch.equal(enc.preprocess(x), (x[:, 2:38, 2:38].permute(0, 3, 1, 2).float() / 127.5 - 1).contiguous())
    enc.train()
    torch.manual_seed(0)
    a = enc(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, enc(x))


def test_images_scaled_to_minus_one_one():
    enc = CameraEncoder(IMG, crop_shape=None).eval()
    x = torch.zeros(2, *IMG, dtype=torch.uint8)
    x[1] = 255
    y = enc.preprocess(x)
    assert y.shape == (2, 3, 40, 40) and y[0].eq(-1).all() and y[1].eq(1).all()


# --- policy -----------------------------------------------------------------------------------

@pytest.mark.parametrize("cameras", [("cam",), ("cam", "wrist")])
@pytest.mark.parametrize("denoiser", ["unet", "transformer"])
def test_image_policy_loss_and_sampling_shapes(cameras, denoiser):
    extra = dict(n_layer=2, n_head=2, n_emb=16) if denoiser == "transformer" else {}
    p = image_policy(cameras, denoiser=denoiser, **extra)
    assert p.config.obs_feature_dim == 8 * len(cameras) + 2
    obs = image_obs(cameras)
    batch = {**obs, "action": torch.rand(3, 8, A) * 500}
    loss = p.train().compute_loss(batch)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [q.grad for q in p.image_encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)  # trained end to end
    p.eval()
    chunk = p.predict_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (3, 4, A)
    again = p.predict_chunk(obs, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(chunk, again)


@pytest.mark.parametrize("sampler,steps", [("ddpm", 5), ("ddim", 3)])
def test_encoder_runs_once_per_predict(sampler, steps, monkeypatch):
    monkeypatch.setenv("DP_GYM_ACCELERATE", "eager")  # the denoiser's trunk runs in Python, so it can be counted
    p = image_policy().eval()
    calls = {"encoder": 0, "denoiser": 0}
    p.image_encoder.register_forward_hook(lambda *a: calls.__setitem__("encoder", calls["encoder"] + 1))
    denoise = p.denoiser.denoise  # one trunk pass per denoising step (the conditioning is computed once)

    def counted(*a):
        calls["denoiser"] += 1
        return denoise(*a)

    monkeypatch.setattr(p.denoiser, "denoise", counted)
    agent = DiffusionAgent(p)
    agent.sample_kwargs = {"sampler": sampler, "num_inference_steps": steps}
    obs = {"cam": np.zeros((2, *IMG), np.uint8), "agent_pos": np.ones((2, 2), np.float32)}
    agent.predict(obs, episode_start=np.ones(2, bool))
    assert calls == {"encoder": 1, "denoiser": steps}  # one encoder pass for both envs and all steps
    for _ in range(3):  # the queued actions are executed without re-encoding
        agent.predict(obs)
    assert calls["encoder"] == 1
    agent.predict(obs)  # queue (Ta=4) ran out: one new chunk, one new encoder pass
    assert calls == {"encoder": 2, "denoiser": 2 * steps}


def test_image_training_lowers_the_loss():
    torch.manual_seed(0)
    p = image_policy().train()
    # Two distinguishable scenes (dark vs bright image) with different action targets.
    imgs = torch.stack([torch.full((2, *IMG), 30, dtype=torch.uint8), torch.full((2, *IMG), 220, dtype=torch.uint8)])
    batch = {"cam": imgs.repeat(4, 1, 1, 1, 1), "agent_pos": torch.full((8, 2, 2), 250.0),
             "action": torch.tensor([100.0, 400.0]).repeat_interleave(A).reshape(2, 1, A).repeat(4, 8, 1)}

    def fixed_noise_loss() -> float:  # same timesteps, noise and crops before and after training
        state = torch.get_rng_state()
        torch.manual_seed(123)
        with torch.no_grad():
            loss = float(p.compute_loss(batch))
        torch.set_rng_state(state)
        return loss

    before = fixed_noise_loss()
    opt = torch.optim.AdamW(p.parameters(), lr=1e-3)
    for _ in range(40):
        loss = p.compute_loss(batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = fixed_noise_loss()
    assert after < 0.7 * before, (before, after)  # measured: 1.12 -> 0.69 after 30 steps


def test_wrong_image_shape_or_dtype_is_a_clear_error():
    p = image_policy().eval()
    obs = image_obs()
    bad = dict(obs, cam=obs["cam"].float())
    with pytest.raises(TypeError, match="uint8"):
        p.predict_chunk(bad)
    bad = dict(obs, cam=obs["cam"][..., :2])
    with pytest.raises(ValueError, match=r"cam.*shape"):
        p.predict_chunk(bad)
    bad = dict(obs, cam=obs["cam"].permute(0, 1, 4, 2, 3))  # CHW instead of HWC
    with pytest.raises(ValueError, match=r"cam.*shape"):
        p.predict_chunk(bad)
    agent = DiffusionAgent(p)
    good = {"cam": np.zeros(IMG, np.uint8), "agent_pos": np.zeros(2, np.float32)}
    with pytest.raises(TypeError, match="uint8"):
        agent.predict(dict(good, cam=good["cam"].astype(np.float32)))
    with pytest.raises(ValueError, match="cam"):
        agent.predict(dict(good, cam=np.zeros((3, 40, 40), np.uint8)))
    with pytest.raises(KeyError, match="agent_pos"):
        agent.predict({"cam": good["cam"]})


def test_config_validates_image_shapes_and_crop():
    with pytest.raises(ValueError, match="larger than image"):
        image_config(crop_shape=[50, 50])
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        DiffusionConfig(obs_shapes={"cam": [3, 24, 24, 1]}, action_dim=2)
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        DiffusionConfig(obs_shapes={"cam": [3, 24, 24]}, action_dim=2)  # channels first
    with pytest.raises(ValueError, match="image_encoder_width"):
        image_config(image_encoder_width=24)  # not a multiple of the GroupNorm group size 16
    with pytest.raises(ValueError, match="image_feature_dim"):
        image_config(image_feature_dim=0)


def test_image_policy_checkpoint_round_trip(tmp_path):
    p = image_policy(("cam", "wrist")).eval()
    agent = DiffusionAgent(p)
    agent.save(tmp_path / "ckpt")
    loaded = DiffusionAgent.load(tmp_path / "ckpt")
    obs = {k: v[0, -1].numpy() for k, v in image_obs(("cam", "wrist")).items()}
    a, _ = agent.predict(obs, episode_start=np.array([True]), deterministic=True)
    b, _ = loaded.predict(obs, episode_start=np.array([True]), deterministic=True)
    np.testing.assert_allclose(a, b, atol=1e-5)


# --- the baselines from pixels ---------------------------------------------------------------

def baseline_from_pixels(kind: str, **kw):
    """A BC or IBC policy on one 40x40 camera + a 2-d low-dim key, normalisers fitted."""
    from dp_gym.policies.registry import get_policy_class

    cls = get_policy_class(kind)
    extra = dict(n_action_steps=1, chunked=False, n_counter_examples=16, n_samples=64, n_iters=2) if kind == "ibc" else {}
    shapes = {"cam": list(IMG), "agent_pos": [2]}
    config = cls.config_class(obs_shapes=shapes, action_dim=A, horizon=8, n_obs_steps=2, hidden_dims=[32, 32],
                              **{"n_action_steps": 4, "crop_shape": CROP, "image_feature_dim": 8, "spatial_softmax_keypoints": 4,
                                 **extra, **kw})
    torch.manual_seed(0)
    p = cls(config)
    g = torch.Generator().manual_seed(1)
    p.fit_normalizers({"agent_pos": torch.rand(50, 2, generator=g) * 500, "action": torch.rand(50, A, generator=g) * 500})
    return p


@pytest.mark.parametrize("kind", ["bc", "ibc"])
def test_baselines_take_images_through_the_diffusion_policys_encoder(kind, tmp_path):
    p = baseline_from_pixels(kind, image_encoder_width=32)
    assert type(p.image_encoder) is type(image_policy().image_encoder)
    assert p.image_encoder.cameras["cam"].trunk.out_channels == 256  # the half-width ResNet-18
    assert p.config.obs_feature_dim == 8 + 2
    obs = image_obs()
    loss = p.train().compute_loss({**obs, "action": torch.rand(3, 8, A) * 500})
    loss.backward()
    grads = [q.grad for q in p.image_encoder.parameters()]
    assert all(g is not None for g in grads) and any(g.abs().sum() > 0 for g in grads)  # trained end to end
    p.eval()
    chunk = p.predict_chunk(obs, generator=torch.Generator().manual_seed(0))
    assert chunk.shape == (3, p.config.n_action_steps, A)
    torch.testing.assert_close(chunk, p.predict_chunk(obs, generator=torch.Generator().manual_seed(0)))  # eval crops are fixed
    agent = DiffusionAgent(p)
    agent.save(tmp_path / "ckpt")
    loaded = DiffusionAgent.load(tmp_path / "ckpt")
    one = {k: v[0, -1].numpy() for k, v in obs.items()}
    a, _ = agent.predict(one, episode_start=np.array([True]), deterministic=True)
    b, _ = loaded.predict(one, episode_start=np.array([True]), deterministic=True)
    np.testing.assert_allclose(a, b, atol=1e-5)
    with pytest.raises(TypeError, match="uint8"):
        p.predict_chunk(dict(obs, cam=obs["cam"].float()))


@pytest.mark.parametrize("kind", ["bc", "ibc"])
def test_baseline_image_config_is_validated(kind):
    with pytest.raises(ValueError, match="larger than image"):
        baseline_from_pixels(kind, crop_shape=[50, 50])
    with pytest.raises(ValueError, match="image_encoder_width"):
        baseline_from_pixels(kind, image_encoder_width=40)


def test_low_dim_baselines_have_no_image_encoder():
    from dp_gym.policies.bc.config import BCConfig
    from dp_gym.policies.bc.policy import BCPolicy

    p = BCPolicy(BCConfig(obs_shapes={"state": [5]}, action_dim=2, horizon=8, n_obs_steps=2, n_action_steps=4))
    assert p.image_encoder is None and not any("image_encoder" in k for k in p.state_dict())


# --- data and task ----------------------------------------------------------------------------

def test_zarr_uint8_image_reader(tmp_path):
    zarr = pytest.importorskip("zarr")
    from dp_gym.data.replay import read_zarr_replay

    root = zarr.open(str(tmp_path / "r.zarr"), mode="w")
    img = np.random.default_rng(0).integers(0, 256, (10, 4, 4, 3)).astype(np.float32)
    root.create_dataset("data/img", data=img, chunks=(3, 4, 4, 3))
    root.create_dataset("data/action", data=np.zeros((10, 2), np.float32))
    root.create_dataset("meta/episode_ends", data=np.array([4, 10]))
    ep = read_zarr_replay(tmp_path / "r.zarr", uint8_keys=("img",))
    assert ep.arrays["img"].dtype == np.uint8 and np.array_equal(ep.arrays["img"], img.astype(np.uint8))
    assert ep.arrays["action"].dtype == np.float32
    root["data/img"][7, 0, 0, 0] = 12.5
    with pytest.raises(ValueError, match="whole numbers"):
        read_zarr_replay(tmp_path / "r.zarr", uint8_keys=("img",))


def test_pusht_image_task_dataset_and_env_agree(data_dir):
    from dp_gym.tasks import get_task

    task = get_task("pusht_image")
    ep = task.load_dataset(str(data_dir))
    assert ep.arrays["pixels"].shape == (25650, 96, 96, 3) and ep.arrays["pixels"].dtype == np.uint8
    assert ep.arrays["agent_pos"].shape == (25650, 2) and ep.n_episodes == 206
    env = task.make_env()
    obs, _ = env.reset(seed=0)
    env.close()
    for key in task.obs_keys:  # env observations have the dataset's per-frame shapes and dtypes
        assert obs[key].shape == ep.arrays[key].shape[1:] and obs[key].dtype == ep.arrays[key].dtype


def test_optimiser_groups_follow_the_paper():
    """UNet: one group, weight decay 1e-6. Transformer: 1e-3 on the denoiser's weight matrices, 0 on
    its biases / LayerNorm / position embeddings, 1e-6 on the image encoder; every parameter once."""
    unet = image_policy()
    (group,) = unet.optim_groups()
    assert group["weight_decay"] == 1e-6 and len(group["params"]) == len(list(unet.parameters()))
    assert unet.optim_groups(0.05)[0]["weight_decay"] == 0.05

    tr = image_policy(denoiser="transformer", n_layer=1, n_head=2, n_emb=16)
    groups = tr.optim_groups()
    assert [g["weight_decay"] for g in groups] == [1e-3, 0.0, 1e-6]
    ids = [id(p) for g in groups for p in g["params"]]
    assert len(ids) == len(set(ids)) and set(ids) == {id(p) for p in tr.parameters()}
    decay = {id(p) for p in groups[0]["params"]}
    assert id(tr.denoiser.input_emb.weight) in decay and id(tr.denoiser.pos_emb) not in decay
    assert {id(p) for p in groups[2]["params"]} == {id(p) for p in tr.image_encoder.parameters()}
    assert tr.optim_groups(0.05)[0]["weight_decay"] == 0.05
    torch.optim.AdamW(groups, lr=1e-4)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_channels_last_max_pool_matches_pytorch(dtype):
    from dp_gym.policies.vision import MaxPool2d

    torch.manual_seed(0)
    x = torch.randn(3, 8, 13, 12).to(dtype)
    x[0, 0, :4, :4] = 1.0  # ties: a plateau several windows share
    ours, ref = MaxPool2d(3, 2, 1), torch.nn.MaxPool2d(3, 2, 1)
    with torch.no_grad():
        assert torch.equal(ours(x), ref(x))
    a, b = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(a), ref(b)
    assert type(ya.grad_fn).__name__ == "_ChannelsLastMaxPoolBackward" and ya.is_contiguous()
    assert torch.equal(ya, yb)
    grad = torch.randn_like(ya)
    ya.backward(grad)
    yb.backward(grad)
    assert a.grad.dtype == dtype
    if dtype == torch.float32:
        assert torch.equal(a.grad, b.grad)
    else:  # summed in float32 and rounded once (ATen rounds every bfloat16 sum): within half an ulp of exact
        c = x.double().requires_grad_()
        ref(c).backward(grad.double())
        assert ((a.grad.double() - c.grad).abs() <= c.grad.abs() * 2.0 ** -8).all()
    # other configurations and the reference context take nn.MaxPool2d's own path
    from dp_gym.policies.kernels import pytorch_kernels

    with pytorch_kernels():
        assert type(ours(x.clone().requires_grad_()).grad_fn).__name__ == "MaxPool2DWithIndicesBackward0"
    y = MaxPool2d(3, 2, 1, dilation=2)(x.clone().requires_grad_())
    assert type(y.grad_fn).__name__ != "_ChannelsLastMaxPoolBackward"
