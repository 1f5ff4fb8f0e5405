from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

# Without a GPU, Triton kernels (lvlm_guard.engine.kernels.decode_kernel) run in Triton's interpreter. Triton reads
# this when it is imported, which importing torch/lvlm_guard may do, so it is set before them.
if shutil.which("nvidia-smi") is None:
    os.environ.setdefault("TRITON_INTERPRET", "1")

# CHAIR's NLTK data (tokenizer, tagger, WordNet): the workplace's offline copy beside the repo, when
# there is one and nothing else was chosen; nltk reads NLTK_DATA when it is imported.
_NLTK_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "nltk_data"
if _NLTK_DATA.is_dir():
    os.environ.setdefault("NLTK_DATA", str(_NLTK_DATA))

import pytest  # noqa: E402
import torch  # noqa: E402

sys.path.insert(0, str(Path(__file__).parent))


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    yield
