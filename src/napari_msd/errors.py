"""The package's one-line errors: one base class, and one way to put any error on one line.

Every error napari-msd raises for something a person can fix (a bad file, a wrong setting, labels that
cannot train) is a :class:`NapariMsdError` whose message is one line saying what to do; the CLI prints
it after ``error:`` and the docks show it as one notification. :func:`one_line` flattens any other
exception (a library's, an OS error) the same way.
"""

from __future__ import annotations


class NapariMsdError(ValueError):
    """A bad input or state the user can fix; the message says how, in one line."""


def one_line(err: BaseException | str, typed: bool = False) -> str:
    """``err``'s message on one line (whitespace and line breaks collapsed); with ``typed``, an exception that
    is not one of napari-msd's own is prefixed with its type (``RuntimeError: CUDA out of memory``). An empty
    message gives the type's name."""
    text = " ".join(str(err).split())
    if isinstance(err, str):
        return text
    if typed and not isinstance(err, NapariMsdError):
        return f"{type(err).__name__}: {text}" if text else type(err).__name__
    return text or type(err).__name__


__all__ = ["NapariMsdError", "one_line"]
