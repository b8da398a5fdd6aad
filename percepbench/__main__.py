"""``python -m percepbench ...`` (and ``torchrun ... -m percepbench run ...``): the command line."""

import sys

from percepbench.cli import main

sys.exit(main())
