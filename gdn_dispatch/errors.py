"""Exceptions raised by gdn_dispatch."""

from __future__ import annotations


class GDNInputError(ValueError):
    """A call's arguments are invalid.

    The message names the argument, what was expected and what was received.
    Raised before any backend runs, so nothing has been written anywhere.
    """

    def __init__(self, argument: str, expected: str, received: str, op: str | None = None):
        self.argument = argument
        self.expected = expected
        self.received = received
        self.op = op
        where = f"{op}: " if op else ""
        super().__init__(f"{where}argument '{argument}': expected {expected}, received {received}")


class GDNBackendError(RuntimeError):
    """No backend can serve a call, or a forced backend cannot serve it.

    ``reasons`` maps each backend name considered to the list of reasons it was passed over.
    A forced backend never falls back silently: this error is raised instead.
    """

    def __init__(self, op: str, message: str, reasons: dict[str, list[str]]):
        self.op = op
        self.reasons = reasons
        lines = [f"{op}: {message}"]
        for name, why in reasons.items():
            lines.append(f"  {name}: " + ("; ".join(why) if why else "could serve"))
        super().__init__("\n".join(lines))
