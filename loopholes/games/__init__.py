"""The four vulnerability games and their registry.

Importing this package imports every game module in it, which registers the
games by name: ``compliance``, ``self-grading``, ``summary`` and ``tampering``.
"""

import importlib
import pkgutil

from loopholes.games.base import (
    VARIANTS,
    Game,
    GameConfig,
    Outcome,
    Sample,
    game_class,
    game_names,
    make_game,
    register_game,
)

for _module in pkgutil.iter_modules(__path__):
    if _module.name != "base" and not _module.name.startswith("_"):
        importlib.import_module(f"{__name__}.{_module.name}")

__all__ = ["VARIANTS", "Game", "GameConfig", "Outcome", "Sample", "game_class", "game_names",
           "make_game", "register_game"]
