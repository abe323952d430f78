"""The ``radbridge`` command for tests, forked from a pre-imported launcher
(:mod:`adapters.harness.launcher`): ``run`` for one-shot commands, ``start`` for
``serve`` and ``worker``. ``RADBRIDGE_LAUNCH=subprocess`` runs the installed script."""

from adapters.harness.launcher import RADBRIDGE, Forked, close, run, start

__all__ = ["RADBRIDGE", "Forked", "close", "run", "start"]
