import pathlib
import sys

# pytest runs with --import-mode=importlib, so make the shared helper module of this folder importable.
_HERE = str(pathlib.Path(__file__).resolve().parent)
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)
