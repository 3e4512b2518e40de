"""dsnet.data.labelled: the one reading of a wnid from an image's place, in both layouts."""

from pathlib import Path

import pytest

from dsnet.data.labelled import scan_labelled, wnid_of


@pytest.mark.parametrize(
    "path, root, wnid",
    [
        ("val/n01440764/ILSVRC2012_val_00000293.JPEG", None, "n01440764"),  # ImageFolder
        ("flat/n01440764_tench.JPEG", None, "n01440764"),  # flat
        ("flat/n01440764.JPEG", None, "n01440764"),
        ("n03445777/n01440764_tench.JPEG", None, "n03445777"),  # both: the folder, as scan_labelled reads it
        ("n03445777/n01440764_tench.JPEG", "n03445777", "n01440764"),  # ... unless the folder is the root scanned
        ("photos/golf.jpg", None, None),
        ("n0144076/n014407640_x.JPEG", None, None),  # eight digits exactly
        ("photos/n01440764tench.jpg", None, None),
    ],
)
def test_wnid_of_reads_the_folder_then_the_file_name(path, root, wnid):
    assert wnid_of(Path(path), root) == wnid
    assert wnid_of(path, root) == wnid  # a str as well


def test_scan_labelled_labels_each_image_as_wnid_of_does(tmp_path):
    for rel in ("n01440764/a.JPEG", "n02102040_b.jpg", "n03445777/n01440764_c.png", "notes.txt", "other.jpg"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    items = scan_labelled(tmp_path)
    assert [(it.path.relative_to(tmp_path).as_posix(), it.wnid) for it in items] == [
        ("n01440764/a.JPEG", "n01440764"),
        ("n02102040_b.jpg", "n02102040"),
        ("n03445777/n01440764_c.png", "n03445777"),
    ]
    assert all(it.wnid == wnid_of(it.path, tmp_path) for it in items)
    (tmp_path / "unlabelled").mkdir()
    (tmp_path / "unlabelled" / "golf.jpg").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no labelled images"):
        scan_labelled(tmp_path / "unlabelled")
