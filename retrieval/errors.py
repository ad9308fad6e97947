"""Errors the user can fix (bad files, unknown ids, wrong settings).

Every class here has `user_error = True`: the CLI prints the message as one line and exits 2, the
API answers 4xx with it (docs/CONTRACTS.md). Messages name the file or id they are about.
"""

from __future__ import annotations


class RetrievalError(Exception):
    """Base class for retrieval errors caused by input the user controls."""

    user_error = True


class UnreadableFileError(RetrievalError):
    """The file does not exist, is not a regular file, cannot be read or cannot be parsed."""


class UnsupportedFileError(RetrievalError):
    """The file's type is not one we load (binary data that is not a PDF)."""


class EmptyDocumentError(RetrievalError):
    """The file (or text) holds no text after extraction."""


class DocumentTooLargeError(RetrievalError):
    """The file is over the configured size limit."""


class NoTextLayerError(RetrievalError):
    """A PDF whose pages carry no extractable text (a scan): it needs OCR first."""


class UnknownDocumentError(RetrievalError, KeyError):
    """No document with that id in the store."""

    def __str__(self) -> str:  # KeyError would print the repr of the message
        return str(self.args[0]) if self.args else "unknown document"


class StoreConfigError(RetrievalError):
    """The store on disk was built with other settings (embedder, dimension) than requested."""


class InvalidQueryError(RetrievalError):
    """A search request that cannot be answered (empty query, bad mode or k)."""
