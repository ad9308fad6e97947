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
    # the description is a chunk of its own (cut mid-entry: sections off, as for an over-long entry)
    store = make_store(chunk_tokens=16, overlap_tokens=0, sections=False)
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


def test_sections_start_at_every_line_that_encloses_another():
    from retrieval.headings import section_starts

    starts = {MAN_PAGE[s : MAN_PAGE.index("\n", s)] for s in section_starts(outline(MAN_PAGE, "tar"))}
    assert {"-k, --keep-old-files", "--overwrite", "OPTIONS", "Overwrite control", "NAME"} <= starts
    assert not any(line.startswith(("Don't", "errors.", "tar - ")) for line in starts), starts
    pydoc = {PYDOC[s : PYDOC.index("\n", s)] for s in section_starts(outline(PYDOC, "pathlib"))}
    assert "absolute(self)" in pydoc, "a section starts after pydoc's gutter, at the entry's name"


def test_stored_chunks_of_a_reference_begin_at_its_entries(make_store):
    entries = "".join(
        f"     |  fetch{n}(url, timeout=None)\n     |      Fetch resource {n} from the url and "
        f"return its body; raise an error {n} when the server does not answer in time.\n     |  \n"
        for n in range(20)
    )
    text = "CLASSES\n    class Client(object)\n" + entries
    store = make_store(chunk_tokens=64, overlap_tokens=16, sections=True)
    info = store.add_text(text, "net.txt")
    hits = store.search("fetch resource from the url", k=50, mode="lexical")
    assert len(hits) == info.n_chunks > 3
    late = [h for h in hits if h.chunk > 0]
    assert all(h.text.startswith("fetch") for h in late), [h.text[:30] for h in late]
    assert all(h.context == "net > CLASSES > class Client(object)" for h in late), late[0].context
    plain = make_store(store.data_dir.parent / "plain", chunk_tokens=64, overlap_tokens=16, sections=False)
    plain.add_text(text, "net.txt")
    mid = [h for h in plain.search("fetch resource", k=50, mode="lexical") if h.chunk > 0 and not h.text.startswith("fetch")]
    assert mid, "the comparison is void: without sections the chunks already began at entries"
