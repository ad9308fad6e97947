"""A chunk cut from the middle of a section still says where it is: the headings above it are
embedded and indexed with it (retrieval/headings.py), while its text and span stay the document's."""

from __future__ import annotations

from retrieval.headings import outline, section_path

MAN_PAGE = """TAR(1)                  GNU TAR Manual                  TAR(1)

NAME
       tar - an archiving utility

OPTIONS
   Overwrite control
       -k, --keep-old-files
              Don't replace existing files when extracting, treat them as
              errors.

       --overwrite
              Overwrite existing files when extracting.
"""

PYDOC = """CLASSES
    class Path(PurePath)
     |  absolute(self)
     |      Return an absolute version of this path by prepending the current
     |      working directory.
"""

LICENSE = """Preamble

The licenses for most software are designed to take away your freedom
to share and change the works.

  11. Patents.

  A contributor's "essential patent claims" are all patent claims owned
by the contributor.
"""


def test_a_man_page_option_text_sits_under_its_option_and_section():
    doc = outline(MAN_PAGE, "tar")
    start = MAN_PAGE.index("Don't replace")
    assert section_path(doc, start) == ["tar", "OPTIONS", "Overwrite control", "-k, --keep-old-files"]


def test_pydoc_gutter_counts_as_indentation():
    doc = outline(PYDOC, "pathlib")
    start = PYDOC.index("Return an absolute")
    assert section_path(doc, start) == ["pathlib", "CLASSES", "class Path(PurePath)", "absolute(self)"]


def test_a_flat_text_uses_the_nearest_standalone_heading():
    doc = outline(LICENSE, "GPL-3")
    assert section_path(doc, LICENSE.index("A contributor's")) == ["GPL-3", "11. Patents."]
    assert section_path(doc, LICENSE.index("The licenses")) == ["GPL-3", "Preamble"]


def test_stored_chunks_carry_their_heading_and_keep_their_exact_text(make_store):
    store = make_store(chunk_tokens=16, overlap_tokens=0)  # the description is a chunk of its own
    info = store.add_text(MAN_PAGE, "tar.txt")
    hits = store.search("keep-old-files", k=10, mode="lexical")
    described = [h for h in hits if h.text.startswith("Don't replace")]
    assert described, f"the chunk describing -k was not found by its option name: {hits}"
    hit = described[0]
    assert hit.context == "tar > OPTIONS > Overwrite control > -k, --keep-old-files", hit.context
    assert store.read(info.id, hit.start, hit.end) == hit.text


def test_headings_can_be_turned_off(make_store):
    store = make_store(chunk_tokens=16, overlap_tokens=0, headings=False)
    store.add_text(MAN_PAGE, "tar.txt")
    assert all(h.context == "" for h in store.search("existing files", k=5, mode="lexical"))
