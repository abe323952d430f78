"""The HL7 v2 edge: orders and patients from the RIS over MLLP, acknowledgments back.

- ``framing``: MLLP frames out of a byte stream (half frames, junk, oversized);
- ``charsets``: MSH-18 to Python codecs;
- ``parse``: a fast reader of the segments and fields the mapping needs;
- ``mapping``: ORM^O01, OMI^O23 and ADT to the domain model;
- ``ack``: ACK messages, original and enhanced mode;
- ``handler``: one message in, stored, its acknowledgment out;
- ``server``: the asyncio MLLP listener; ``client``: the MLLP sender;
- ``edge``: the ``hl7`` edge of the service.
"""
