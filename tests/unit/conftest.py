"""Shared fixtures of the unit tests."""
import pytest


@pytest.fixture
def fake_cpu_profile(monkeypatch):
    """fake_cpu_profile(**fields): price with the ``cpu`` device profile's fields replaced
    (software overheads in seconds, cores); other devices untouched. Returns the real getter."""
    import dataclasses

    from parsim import hardware
    from parsim.costs import network
    real = hardware.get_device

    def install(**fields):
        def fake(name):
            d = real(name)
            return dataclasses.replace(d, **fields) if d.kind == "cpu" else d
        monkeypatch.setattr(hardware, "get_device", fake)
        network._coeffs_cached.cache_clear()
        return real
    return install
