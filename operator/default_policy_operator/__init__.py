"""default-policy-operator: a baseline network policy for every namespace.

The package is split along one line: modules that decide (``model``, ``selector``,
``governance``, ``render``, ``normalize``, ``plan``, ``conditions``, ``state``) do no I/O and
import neither kopf nor an HTTP client; ``kube`` is the only module that talks to the
Kubernetes API, and ``handlers`` / ``reconciler`` glue the two together.
"""

__version__ = "0.1.0"
