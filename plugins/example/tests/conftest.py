import importlib.util
import sys
from pathlib import Path

# The tests run against the installed package; from a source checkout without it, use src/.
if importlib.util.find_spec("fusedembed_example") is None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
