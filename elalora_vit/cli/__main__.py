"""``python -m elalora_vit.cli``: the same as the ``elalora-vit`` command (torchrun and
accelerate launch it this way)."""

import sys

from . import main

sys.exit(main())
