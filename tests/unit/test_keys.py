from mtad.base.keys import derive


def test_purpose_keys_are_stable_and_independent():
    assert derive("key-abc", "tracking") == derive(b"key-abc", "tracking")
    assert derive("key-abc", "tracking") != derive("key-abc", "return-path")
    assert derive("key-abc", "tracking") != derive("key-abd", "tracking")
    assert len(derive("k", "x")) == 32
