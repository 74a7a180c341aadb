"""What a conversion matched, adapted and dropped, and the error that lists every problem."""

from __future__ import annotations

import dataclasses


@dataclasses.dataclass
class ConversionReport:
    """What a conversion matched, adapted, dropped and could not place."""

    arch: str
    matched: list[str] = dataclasses.field(default_factory=list)
    missing: list[tuple[str, tuple | None]] = dataclasses.field(default_factory=list)  # (key, expected)
    unexpected: list[tuple[str, tuple]] = dataclasses.field(default_factory=list)  # (key, found)
    mismatched: list[tuple[str, tuple, tuple]] = dataclasses.field(default_factory=list)
    adapted: list[str] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        lines = [f"{self.arch}: {len(self.matched)} matched, {len(self.missing)} missing, "
                 f"{len(self.unexpected)} unexpected, {len(self.mismatched)} wrong shape"]
        lines += [f"  missing: {k}" + ("" if s is None else f" (expected {list(s)})")
                  for k, s in self.missing]
        lines += [f"  unexpected: {k} (found {list(s)})" for k, s in self.unexpected]
        lines += [f"  wrong shape: {k}: expected {list(e)}, found {list(f)}"
                  for k, e, f in self.mismatched]
        lines += [f"  adapted: {a}" for a in self.adapted]
        if self.dropped:
            lines.append(f"  dropped {len(self.dropped)} keys: {', '.join(self.dropped[:8])}"
                         + (", ..." if len(self.dropped) > 8 else ""))
        return "\n".join(lines)


class ConversionError(ValueError):
    """A state dict does not fit the architecture; ``.report`` holds every problem."""

    def __init__(self, report: ConversionReport, hint: str = ""):
        self.report = report
        super().__init__(f"state dict does not fit {report}" + (f"\n{hint}" if hint else ""))


def first_layer_hints(key: str, expected: tuple, found: tuple, patch: bool) -> list[str]:
    """Causes of a first-layer (O, I, kh, kw) mismatch, each named: kernel (patch) size, output
    width, input channels."""
    if len(found) != 4 or len(expected) != 4:
        return [f"{key} is {list(found)}, expected a (out, in, kh, kw) weight like {list(expected)}"]
    hints = []
    if found[2:] != expected[2:]:
        if patch:
            hints.append(f"the checkpoint's patch size is {found[2]}x{found[3]} ({key} "
                         f"{list(found)}), the model's {expected[2]}x{expected[3]}: pass "
                         f"patch_size={found[2]} or pick the model name of that patch size")
        else:
            hints.append(f"the checkpoint's first convolution is {found[2]}x{found[3]}, the "
                         f"model's {expected[2]}x{expected[3]}: another architecture")
    if found[0] != expected[0]:
        hints.append(f"the checkpoint's first layer has {found[0]} outputs, the model's "
                     f"{expected[0]}: another model size (embed_dim / model name)")
    if found[1] != expected[1]:
        hints.append(f"the checkpoint takes {found[1]} input channels, the model {expected[1]}: "
                     'pass in_chans=, or first_layer="reinit" or "repeat" to adapt the first layer')
    return hints
