"""default-policy-operator: a baseline network policy for every namespace.

Five layers, each a subpackage, each importing only the ones before it:

- ``core``: pure decisions (model, selectors, governance, rendering rules, validation, plan,
  conditions);
- ``kube``: the only code that talks to the Kubernetes API;
- ``rendering``: the only code that runs templates, in worker processes with OS limits;
- ``controller``: the reconcile loop, repair tracking, status, kopf handlers, the process;
- ``cli``: the ``dpo`` command.

``metrics`` (Prometheus definitions only) is a leaf that ``kube`` and ``controller`` share. The
local control plane and the demo are development tooling in ``dev/dpo_dev``, outside this
package and the image.
"""

from default_policy_operator.kube.lean_import import install as _install_lean_kubernetes_asyncio

__version__ = "0.1.0"

# Before anything imports kopf (which imports kubernetes_asyncio): see kube/lean_import.py.
_install_lean_kubernetes_asyncio()
