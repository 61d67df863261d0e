"""Passband registry: named bands and band sets.

A :class:`BandSet` is an ordered tuple of :class:`Passband`. The order is the
order of the emulator's outputs and of the catalogue's magnitude columns. The
first band of a set is the reference band of the colour transform (Eq. 5 of
Green et al. 2021): colours are X - band[0].

The Green et al. (2021) set is registered as ``"green2020"``. Users register
their own with :func:`register_bandset`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

__all__ = [
    "Passband",
    "BandSet",
    "UnknownBandError",
    "GREEN2020",
    "register_bandset",
    "get_bandset",
    "list_bandsets",
]


class UnknownBandError(KeyError):
    """A band or band-set name that is not registered."""

    def __str__(self) -> str:  # KeyError quotes its message; keep it readable
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class Passband:
    """One photometric passband.

    name: short unique name used as column/band key (e.g. ``"gaia_g"``).
    survey: survey / instrument (e.g. ``"Gaia DR2"``).
    system: magnitude system, ``"Vega"`` or ``"AB"``.
    aliases: other accepted spellings (case-insensitive), e.g. ``("G",)``.
    note: free text (conversions applied, release, ...).
    """

    name: str
    survey: str
    system: str
    aliases: tuple[str, ...] = ()
    note: str = ""

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "survey": self.survey,
            "system": self.system,
            "aliases": list(self.aliases),
            "note": self.note,
        }

    @classmethod
    def from_dict(cls, d: dict) -> "Passband":
        return cls(
            name=d["name"],
            survey=d.get("survey", ""),
            system=d.get("system", ""),
            aliases=tuple(d.get("aliases", ())),
            note=d.get("note", ""),
        )


@dataclass(frozen=True)
class BandSet:
    """An ordered set of passbands (the emulator's output order)."""

    name: str
    bands: tuple[Passband, ...]

    def __post_init__(self):
        names = [b.name for b in self.bands]
        if len(set(n.lower() for n in names)) != len(names):
            raise ValueError(f"band set {self.name!r} has duplicate band names: {names}")
        if not self.bands:
            raise ValueError(f"band set {self.name!r} is empty")

    def __len__(self) -> int:
        return len(self.bands)

    def __iter__(self):
        return iter(self.bands)

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)

    def index(self, name: str) -> int:
        """Index of a band by name or alias: an exact match first, then one ignoring case if only
        one band matches that way (Green2020's "g" is PS1 g and "G" Gaia G; "gaia_G" or "ks" are
        unique ignoring case); a name that several bands match ignoring case is refused."""
        key = name.strip()
        for i, b in enumerate(self.bands):
            if key == b.name or key in b.aliases:
                return i
        low = key.lower()
        hits = [i for i, b in enumerate(self.bands) if low == b.name.lower() or low in (a.lower() for a in b.aliases)]
        if len(hits) == 1:
            return hits[0]
        if hits:
            raise UnknownBandError(
                f"ambiguous band {name!r} for band set {self.name!r}: ignoring case it names "
                f"{' and '.join(self.names[i] for i in hits)}; use the band's name or an alias with its case"
            )
        raise UnknownBandError(
            f"unknown band {name!r} for band set {self.name!r}; "
            f"known bands: {', '.join(self.names)}"
        )

    def resolve(self, names: Iterable[str]) -> list[int]:
        """Indices for several band names; the error lists every unknown name."""
        out, unknown = [], []
        for n in names:
            try:
                out.append(self.index(n))
            except UnknownBandError:
                unknown.append(n)
        if unknown:
            raise UnknownBandError(
                f"unknown band name(s) {unknown} for band set {self.name!r}; "
                f"known bands: {', '.join(self.names)}"
            )
        return out

    def to_dict(self) -> dict:
        return {"name": self.name, "bands": [b.to_dict() for b in self.bands]}

    @classmethod
    def from_dict(cls, d: dict) -> "BandSet":
        return cls(name=d["name"], bands=tuple(Passband.from_dict(b) for b in d["bands"]))


def _green2020() -> BandSet:
    g = "Gaia DR2"
    ps1 = "Pan-STARRS1"
    tm = "2MASS"
    uw = "unWISE"
    return BandSet(
        "green2020",
        (
            Passband("gaia_g", g, "Vega", ("G", "phot_g_mean_mag")),
            Passband("gaia_bp", g, "Vega", ("BP", "phot_bp_mean_mag")),
            Passband("gaia_rp", g, "Vega", ("RP", "phot_rp_mean_mag")),
            Passband("ps1_g", ps1, "AB", ("g",)),
            Passband("ps1_r", ps1, "AB", ("r",)),
            Passband("ps1_i", ps1, "AB", ("i",)),
            Passband("ps1_z", ps1, "AB", ("z",)),
            Passband("ps1_y", ps1, "AB", ("y",)),
            Passband("2mass_j", tm, "Vega", ("J",)),
            Passband("2mass_h", tm, "Vega", ("H",)),
            Passband("2mass_ks", tm, "Vega", ("Ks", "K")),
            Passband("unwise_w1", uw, "AB", ("W1",), "Vega->AB: +2.699 mag"),
            Passband("unwise_w2", uw, "AB", ("W2",), "Vega->AB: +3.339 mag"),
        ),
    )


GREEN2020 = _green2020()

_REGISTRY: dict[str, BandSet] = {GREEN2020.name: GREEN2020}


def register_bandset(name: str, bands: Sequence[Passband | dict], *, overwrite: bool = False) -> BandSet:
    """Register a user-defined band set; returns it."""
    key = name.lower()
    if key in _REGISTRY and not overwrite:
        raise ValueError(f"band set {name!r} already registered (pass overwrite=True)")
    bs = BandSet(name, tuple(b if isinstance(b, Passband) else Passband.from_dict(b) for b in bands))
    _REGISTRY[key] = bs
    return bs


def get_bandset(name: str | BandSet) -> BandSet:
    """Look up a registered band set by name (a BandSet is returned unchanged)."""
    if isinstance(name, BandSet):
        return name
    try:
        return _REGISTRY[name.lower()]
    except KeyError:
        raise UnknownBandError(
            f"unknown band set {name!r}; registered: {', '.join(sorted(_REGISTRY))}"
        ) from None


def list_bandsets() -> list[str]:
    return sorted(_REGISTRY)
