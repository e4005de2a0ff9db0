import sys
from pathlib import Path

# The loop oracle and test-only helpers live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))


import pytest  # noqa: E402

_ROOT = Path(__file__).resolve().parents[1]
_OUTPUT_FOLDERS = ("runs", "multirun", "outputs", "sweeps_out", "analysis_out")


def _outputs() -> set[Path]:
    """Entries up to two levels down (runs/<experiment>/<run>): cheap, and enough to see a new run."""
    found = set()
    for name in _OUTPUT_FOLDERS:
        for pattern in ("*", "*/*"):
            found.update((_ROOT / name).glob(pattern))
    return found


@pytest.fixture(scope="session", autouse=True)
def _tests_write_only_into_tmp_path():
    """Tests write into tmp_path only, never into the user's runs/, multirun/, sweeps_out/ ..."""
    before = _outputs()
    yield
    leaked = sorted(_outputs() - before)
    assert not leaked, f"tests wrote into the repository's output folders: {[str(p) for p in leaked[:5]]}"
