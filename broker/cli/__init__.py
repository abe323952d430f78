"""The ``radbridge`` command line: one module per sub-command; nothing in the core imports it."""
