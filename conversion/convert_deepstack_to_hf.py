#!/usr/bin/env python
"""Convert an original DeepStack checkpoint to Transformers: `python conversion/convert_deepstack_to_hf.py --help`.

Thin runner around `deepstack_hf.conversion.convert_deepstack_to_hf.main` (also installed as `deepstack-convert`).
Works from a source checkout without installing the package.
"""

import sys
from pathlib import Path

try:
    from deepstack_hf.conversion.convert_deepstack_to_hf import main
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from deepstack_hf.conversion.convert_deepstack_to_hf import main

if __name__ == "__main__":
    sys.exit(main())
