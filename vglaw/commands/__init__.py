"""The user's commands, above the engine and inference layers they combine: ``demo`` (evaluates
the bundled model and can retrain it), ``eval``, ``predict`` and ``visualize``."""
