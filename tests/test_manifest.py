"""The manifest file: its schema is checked on every read, and concurrent writers lose no entry."""
import json
import threading
from dataclasses import replace

import pytest

from dsnet.zoo import loader as zoo
from dsnet.zoo.manifest import SCHEMA, ManifestError, label_set_for, load_manifest, write_entry

from conftest import write_tiny_zoo


@pytest.mark.parametrize("schema", [None, 2, "1"])
def test_a_manifest_of_another_or_no_schema_is_refused_naming_file_and_version(tmp_path, monkeypatch, schema):
    path = write_tiny_zoo(tmp_path)
    assert SCHEMA == 1 and load_manifest(path).zoo("tiny")
    raw = json.loads(path.read_text())
    raw.pop("schema") if schema is None else raw.update(schema=schema)
    path.write_text(json.dumps(raw))
    found = 'has no "schema" field' if schema is None else f"has schema {schema!r}"
    message = f"{path} {found}; this version of dsnet reads manifest schema 1 only"
    with pytest.raises(ManifestError) as err:
        load_manifest(path)
    assert str(err.value) == message
    monkeypatch.setenv("DSNET_MANIFEST", str(path))
    with pytest.raises(ManifestError, match="reads manifest schema 1 only"):
        zoo.ModelZoo().load("tiny", "dsnet50", "cpu")
    entry = replace(load_manifest(write_tiny_zoo(tmp_path / "other")).entry("tiny", "dsnet50"), name="copy")
    with pytest.raises(ManifestError):  # nor written: an entry of schema 1 in a file of another schema
        write_entry("tiny", entry, path)
    assert json.loads(path.read_text()) == raw


def test_concurrent_writers_lose_no_entry(tmp_path):
    """Parallel trainings export into one manifest: each read-modify-write holds the file lock."""
    path = write_tiny_zoo(tmp_path)
    base = load_manifest(path).entry("tiny", "dsnet50")
    writers, each = 8, 5
    start = threading.Barrier(writers)
    errors = []

    def writer(i: int) -> None:
        try:
            start.wait()
            for j in range(each):
                write_entry(f"zoo{i % 2}", replace(base, name=f"m{i}_{j}"), path)
                label_set_for([f"n{i:08d}"], path, f"w{i}")
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)
    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors
    manifest = load_manifest(path)
    names = {m for z in ("zoo0", "zoo1") for m in manifest.zoo(z).entries}
    assert names == {f"m{i}_{j}" for i in range(writers) for j in range(each)}
    assert {f"w{i}1" for i in range(writers)} <= set(manifest.label_sets)
