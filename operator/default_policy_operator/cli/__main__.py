"""``python -m default_policy_operator.cli``: the same as ``dpo`` (tests and the demo use it)."""

import sys

from default_policy_operator.cli.main import main

sys.exit(main())
