"""One line of the preflight's report: what was checked, how it came out, and the fix."""

from __future__ import annotations

from dataclasses import dataclass

OK, FAILED, WARN = "ok", "FAILED", "warn"


@dataclass(frozen=True)
class Check:
    """`warn` is what cannot be decided from the login node, or works but costs something
    (no GPU requested, W&B logging offline); only FAILED fails the preflight."""

    status: str
    what: str
    detail: str
    fix: str | None = None

    @property
    def failed(self) -> bool:
        return self.status == FAILED

    def line(self) -> str:
        text = f"{self.status:<6} {self.what}: {self.detail}"
        return f"{text}; fix: {self.fix}" if self.fix else text


def ok(what: str, detail: str) -> Check:
    return Check(OK, what, detail)


def failed(what: str, detail: str, fix: str | None = None) -> Check:
    return Check(FAILED, what, detail, fix)


def warn(what: str, detail: str, fix: str | None = None) -> Check:
    return Check(WARN, what, detail, fix)


def one_line(error: BaseException) -> str:
    """An exception's message on one line (Hydra's and datasets' span several)."""
    return " ".join(str(error).split()) or type(error).__name__
