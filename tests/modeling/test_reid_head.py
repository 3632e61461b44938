"""EmbeddingProjection: in training, a box's embedding must not depend on who else is in the batch."""
import pytest
import torch

from dcinet_d2.modeling.reid_head import EmbeddingProjection


def test_running_norm_embeds_a_box_the_same_whatever_the_batch():
    torch.manual_seed(0)
    a, b, c = torch.randn(1, 16) + 3, torch.randn(3, 16), torch.randn(3, 16) - 2
    running, batch = EmbeddingProjection(16, 8, norm="running"), EmbeddingProjection(16, 8)
    batch.load_state_dict(running.state_dict())
    for head in (running, batch):
        head.train()
        head.bn.momentum = 0.0  # statistics held still, to compare two batches
        with_b, with_c = head(torch.cat([a, b]))[0], head(torch.cat([a, c]))[0]
        same = torch.allclose(with_b, with_c, atol=1e-5)
        assert same is (head is running)
    # The running statistics are still learned from the batches, and used at inference.
    running.bn.momentum = 0.1
    running(torch.cat([a, b]))
    assert running.bn.num_batches_tracked == 3 and running.bn.running_mean.abs().sum() > 0
    running.eval()
    x = torch.randn(5, 16)
    expected = (running.proj(x) - running.bn.running_mean) / (running.bn.running_var + running.bn.eps).sqrt()
    torch.testing.assert_close(running(x), expected)


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="EMBED_NORM"):
        EmbeddingProjection(4, 2, norm="group")
