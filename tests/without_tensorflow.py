"""Run a Python file as a machine without TensorFlow would: `import tensorflow` raises ImportError.

Used by test_backends.py with KERAS_BACKEND=jax or torch:
    python tests/without_tensorflow.py SCRIPT.py ARGS...
"""
from __future__ import annotations

import runpy
import sys
from pathlib import Path

for name in ("tensorflow", "tensorboard", "tf_keras"):
    sys.modules[name] = None  # makes any later import of it fail as if it were not installed

if __name__ == "__main__":
    script = Path(sys.argv[1]).resolve()
    sys.argv = [str(script), *sys.argv[2:]]
    sys.path.insert(0, str(script.parent))
    runpy.run_path(str(script), run_name="__main__")
