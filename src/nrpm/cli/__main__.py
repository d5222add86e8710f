"""``python -m nrpm.cli ...`` (and ``torchrun --nproc_per_node=N -m nrpm.cli ...``)."""

import sys

from .main import main

sys.exit(main())
