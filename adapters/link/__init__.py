"""The site-to-hub link: a site radbridge forwards studies to a hub radbridge over HTTP(S).

- :mod:`adapters.link.parts`: the wire format, a manifest and compressed, checksummed parts;
- :mod:`adapters.link.pacing`: the link's bandwidth limit and its allowed time windows;
- :mod:`adapters.link.hub`: the hub's ``/link/v1/transfers`` endpoints;
- :mod:`adapters.link.ingest`: a committed transfer's instances into the hub's spool and index.

The site's side is the ``radbridge`` vendor transport (:mod:`adapters.vendors.radbridge`).
"""
