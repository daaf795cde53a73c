import atexit
import os
import shutil
import tempfile

import pytest

from tiny import FAMILY_NAMES, make_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no test may reach the network
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# skipprune remembers what it learnt about each family under XDG_CACHE_HOME: never the user's cache in tests
os.environ["XDG_CACHE_HOME"] = tempfile.mkdtemp(prefix="skipprune-test-cache-")
atexit.register(shutil.rmtree, os.environ["XDG_CACHE_HOME"], ignore_errors=True)


@pytest.fixture(scope="session")
def family_sources(tmp_path_factory):
    """One tiny fp32 checkpoint per family, built once per session; tests must never modify them."""
    root = tmp_path_factory.mktemp("sources")
    return {name: make_model(root / name, name) for name in FAMILY_NAMES}
