import sys
from pathlib import Path

# The loop oracle and test-only helpers live beside the tests.
sys.path.insert(0, str(Path(__file__).parent))
