"""How strata services find each other: mDNS (zeroconf) on the LAN, or a static `--peer` list.

`PeerSource` (peer_source.py) is the one interface the services use, whichever way peers are found.
"""
