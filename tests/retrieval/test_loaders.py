"""Loaders: each file type in, text (and pages) out; bad files give errors naming the file."""

from __future__ import annotations

import pytest

from retrieval.errors import (
    DocumentTooLargeError,
    EmptyDocumentError,
    NoTextLayerError,
    UnreadableFileError,
    UnsupportedFileError,
)
from retrieval.loaders import load_bytes, load_file
from tests.retrieval.pdfs import pdf_bytes


def test_plain_text_keeps_the_text_and_normalises_line_endings(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_bytes("Caf\u00e9 menu.\r\nSecond line.\r\n".encode())
    doc = load_file(path)
    assert (doc.kind, doc.text, doc.page_starts) == ("text", "Caf\u00e9 menu.\nSecond line.\n", [])


def test_text_in_a_legacy_encoding_is_detected(tmp_path):
    path = tmp_path / "old.txt"
    path.write_bytes("Le caf\u00e9 est tr\u00e8s bon, \u00e0 bient\u00f4t ! ".encode("cp1252") * 20)
    assert "caf\u00e9" in load_file(path).text


def test_markdown_stays_markdown_and_its_first_heading_is_the_title(tmp_path):
    path = tmp_path / "guide.md"
    path.write_text("# Install guide\n\nRun `pip install x`.\n\n## Usage\n\n| a | b |\n|---|---|\n")
    doc = load_file(path)
    assert doc.kind == "markdown" and doc.title == "Install guide"
    assert "| a | b |" in doc.text


def test_html_drops_scripts_and_breaks_paragraphs_but_not_sentences(tmp_path):
    html = (
        "<html><head><title>Shop</title><style>p{}</style></head><body>"
        "<script>alert('x')</script><h1>Opening hours</h1>"
        "<p>We open at <b>nine</b> and close at <a href='#'>five</a>.</p><p>Closed on Sunday.</p>"
        "<table><tr><td>Mon</td><td>9-5</td></tr></table></body></html>"
    )
    path = tmp_path / "page.html"
    path.write_text(html)
    doc = load_file(path)
    assert doc.title == "Shop"
    assert "alert" not in doc.text and "p{}" not in doc.text
    assert "We open at nine and close at five." in doc.text
    assert "Opening hours\n\nWe open" in doc.text
    assert "Mon | 9-5" in doc.text


def test_pdf_text_keeps_page_numbers(tmp_path):
    path = tmp_path / "report.pdf"
    path.write_bytes(pdf_bytes(["Revenue grew in spring.", "Costs fell in autumn."], title="Q3"))
    doc = load_file(path)
    assert doc.kind == "pdf" and doc.title == "Q3"
    assert len(doc.page_starts) == 2
    assert doc.page_at(doc.text.index("Revenue")) == 1
    assert doc.page_at(doc.text.index("Costs")) == 2


def test_pdf_without_a_text_layer_is_reported_not_ingested_empty(tmp_path):
    path = tmp_path / "scan.pdf"
    path.write_bytes(pdf_bytes([None, None, None]))
    with pytest.raises(NoTextLayerError, match=r"scan\.pdf.*no text layer \(3 page"):
        load_file(path)


def test_broken_pdf_is_unreadable(tmp_path):
    path = tmp_path / "broken.pdf"
    path.write_bytes(b"%PDF-1.4\nthis is not really a pdf\n")
    with pytest.raises((UnreadableFileError, EmptyDocumentError), match="broken.pdf"):
        load_file(path)


def test_content_type_wins_over_the_extension():
    doc = load_bytes(
        b"<p>Hello <i>there</i></p>", "upload.bin", content_type="text/html; charset=utf-8"
    )
    assert (doc.kind, doc.text) == ("html", "Hello there")


def test_pdf_is_recognised_by_its_bytes_without_an_extension():
    assert load_bytes(pdf_bytes(["Sniffed."]), "upload").kind == "pdf"


@pytest.mark.parametrize(
    ("name", "content", "error", "message"),
    [
        ("empty.txt", b"", EmptyDocumentError, "empty.txt: the file is empty"),
        ("blank.md", b"  \n\n ", EmptyDocumentError, "blank.md: the file is empty"),
        (
            "nothing.html",
            b"<html><script>x()</script></html>",
            EmptyDocumentError,
            "nothing.html: no text",
        ),
        (
            "image.png",
            b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR",
            UnsupportedFileError,
            "image.png: unsupported",
        ),
    ],
)
def test_bad_files_get_an_error_naming_them(tmp_path, name, content, error, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(error, match=message.replace(".", r"\.")):
        load_file(path)


def test_missing_file_folder_and_oversized_file(tmp_path):
    with pytest.raises(UnreadableFileError, match="nope.txt: does not exist"):
        load_file(tmp_path / "nope.txt")
    with pytest.raises(UnreadableFileError, match="is a directory"):
        load_file(tmp_path)
    big = tmp_path / "big.txt"
    big.write_text("word " * 300)
    with pytest.raises(
        DocumentTooLargeError, match="big.txt: 1,500 bytes is over the limit of 1,000"
    ):
        load_file(big, max_bytes=1000)


def test_errors_are_user_errors():
    assert NoTextLayerError.user_error is True and EmptyDocumentError.user_error is True
