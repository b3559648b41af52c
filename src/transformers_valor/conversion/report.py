"""What a checkpoint conversion did ([`ConversionReport`]), or why it was refused ([`ConversionError`])."""

from __future__ import annotations

from dataclasses import dataclass, field


class ConversionError(ValueError):
    """Raised when a checkpoint has keys the converter cannot place, wrong shapes, or leaves weights unfilled."""


@dataclass
class ConversionReport:
    """
    What the conversion did.

    Args:
        mapped (`dict[str, str]`): target key -> source key (with the transform in brackets when not a copy).
        dropped (`dict[str, str]`): source key -> why it is not needed.
        verification (`dict[str, float]`): max absolute differences of the parity checks (filled by
            `verify_conversion`).
    """

    mapped: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)
    verification: dict[str, float] = field(default_factory=dict)

    def summary(self) -> str:
        """A Markdown summary for logs and the model card."""
        lines = [
            f"- {len(self.mapped)} tensors mapped, {len(self.dropped)} source keys dropped as unused:",
        ]
        reasons: dict[str, int] = {}
        for reason in self.dropped.values():
            reasons[reason] = reasons.get(reason, 0) + 1
        lines += [f"  - {count} x {reason}" for reason, count in sorted(reasons.items())]
        if self.verification:
            lines.append("- parity with an independent forward of the original weights (max abs difference):")
            lines += [f"  - {name}: {value:.2e}" for name, value in self.verification.items()]
        return "\n".join(lines)
