"""Rendering in isolated worker processes: the only layer that runs templates.

``worker`` is the process (OS limits on CPU time and address space, a compiled-template cache);
``pool`` hands it batches of :class:`~default_policy_operator.core.render.RenderTask` from the
operator (async) or the command line (blocking), kills and replaces a worker that overruns its
wall-clock limit, and turns every failure into a ``RenderError`` for the task at fault;
``protocol`` frames the messages. May import ``core`` only.
"""
