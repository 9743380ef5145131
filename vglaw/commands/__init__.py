"""The user's commands, above the engine and inference layers they combine: one module per
command, each with ``add_arguments(parser)`` and ``run(args)`` (``demo``'s in ``demo_command``,
since ``demo`` itself imports torch when it loads); ``options`` declares the options several
share, ``checks`` the path checks each makes before it imports torch."""
