"""The bake steps' pieces that need no lab: the bake cache's key."""

from deploylib.steps import bake


def test_the_bake_cache_key_is_the_base_image_and_the_provision_script():
    key = bake.foundation_key("ami-1", "apt-get install curl")
    assert key == bake.foundation_key("ami-1", "apt-get install curl") and len(key) == 32
    assert key != bake.foundation_key("ami-2", "apt-get install curl")
    assert key != bake.foundation_key("ami-1", "apt-get install curl jq")
