"""The ``dpo`` command line: ``run``, ``render``, ``diff`` and ``audit``.

May import every other layer; nothing imports it.
"""
