"""The hardware-profile loader refuses malformed or inconsistent profiles, naming the field."""

from __future__ import annotations

import pytest
import yaml

from simulator.errors import ConfigError
from simulator.hardware import available_profiles, load_profile


def _write(tmp_path, mutate):
    data = yaml.safe_load(available_profiles()["h100-sxm-80gb"].read_text())  # datasheet-only
    mutate(data)
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_shipped_profiles_say_what_is_measured():
    h100 = load_profile("h100-sxm-80gb")
    assert h100.provenance.status == "datasheet" and not h100.calibrated
    a100 = load_profile("a100-sxm-80gb")
    assert a100.provenance.status == "fitted" and a100.calibrated
    assert a100.provenance.measured is not None and a100.provenance.measured.host == "published measurements"
    assert any("Vidur" in s for s in a100.provenance.sources)
    for p in (h100, a100):
        assert len(p.sha256) == 64


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (
            lambda d: d["device"].__setitem__("memory_bandwidth_gb_per_s", -1),
            r"device\.memory_bandwidth_gb_per_s.*greater than 0",
        ),
        (lambda d: d["device"].pop("memory_gib"), r"device\.memory_gib: required key is missing"),
        (
            lambda d: d["device"].__setitem__("memory_gb", 80),
            r"device\.memory_gb: unknown key; did you mean 'memory_gib'",
        ),
        (lambda d: d["device"]["peak_tflops"].__setitem__("bf16", 0), r"peak_tflops\.bf16 must be > 0"),
        (lambda d: d["device"].__setitem__("power_idle_w", 900), r"power_idle_w \(900"),
        (lambda d: d["efficiency"]["compute"].pop("default"), r"needs a 'default' entry"),
        (lambda d: d["efficiency"]["memory"].__setitem__("default", 1.5), r"must be in \(0, 1\]"),
        (lambda d: d["provenance"].__setitem__("status", "measured"), r"requires a 'measured' section"),
        (
            lambda d: d["node"]["intra_node"].__setitem__("bandwidth_gb_per_s", "fast"),
            r"intra_node\.bandwidth_gb_per_s",
        ),
        (lambda d: d.__setitem__("format", "v2"), r"format"),
    ],
)
def test_malformed_profile_is_refused_naming_file_and_field(tmp_path, mutate, match):
    path = _write(tmp_path, mutate)
    with pytest.raises(ConfigError, match=match) as err:
        load_profile(path)
    assert str(path) in str(err.value)


def test_unknown_profile_name_suggests():
    with pytest.raises(ConfigError, match="did you mean 'h100-sxm-80gb'"):
        load_profile("h100-sxm-80")


def test_not_yaml(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("device: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_profile(path)
