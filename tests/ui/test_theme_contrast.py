"""Selected rows stay readable in both palettes (ui.md: every colour readable on both)."""

from __future__ import annotations

from app.ui.theme import DARK, LIGHT, selected_text


def _luminance(hex_colour: str) -> float:
    def channel(v: int) -> float:
        s = v / 255
        return s / 12.92 if s <= 0.03928 else ((s + 0.055) / 1.055) ** 2.4

    r, g, b = (int(hex_colour[i : i + 2], 16) for i in (1, 3, 5))
    return 0.2126 * channel(r) + 0.7152 * channel(g) + 0.0722 * channel(b)


def _contrast(a: str, b: str) -> float:
    la, lb = sorted((_luminance(a), _luminance(b)), reverse=True)
    return (la + 0.05) / (lb + 0.05)


def test_selected_row_text_reads_on_the_accent_in_light_and_dark() -> None:
    for colors in (LIGHT, DARK):
        assert _contrast(selected_text(colors), colors.accent) >= 4.5, colors
