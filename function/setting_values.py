"""How the text of one setting becomes its value: parsers that return it or raise `Invalid`, each
saying in `allowed` what it accepts (for the README, --help and the messages)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Protocol

TRUE = {"1", "true", "yes", "on"}
FALSE = {"", "0", "false", "no", "off"}


class Invalid(ValueError):
    """A refused text. The message is a template: `{setting}` stands for `VARIABLE='text'` and
    `{variable}` for the variable alone, so that a message names the variable and the value
    whoever reads the setting."""


class Parser(Protocol):
    allowed: str

    def __call__(self, text: str) -> Any: ...


@dataclass(frozen=True)
class Number:
    kind: type[int] | type[float]
    low: float
    high: float
    suffix: str = ""  # also accepted after the number: "540s", as gcloud spells a timeout

    @property
    def allowed(self) -> str:
        whole = "a whole number, " if self.kind is int else ""
        suffix = f", with or without a trailing {self.suffix}" if self.suffix else ""
        return f"{whole}{self.low:g} to {self.high:g}{suffix}"

    def __call__(self, text: str) -> int | float:
        text = text.strip()
        try:
            value = self.kind(text.removesuffix(self.suffix) if self.suffix else text)
        except ValueError:
            what = "a whole number" if self.kind is int else "a number"
            raise Invalid(f"{{setting}} is not {what}: use one from {self.low:g} to {self.high:g}") from None
        if not self.low <= value <= self.high:  # also refuses nan
            raise Invalid(f"{{setting}}: must be between {self.low:g} and {self.high:g}")
        return value


@dataclass(frozen=True)
class Pattern:
    regex: re.Pattern[str]
    allowed: str
    noun: str = ""  # "project id": the message says "is not a valid project id"
    blank: str = ""  # the message for a blank text, when it deserves its own

    def __call__(self, text: str) -> str:
        if self.blank and not text.strip():
            raise Invalid(self.blank)
        if not self.regex.fullmatch(text):
            what = f" is not a valid {self.noun}" if self.noun else ""
            raise Invalid(f"{{setting}}{what}: use {self.allowed}")
        return text


@dataclass(frozen=True)
class Flag:
    allowed: str = "true or false (also 1/0, yes/no, on/off)"

    def __call__(self, text: str) -> bool:
        value = text.strip().lower()
        if value in TRUE:
            return True
        if value in FALSE:
            return False
        raise Invalid("{setting}: use true or false")


@dataclass(frozen=True)
class Text:
    """Any text: what it names is checked where it is used."""

    allowed: str

    def __call__(self, text: str) -> str:
        return text
