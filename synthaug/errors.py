"""The one exception type for mistakes a user can fix; the CLI prints it as a sentence and exits 1."""


class SynthaugError(Exception):
    """A problem with the user's input or files, described in one sentence that says what to do."""
