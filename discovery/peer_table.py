"""The peers currently known to a service, fed by mDNS browsing and static peer polling.

Only peers of the service's own cluster are kept; a peer with an incompatible protocol version is
refused (logged once, kept in `refused()`) and never offered to the service, so it is never half-joined.
"""

import asyncio
import contextlib
import logging

from discovery.peer import PeerInfo, RefusedPeer, Role, refusal_reason

logger = logging.getLogger(__name__)


class PeerTable:
    def __init__(self, cluster: str, own_address: str | None) -> None:
        self.cluster = cluster
        self._own_address = own_address
        self._peers: dict[str, PeerInfo] = {}
        self._refused: dict[str, RefusedPeer] = {}
        self._changed = asyncio.Event()

    def offer(self, peer: PeerInfo) -> None:
        """A peer was announced or answered; keeps it when it belongs to this cluster and is compatible."""
        if peer.cluster != self.cluster:
            logger.debug("ignoring %s %s of cluster %r", peer.role, peer.address, peer.cluster)
            return
        if peer.address == self._own_address:
            return
        reason = refusal_reason(peer)
        if reason is not None:
            refused = RefusedPeer(address=peer.address, node_id=peer.node_id, reason=reason)
            if self._refused.get(peer.address) != refused:
                logger.warning("refusing %s %s (node %s): %s", peer.role, peer.address, peer.node_id, reason)
                self._refused[peer.address] = refused
                self._forget(peer.address)
                self._notify()
            return
        self._refused.pop(peer.address, None)
        if self._peers.get(peer.address) != peer:
            if peer.address not in self._peers:
                logger.info("found %s %s (node %s)", peer.role, peer.address, peer.node_id)
            self._peers[peer.address] = peer
            self._notify()

    def remove(self, address: str) -> None:
        """The peer said goodbye, its record expired or it stopped answering."""
        removed = self._forget(address)
        if self._refused.pop(address, None) is not None or removed:
            self._notify()

    def _forget(self, address: str) -> bool:
        peer = self._peers.pop(address, None)
        if peer is not None:
            logger.info("lost %s %s (node %s)", peer.role, peer.address, peer.node_id)
        return peer is not None

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def peers(self, role: Role | None = None) -> tuple[PeerInfo, ...]:
        """Trusted peers (of one role, or all), ordered by address."""
        ordered = (self._peers[address] for address in sorted(self._peers))
        return tuple(peer for peer in ordered if role is None or peer.role == role)

    def refused(self) -> tuple[RefusedPeer, ...]:
        return tuple(refused for _, refused in sorted(self._refused.items()))

    async def wait_for_change(self, timeout_seconds: float) -> None:
        """Returns when the table changes, or after `timeout_seconds`."""
        changed = self._changed
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout_seconds)
