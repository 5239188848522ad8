"""``python -m shared.ablation`` (``make ablation``): see ``shared.ablation.run`` and docs/ablation.md."""

import sys

from shared import errors
from shared.ablation.run import main

sys.exit(errors.run(main))
