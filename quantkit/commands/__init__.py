"""One module per CLI command (``quantkit <name>``), each defining a click command ``<name>``.

``quantkit.cli`` imports a module here only when its command runs, so heavy imports at the top of
these modules are fine only if they are cheap: keep numba/torch/transformers inside the bodies.
"""
