"""The online tuner (command module ``tune``): keep-or-roll-back segments on Optuna.

``import hotcb.modules.tune`` does not import optuna; enabling the tuner does.
"""

from ._module import STATE_FILE, TuneModule
from ._space import (
    DEFAULT_SPACE,
    Knob,
    RecipeError,
    Settings,
    load_recipe,
    parse_settings,
    read_recipe,
)
from ._view import over_view

__all__ = [
    "DEFAULT_SPACE",
    "STATE_FILE",
    "Knob",
    "RecipeError",
    "Settings",
    "TuneModule",
    "load_recipe",
    "over_view",
    "parse_settings",
    "read_recipe",
]
