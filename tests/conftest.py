import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_ASSETS = ROOT.parent / "shared" / "assets"

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


GPU_SKIP = "needs a CUDA device (torch.cuda.is_available() is False here): gpu tests run on the GPU machine"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked `gpu` skip, with the reason, where no CUDA device is present."""
    gpu_items = [item for item in items if "gpu" in item.keywords]
    if not gpu_items:
        return
    import torch

    if torch.cuda.is_available():
        return
    for item in gpu_items:
        item.add_marker(pytest.mark.skip(reason=GPU_SKIP))


@pytest.fixture(scope="session")
def shared_assets() -> Path:
    """The real third-party test assets (../shared/assets beside the checkout, present in CI)."""
    if not (SHARED_ASSETS / "Fox.glb").is_file():
        pytest.fail(f"missing {SHARED_ASSETS / 'Fox.glb'}: the shared assets must sit beside the checkout")
    return SHARED_ASSETS
