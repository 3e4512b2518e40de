"""The manifest file: its schema is checked on every read, and concurrent writers lose no entry."""

import json
import threading
from dataclasses import replace

import pytest

from conftest import write_tiny_zoo
from dsnet.zoo import loader as zoo
from dsnet.zoo.manifest import (
    MANIFEST_PATH,
    PROTOCOLS,
    SCHEMA,
    LabelSet,
    ManifestError,
    Metrics,
    Preprocessing,
    class_names,
    label_set_for,
    load_manifest,
    protocol,
    write_entry,
)


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
        except Exception as e:
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


def test_class_names_read_every_label_set_and_a_new_set_takes_the_known_names(tmp_path):
    path = write_tiny_zoo(tmp_path)
    manifest = load_manifest(path)
    names = manifest.class_names()
    assert names["n03445777"] == "golf ball" and names["n01440764"] == "tench" and len(names) == 1000
    assert class_names([LabelSet(["n1", "n2"], ["a", "b"]), LabelSet(["n2"], ["B"])]) == {"n1": "a", "n2": "B"}
    added = label_set_for(["n03445777", "n99999999"], path, "two")
    assert load_manifest(path).label_sets[added].names == ["golf ball", "n99999999"]  # unknown: the wnid


def test_an_unknown_class_is_quoted_short_with_the_close_names():
    labels = LabelSet(["n1", "n2", "n3"], ["golf ball", "golfcart", "tench"])
    assert labels.index("golf b") == 0 and labels.index("N3") == 2 and labels.index(" 1 ") == 1
    with pytest.raises(ValueError, match=r"^unknown class 'golf' .* did you mean: golf ball, golfcart\?$"):
        labels.index("golf")
    with pytest.raises(ValueError) as err:
        labels.index("z" * 100_000)
    assert repr("z" * 99 + "…") in str(err.value) and len(str(err.value)) < 200


def test_a_metric_names_what_it_was_measured_on_and_how():
    pre = Preprocessing(resize=183, crop=160)
    assert protocol("app", pre) == (
        "the app's preprocessing: PIL bilinear resize of the shorter side to 183 px, centre crop 160 px"
    )
    assert set(PROTOCOLS) == {"app", "export"}
    m = Metrics("imagenette/val", 3791, 85.54, 98.26, protocol("export", pre))
    assert m.measurement() == (
        "imagenette/val (3791 images); export's preprocessing: torchvision antialiased "
        "resize of the shorter side to 183 px, centre crop 160 px"
    )
    assert Metrics("x/val", 4, 1.0, 2.0).measurement() == "x/val (4 images); preprocessing not recorded"
    shipped = load_manifest(MANIFEST_PATH)
    for shipped_zoo in shipped.zoos.values():
        for entry in shipped_zoo.entries.values():
            assert all(m.protocol for m in entry.metrics), f"{shipped_zoo.name}/{entry.name}: no protocol"
    for entry in shipped.zoo("imagenette").entries.values():  # measured as export measures, at the zoo's size
        assert entry.metrics[0].protocol == protocol("export", entry.preprocessing)
