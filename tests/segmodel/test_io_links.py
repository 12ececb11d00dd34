"""Symbolic links under a local input: followed inside it, counted and skipped outside it."""

import os
import shutil

import pytest

from segmodel.api import read_table, run
from segmodel.pipeline.config import configure
from segmodel.pipeline.options import RunOptions
from segmodel.pipeline.plan import plan_run
from segmodel.storage.io import Store, _fingerprint, describe_skipped, scan_images

SMALL = ["fluor-3bfd6bb1.png", "fluor-62570c4f.png", "histo-b909aa8f.png"]


@pytest.fixture
def tree(tmp_path, samples):
    """``in/plate/<image>`` (a real sample image) and ``elsewhere/`` beside ``in/``, holding
    two more sample images and a text file named like an image."""
    by_name = {p.name: p for p, _ in samples}
    (tmp_path / "in" / "plate").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    shutil.copy(by_name[SMALL[0]], tmp_path / "in" / "plate" / SMALL[0])
    for name in SMALL[1:]:
        shutil.copy(by_name[name], tmp_path / "elsewhere" / name)
    (tmp_path / "elsewhere" / "secret.png").write_text("TOP-SECRET-TOKEN-4711")
    return tmp_path


def _ids(listing):
    return [r.image_id for r in listing.refs]


def test_links_inside_the_input_list_each_image_once_and_loops_end(tree):
    src = tree / "in"
    (src / "latest").symlink_to("plate")  # a second way to the same folder
    (src / "plate" / "up").symlink_to("..")  # a loop
    (src / "cover.png").symlink_to(f"plate/{SMALL[0]}")  # a file link inside: an image of its own
    listing = scan_images(Store(str(src)))
    assert _ids(listing) == ["cover.png", f"plate/{SMALL[0]}"]
    assert listing.skipped == {"repeat": 2}
    cover, real = listing.refs
    assert (cover.size, cover.fingerprint) == (real.size, real.fingerprint)  # the target's


def test_an_input_reached_through_links_is_listed_as_its_real_folder(tree):
    (tree / "link-to-in").symlink_to("in")
    (tree / "in" / "more").symlink_to(tree / "in" / "plate")
    listing = scan_images(Store(str(tree / "link-to-in" / "more")))
    assert _ids(listing) == [SMALL[0]] and listing.skipped == {}


def test_plain_files_keep_the_fingerprints_of_earlier_listings(tree):
    """A rerun after an upgrade must find its images done: fsspec's own listing's prints."""
    store = Store(str(tree / "in"))
    earlier = {path: _fingerprint(info)
               for path, info in store.fs.find(store.root, detail=True).items()}
    assert {r.path: r.fingerprint for r in scan_images(store).refs} == earlier


def test_links_leading_outside_the_input_are_skipped_and_counted(tree):
    src = tree / "in"
    (src / "ext.png").symlink_to(tree / "elsewhere" / SMALL[1])
    (src / "batch2").symlink_to(tree / "elsewhere")
    (src / "gone.png").symlink_to(tree / "nowhere.png")
    listing = scan_images(Store(str(src)))
    assert _ids(listing) == [f"plate/{SMALL[0]}"]
    assert listing.skipped == {"outside": 2, "broken": 1}
    assert describe_skipped(listing.skipped) == (
        "skipped under the input: 2 links leading outside the input "
        "(--follow-external-links follows them), 1 broken link.")


def test_follow_external_links_reads_them_with_their_targets_fingerprints(tree):
    src = tree / "in"
    (src / "ext.png").symlink_to(tree / "elsewhere" / SMALL[1])
    (src / "batch2").symlink_to(tree / "elsewhere")
    listing = scan_images(Store(str(src)), follow_external_links=True)
    assert _ids(listing) == ["batch2/" + SMALL[1], "batch2/" + SMALL[2], "batch2/secret.png",
                             "ext.png", f"plate/{SMALL[0]}"]
    ext = listing.refs[3]
    assert ext.size == (tree / "elsewhere" / SMALL[1]).stat().st_size
    before = ext.fingerprint
    os.utime(tree / "elsewhere" / SMALL[1], ns=(1, 1))  # the target changes, the link does not
    after = scan_images(Store(str(src)), follow_external_links=True).refs[3].fingerprint
    assert after != before


def test_the_plan_counts_the_links_it_skipped(tree, tmp_path):
    (tree / "in" / "batch2").symlink_to(tree / "elsewhere")
    config, _ = configure(RunOptions(input=str(tree / "in"), output=str(tmp_path / "out")))
    plan = plan_run(config, "stamp")
    assert (plan.found, plan.not_listed) == (1, {"outside": 1})


def test_an_input_of_only_outside_links_says_so_instead_of_blaming_the_patterns(tree):
    src = tree / "only-links"
    src.mkdir()
    (src / "batch2").symlink_to(tree / "elsewhere")
    with pytest.raises(FileNotFoundError) as err:
        run(str(src), str(tree / "out"))
    message = str(err.value)
    assert "1 link leading outside the input (--follow-external-links follows them)" in message
    assert "--pattern" not in message


def test_a_file_link_to_outside_is_never_read_and_its_bytes_never_quoted(tree):
    src = tree / "in"
    (src / "leak.png").symlink_to(tree / "elsewhere" / "secret.png")
    summary = run(str(src), str(tree / "out"))
    assert (summary["images"], summary["failed"], summary["not_listed"]) == (1, 0, {"outside": 1})
    assert read_table(str(tree / "out"), "failures").empty
    for path in (tree / "out").rglob("*"):
        assert not path.is_file() or b"TOP-SECRET" not in path.read_bytes(), path
