"""Errors a user can act on: shown as one clear line, never as a traceback."""

import reprlib

# A bad value is quoted in the message, but a hostile file's value can be huge or nested
# thousands deep: quote a bounded, shallow excerpt.
_QUOTE = reprlib.Repr()
_QUOTE.maxlevel, _QUOTE.maxstring, _QUOTE.maxother = 3, 120, 120


class AuraError(Exception):
    """An expected failure whose message tells the user what to fix."""


class ConfigError(AuraError):
    """A config or data file is missing, unreadable or has a bad value.

    The message names the file, the key and what was expected.
    """

    def __init__(self, path: object, key: str, expected: str, found: object = None) -> None:
        where = f"{path}: {key}" if key else f"{path}"
        detail = f"expected {expected}"
        if found is not None:
            detail += f", found {_QUOTE.repr(found)}"
        super().__init__(f"{where}: {detail}")
        self.path, self.key, self.expected, self.found = path, key, expected, found
