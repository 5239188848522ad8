"""``python -m shared.ablation``: see ``shared.ablation.run``."""

from shared.ablation.run import main

raise SystemExit(main())
