"""Make the shared case builder (kernel_cases.py) importable by the tests and by the Triton check script."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
