"""The only layer that talks to the Kubernetes API.

Request layer (``client``), credentials, list-then-watch informers, leader election. May import
``core`` (names and labels) and ``metrics``; never the controller or the CLI.
"""
