"""The one content-hash helper: SHA-256 of a file streamed in chunks, and of several texts in order."""

import hashlib

from maskpolicy.tasks import hashing
from maskpolicy.tasks.hashing import file_sha256, texts_sha256


def test_a_file_hash_is_sha256_of_its_bytes_across_chunk_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr(hashing, "CHUNK", 7)  # several chunks, the last one short
    data = bytes(range(256)) * 3
    (tmp_path / "weights.bin").write_bytes(data)
    assert file_sha256(tmp_path / "weights.bin") == hashlib.sha256(data).hexdigest()


def test_texts_hash_in_order_and_keep_their_boundaries():
    assert texts_sha256(["ab", "c"]) == hashlib.sha256(b"ab\0c\0").hexdigest()
    assert texts_sha256(["ab", "c"]) != texts_sha256(["a", "bc"])
    assert texts_sha256(["ab", "c"]) != texts_sha256(["c", "ab"])
    assert texts_sha256(iter(["ab", "c"])) == texts_sha256(("ab", "c"))
