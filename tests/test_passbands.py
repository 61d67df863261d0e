"""Passband registry: Green2020 set, aliases, user-defined band sets, clear errors."""

import pytest

from dds_infer.passbands import (
    GREEN2020,
    BandSet,
    Passband,
    UnknownBandError,
    get_bandset,
    list_bandsets,
    register_bandset,
)


def test_green2020_set():
    assert len(GREEN2020) == 13
    assert GREEN2020.names[0] == "gaia_g"  # reference band of the colour transform
    assert [b.survey for b in GREEN2020][:3] == ["Gaia DR2"] * 3
    assert GREEN2020.bands[11].system == "AB" and "2.699" in GREEN2020.bands[11].note
    assert GREEN2020.index("Ks") == GREEN2020.index("2mass_ks") == 10
    assert GREEN2020.resolve(["G", "bp", "W2"]) == [0, 1, 12]
    # "G" (Gaia) and "g" (PS1) differ only in case: each is its own band, never the other
    assert GREEN2020.index("G") == 0 and GREEN2020.index("g") == GREEN2020.index("ps1_g") == 3
    assert GREEN2020.index("GAIA_G") == 0 and GREEN2020.index("k") == 10  # unique ignoring case
    bs = BandSet("case_test", (Passband("one", "s", "AB", ("Ab",)), Passband("two", "s", "AB", ("aB",))))
    assert bs.index("Ab") == 0 and bs.index("aB") == 1
    with pytest.raises(UnknownBandError, match="ambiguous band 'ab'.*one and two"):
        bs.index("ab")
    assert get_bandset("green2020") is GREEN2020


def test_unknown_band_names_listed():
    with pytest.raises(UnknownBandError) as exc:
        GREEN2020.resolve(["G", "u_sdss", "Kp"])
    msg = str(exc.value)
    assert "u_sdss" in msg and "Kp" in msg and "gaia_g" in msg
    with pytest.raises(UnknownBandError, match="unknown band set 'nope'"):
        get_bandset("nope")


def test_user_defined_bandset_round_trip():
    bs = register_bandset("test_sdss_2mass", [
        Passband("sdss_r", "SDSS", "AB", ("r",)),
        {"name": "sdss_g", "survey": "SDSS", "system": "AB"},
        Passband("2mass_j", "2MASS", "Vega"),
    ], overwrite=True)
    assert "test_sdss_2mass" in list_bandsets()
    assert BandSet.from_dict(bs.to_dict()) == bs
    assert bs.index("R") == 0
    with pytest.raises(ValueError, match="already registered"):
        register_bandset("test_sdss_2mass", [Passband("x", "y", "AB")])
    with pytest.raises(ValueError, match="duplicate"):
        BandSet("dup", (Passband("a", "s", "AB"), Passband("A", "s", "AB")))
