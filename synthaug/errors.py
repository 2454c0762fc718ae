"""The one exception type for mistakes a user can fix; the CLI prints it as a sentence and exits 1."""

from __future__ import annotations

import re
from collections.abc import Mapping


class SynthaugError(Exception):
    """A problem with the user's input or files, described in one sentence that says what to do.

    A sentence that names arguments of the library call (``num``, ``out``) writes each as ``{name}`` and lists
    it in ``arguments``. ``str(error)`` names them as the library does; :meth:`sentence` names them as a caller
    that spells them otherwise does (the command line: ``--num``, ``--out``).

    >>> e = SynthaugError("{num} must be positive.", arguments=("num",))
    >>> str(e), e.sentence({"num": "--num"})
    ('num must be positive.', '--num must be positive.')
    """

    def __init__(self, message: str, *, arguments: tuple[str, ...] = ()):
        self.template = message
        self.arguments = tuple(arguments)
        super().__init__(self.sentence())

    def sentence(self, names: Mapping[str, str] | None = None) -> str:
        """The sentence with each of its ``arguments`` written as ``names`` spells it (as the library does when
        ``names`` has no spelling for it)."""
        if not self.arguments:
            return self.template
        names = names or {}
        return re.sub(r"\{(\w+)\}", lambda m: names.get(m[1], m[1]) if m[1] in self.arguments else m[0], self.template)
