import pytest
import timm
import torch

from geomim_hf.modeling.swin import PAD_GROUP, SwinEncoder, timm_checkpoint_filter


@pytest.mark.parametrize("image_size, window", [((224, 224), 7), ((128, 352), 4)])
def test_timm_layout_equals_timm_swin(image_size, window):
    torch.manual_seed(0)
    reference = timm.create_model("swin_tiny_patch4_window7_224", pretrained=False, img_size=image_size, embed_dim=32,
                                  depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=window, num_classes=0).eval()
    for parameter in reference.parameters():  # away from the identity-like default init
        torch.nn.init.normal_(parameter, std=0.2)
    ours = SwinEncoder(image_size, embed_dim=32, depths=(2, 2, 2, 2), num_heads=(1, 2, 4, 8), window_size=(window,) * 4,
                       shifted_windows=True, absolute_position_embedding_size=None).eval()
    encoder, rest = timm_checkpoint_filter(reference.state_dict())
    ours.load_state_dict(encoder)  # strict: every key lands
    assert set(rest) == {"norm.weight", "norm.bias"}
    pixels = torch.randn(2, 3, *image_size)
    with torch.no_grad():
        expected = reference.forward_intermediates(pixels, indices=[0, 1, 2, 3], norm=False, intermediates_only=True)
        actual = ours(pixels)
    for stage, (a, e) in enumerate(zip(actual, expected)):
        torch.testing.assert_close(a.permute(0, 3, 1, 2), e, atol=1e-4, rtol=1e-4, msg=f"stage {stage}")


def _official_tiny(**kwargs):
    return SwinEncoder((64, 176), embed_dim=16, depths=(1, 1, 2, 1), num_heads=(1, 2, 2, 4), window_size=(4, 4, 4, 2),
                       absolute_position_embedding_size=(16, 44), **kwargs).eval()


def test_visible_tokens_ignore_the_other_group():
    """One pass encodes both groups; a token's output depends only on its own group's pixels."""
    torch.manual_seed(0)
    encoder = _official_tiny()
    for parameter in encoder.parameters():
        torch.nn.init.normal_(parameter, std=0.1)
    cells = encoder.padded_size[0] // 32, encoder.padded_size[1] // 32  # 2 x 6 (176 pads to 192)
    groups = torch.randperm(cells[0] * cells[1]).reshape(cells) % 2
    pixels = torch.randn(2, 3, 64, 176)
    changed = pixels.clone()
    other = (groups == 1).repeat_interleave(32, 0).repeat_interleave(32, 1)[:64, :176]
    changed[:, :, other] = torch.randn_like(changed[:, :, other])
    with torch.no_grad():
        before, after = encoder(pixels, groups), encoder(changed, groups)
    for stage, (a, b, stride) in enumerate(zip(before, after, encoder.strides)):
        own = encoder.token_groups(groups, stride) == 0
        torch.testing.assert_close(a[:, own], b[:, own], msg=f"stage {stage}")
        assert not torch.allclose(a[:, ~own], b[:, ~own])  # the changed group did change
    with torch.no_grad():  # without groups, windows wider than a cell (the last stage's) mix the groups
        assert not torch.allclose(encoder(pixels)[-1][:, groups == 0], encoder(changed)[-1][:, groups == 0])
    tokens = encoder.token_groups(groups, 16)  # 176 = 11 tokens of 16 px; the 12th covers padding only
    assert (tokens[:, 11] == PAD_GROUP).all() and (tokens[:, :11] != PAD_GROUP).all()


def test_gradient_checkpointing_gives_the_same_gradients():
    torch.manual_seed(0)
    encoder = _official_tiny().train()
    pixels = torch.randn(1, 3, 64, 176)
    loss = sum(o.square().mean() for o in encoder(pixels))
    expected = torch.autograd.grad(loss, list(encoder.parameters()))
    for module in encoder.modules():  # what transformers' gradient_checkpointing_enable() does
        if hasattr(module, "gradient_checkpointing"):
            module.gradient_checkpointing = True
    loss = sum(o.square().mean() for o in encoder(pixels))
    for a, b in zip(torch.autograd.grad(loss, list(encoder.parameters())), expected):
        torch.testing.assert_close(a, b)
