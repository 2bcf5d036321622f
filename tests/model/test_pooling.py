"""model/pooling.py: first/last non-pad token indices and pooled hidden states."""

from __future__ import annotations

import torch

from armada_ray.model.pooling import first_token_index, last_token_index, pool_hidden


def test_pooling_indices_right_and_left_padding():
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1], [0, 0, 0, 0, 1]])
    assert last_token_index(right).tolist() == [2, 4, 0]
    assert last_token_index(left).tolist() == [4, 4, 4]
    assert first_token_index(right).tolist() == [0, 0, 0]
    assert first_token_index(left).tolist() == [2, 0, 4]
    hidden = torch.arange(3 * 5 * 2, dtype=torch.float32).reshape(3, 5, 2)
    assert torch.equal(pool_hidden(hidden, right, "last"), hidden[[0, 1, 2], [2, 4, 0]])
    assert torch.equal(pool_hidden(hidden, left, "first"), hidden[[0, 1, 2], [2, 0, 4]])
    assert torch.equal(pool_hidden(hidden, left, "cls"), hidden[:, 0])
