"""The pure core: every decision the operator makes, with no I/O.

Profile model, label and Calico selectors, governance, rendering rules (run only by the render
workers, never by the world), structural validation, normalisation, the plan and the world's
indexes, status conditions, object identity. Nothing here imports kopf, an HTTP
client, ``asyncio`` or the other layers (``tests/test_layers.py`` enforces it), which is why
everything hard is tested here directly and exhaustively.
"""
