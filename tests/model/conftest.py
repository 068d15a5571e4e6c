"""Fixtures shared by the model tests."""

import pytest
import torch

from shards.synthetic import write_latent_shards


@pytest.fixture
def one_thread():
    """Tiny networks are all small ops: on a shared 2-core machine extra threads only wait (2-20x slower)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def shard_glob(tmp_path_factory) -> str:
    """Two synthetic latent shards of two samples each; the glob that names them."""
    d = tmp_path_factory.mktemp("latents")
    write_latent_shards(d, num_shards=2, per_shard=2)
    return str(d / "shard-*.tar")
