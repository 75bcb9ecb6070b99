"""``python -m changenet_trt.cli``: the same as the ``changenet-trt`` console script."""

import sys

from changenet_trt.cli import main

sys.exit(main())
