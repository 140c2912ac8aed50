"""Files the docs promise: the repository's config/providers.yaml is the shaping the package ships."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_config_providers_yaml_is_the_shipped_shaping():
    assert (REPO / "config" / "providers.yaml").read_bytes() == (REPO / "mtad" / "config" / "providers.yaml").read_bytes()
