"""``python -m shared.ablation``: see ``shared.ablation.run``."""

import sys

from shared import errors
from shared.ablation.run import main

sys.exit(errors.run(main))
