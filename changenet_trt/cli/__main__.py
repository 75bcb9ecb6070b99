"""``python -m changenet_trt.cli``: the same as the ``changenet-trt`` console script."""

import sys

from changenet_trt.cli import main

if __name__ == "__main__":  # importing the module (as the import tests do) runs nothing
    sys.exit(main())
