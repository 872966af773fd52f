import torch

from geomim_hf.modeling.decoder import CrossViewAttention, GeoMIMDecoder, sincos_position_embedding


def _decoder():
    torch.manual_seed(0)
    decoder = GeoMIMDecoder(encoder_dims=(64, 128), feature_size=(4, 11), hidden_size=32, num_layers=4, num_heads=4,
                            neck_window=4, neck_heads=4, cross_view_layers=(1,), depth_branch_start=1,
                            depth_branch_layers=2, camera_hidden_size=16)
    for name, parameter in decoder.named_parameters():  # non-trivial weights everywhere, CVA included
        if "norm" not in name:
            torch.nn.init.normal_(parameter, std=0.1)
    return decoder.eval()


def _inputs(batch=2, views=3):
    generator = torch.Generator().manual_seed(1)
    c4 = torch.randn(batch * views, 4, 11, 64, generator=generator)
    c5 = torch.randn(batch * views, 2, 6, 128, generator=generator)
    cameras = torch.randn(batch * views, 22, generator=generator)
    return c4, c5, cameras


def test_permuting_views_permutes_outputs():
    """Cross-View Attention has no view-order bias."""
    decoder = _decoder()
    c4, c5, cameras = _inputs()
    order = torch.tensor([2, 0, 1])
    permuted = (torch.arange(2)[:, None] * 3 + order[None]).reshape(-1)  # same permutation in each sample
    masked = torch.rand(4, 11, generator=torch.Generator().manual_seed(2)) < 0.5
    with torch.no_grad():
        semantic, depth = decoder(c4, c5, 3, cameras, masked)
        semantic_p, depth_p = decoder(c4[permuted], c5[permuted], 3, cameras[permuted], masked)
    assert semantic.shape == (6, 32, 4, 11) and depth.shape == (6, 32, 4, 11)
    torch.testing.assert_close(semantic_p, semantic[permuted], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(depth_p, depth[permuted], atol=1e-5, rtol=1e-5)
    # Views do talk: changing one view changes the others' outputs.
    c4_changed = c4.clone()
    c4_changed[0] += 1.0
    with torch.no_grad():
        changed, _ = decoder(c4_changed, c5, 3, cameras, masked)
    assert not torch.allclose(changed[1], semantic[1])


def test_cross_view_attention_starts_as_identity():
    block = CrossViewAttention(dim=16, num_heads=2)
    tokens = torch.randn(6, 20, 16)
    torch.testing.assert_close(block(tokens, num_views=3, height=4, width=5), tokens)


def test_mask_token_fills_masked_cells():
    decoder = _decoder()
    c4, c5, cameras = _inputs()
    masked = torch.zeros(4, 11, dtype=torch.bool)
    masked[:, :6] = True  # whole stride-32 cells, so c5 holds no mixed cell
    other = c4.clone()
    other[:, :, :6] = torch.randn_like(other[:, :, :6])  # content under the mask differs
    with torch.no_grad():  # the neck's window attention keeps the groups apart, then the mask token fills in
        a, _ = decoder(c4, c5, 3, cameras, masked, groups=masked.long())
        b, _ = decoder(other, c5, 3, cameras, masked, groups=masked.long())
        c, _ = decoder(other, c5, 3, cameras, masked)  # without groups the neck leaks masked content
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, c)


def test_sincos_embedding():
    embedding = sincos_position_embedding(4, 11, 32)
    assert embedding.shape == (44, 32)
    assert torch.allclose(embedding[0, :8], torch.zeros(8)) and torch.allclose(embedding[0, 8:16], torch.ones(8))
    assert len(torch.unique(embedding, dim=0)) == 44  # every position distinct


def test_default_layout_runs_the_official_order():
    """The defaults follow the official decoder (Sense-X/GeoMIM, pretrain/.../backbones/swin_geomim.py): 8 blocks
    with Cross-View Attention after blocks 1 and 5, the depth branch leaving after block 3, and its own CVA after
    the second of its four blocks. Recorded from the forward pass itself."""
    decoder = GeoMIMDecoder(encoder_dims=(16, 32), feature_size=(2, 4), hidden_size=16, num_heads=2, neck_window=2,
                            neck_heads=2, camera_hidden_size=8).eval()
    calls = []
    for name, module in [*(("block", b) for b in decoder.blocks), *(("depth", b) for b in decoder.depth_blocks),
                         *(("cva", m) for m in decoder.cross_view.values()),
                         *(("depth cva", m) for m in decoder.depth_cross_view.values()),
                         ("gate", decoder.camera_gate)]:
        module.register_forward_hook(lambda module, args, output, name=name: calls.append(name))
    with torch.no_grad():
        decoder(torch.randn(2, 2, 4, 16), torch.randn(2, 1, 2, 32), 2, torch.randn(2, 22))
    assert calls == ["block", "block", "cva", "block", "block", "gate", "block", "block", "cva", "block", "block",
                     "depth", "depth", "depth cva", "depth", "depth"]
