"""The running operator: the reconcile loop, repair tracking, status, kopf handlers, wiring.

May import ``core``, ``kube`` and ``metrics``; never the CLI.
"""
