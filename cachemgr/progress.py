"""Progress bars on a TTY (tqdm), silence otherwise."""

from __future__ import annotations

from typing import Any, Protocol


class Bar(Protocol):
    def update_to(self, done: int, total: int | None) -> None: ...
    def close(self) -> None: ...


class _Silent:
    def update_to(self, done: int, total: int | None) -> None:
        pass

    def close(self) -> None:
        pass


class _Tqdm:
    def __init__(self, label: str, position: int, unit: str) -> None:
        import shutil

        from tqdm import tqdm

        # A pty with no size (CI logs, `script`) reports 0x0, which hides tqdm's bars: use 100x24.
        size = shutil.get_terminal_size((100, 24))
        self._bar: Any = tqdm(
            desc=label[-48:], unit=unit, unit_scale=unit == "B", unit_divisor=1024,
            position=position, leave=True, ncols=size.columns or 100, nrows=size.lines or 24,
        )

    def update_to(self, done: int, total: int | None) -> None:
        if total is not None and self._bar.total != total:
            self._bar.total = total
        self._bar.update(done - self._bar.n)

    def close(self) -> None:
        self._bar.close()


class Bars:
    """Makes one bar per concurrent transfer, or silent ones when not on a TTY."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._next = 0

    def new(self, label: str, unit: str = "B") -> Bar:
        """A bar counting bytes (``B``, shown in KiB/MiB) or other things (``model``, ``item``)."""
        if not self.enabled:
            return _Silent()
        self._next += 1
        return _Tqdm(label, self._next - 1, unit)
