"""The stated limits: one line above the limit, adjustable by their variable, documented in the README."""

from pathlib import Path

import pytest

from naslora_deploy.common.errors import NasloraError
from naslora_deploy.common.limits import LIMITS, TILE_WINDOWS

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()


@pytest.mark.parametrize("limit", LIMITS.values(), ids=lambda limit: limit.name)
def test_every_limit_is_in_the_readme_with_its_variable_and_default(limit):
    rows = [line for line in README.splitlines() if f"`{limit.env}`" in line]
    assert rows, f"README.md's Limits table has no row for {limit.env}"
    assert f"{limit.default:,}" in rows[0] or f"{limit.default}" in rows[0], rows[0]


def test_a_limit_refuses_above_and_accepts_at_its_value(monkeypatch):
    monkeypatch.delenv(TILE_WINDOWS.env, raising=False)
    TILE_WINDOWS.check(TILE_WINDOWS.default, "scene.tif")
    with pytest.raises(NasloraError) as refused:
        TILE_WINDOWS.check(TILE_WINDOWS.default + 1, "scene.tif", "give a larger tile")
    message = str(refused.value)
    assert message.startswith("scene.tif: 16,385 tiling windows for one image, above the limit of 16,384")
    assert "give a larger tile" in message and TILE_WINDOWS.env in message and "\n" not in message
    monkeypatch.setenv(TILE_WINDOWS.env, "20_000")
    TILE_WINDOWS.check(20_000, "scene.tif")


@pytest.mark.parametrize("text", ["0", "-5", "lots", "1e9"])
def test_a_bad_variable_is_one_line_naming_it(monkeypatch, text):
    monkeypatch.setenv(TILE_WINDOWS.env, text)
    with pytest.raises(NasloraError, match=f"environment variable {TILE_WINDOWS.env}="):
        TILE_WINDOWS.value
