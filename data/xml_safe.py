"""Reading XML without DTDs: annotation files never need one, and a DTD is how entity
expansion ("billion laughs") and external entities get in, so ``read_xml`` refuses any."""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from pathlib import Path
from xml.parsers import expat


class ForbiddenXMLError(ET.ParseError):
    """An XML document with a document type declaration, an entity declaration or an external
    entity reference; ``read_xml`` refuses these before anything is expanded or fetched."""


def _refuse(parser, what: str):
    """An expat handler that stops the parse with ``ForbiddenXMLError``."""

    def handler(*_args) -> None:
        raise ForbiddenXMLError(f"{what} at line {parser.CurrentLineNumber} refused")

    return handler


def parse_xml_bytes(data: bytes) -> ET.Element:
    """The root element of an XML document, read with expat configured to refuse any DTD.

    ``<!DOCTYPE`` stops the parse as soon as it is seen, before its internal subset (where
    ``<!ENTITY`` declarations live) is read; entity declarations and external entity
    references are refused as well should expat ever report one, and parameter entities are
    never parsed. Comments and processing instructions are dropped and namespace prefixes
    are kept as written (VOC annotations have none of these).

    Raises:
        ForbiddenXMLError: a DTD, entity declaration or external entity reference.
        xml.etree.ElementTree.ParseError: the document is not well-formed XML (an undeclared
            entity such as ``&x;`` is one of these).
    """
    builder = ET.TreeBuilder()
    parser = expat.ParserCreate()
    parser.buffer_text = True
    parser.SetParamEntityParsing(expat.XML_PARAM_ENTITY_PARSING_NEVER)
    parser.StartDoctypeDeclHandler = _refuse(parser, "<!DOCTYPE")
    parser.EntityDeclHandler = _refuse(parser, "<!ENTITY")
    parser.UnparsedEntityDeclHandler = _refuse(parser, "unparsed <!ENTITY")
    parser.ExternalEntityRefHandler = _refuse(parser, "external entity reference")
    parser.StartElementHandler = builder.start
    parser.EndElementHandler = builder.end
    parser.CharacterDataHandler = builder.data
    try:
        parser.Parse(data, True)
    except expat.ExpatError as err:
        error = ET.ParseError(str(err))
        error.code, error.position = err.code, (err.lineno, err.offset)
        raise error from None
    return builder.close()


def read_xml(path: str | os.PathLike) -> ET.Element:
    """The root element of the XML file ``path``, read by ``parse_xml_bytes``.

    Raises:
        OSError: the file cannot be read.
        ForbiddenXMLError, xml.etree.ElementTree.ParseError: see ``parse_xml_bytes``.
    """
    return parse_xml_bytes(Path(path).read_bytes())
