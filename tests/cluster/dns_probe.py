"""A minimal DNS client (one A query over UDP), so the node can check CoreDNS answers without
dig or a DNS library installed."""

from __future__ import annotations

import secrets
import socket
import struct


def _skip_name(packet: bytes, offset: int) -> int:
    """Offset just past the (possibly compressed) domain name starting at ``offset``."""
    while True:
        length = packet[offset]
        if length == 0:
            return offset + 1
        if length & 0xC0 == 0xC0:  # a pointer ends the name
            return offset + 2
        offset += 1 + length


def query_a(server: str, name: str, port: int = 53, timeout: float = 2.0) -> tuple[int, list[str]]:
    """(rcode, [IPv4 addresses]) of an A query for ``name``; raises OSError on no answer."""
    qid = secrets.randbits(16)
    question = b"".join(bytes([len(label)]) + label.encode() for label in name.rstrip(".").split("."))
    request = struct.pack(">HHHHHH", qid, 0x0100, 1, 0, 0, 0) + question + b"\0" + struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(timeout)
        sock.sendto(request, (server, port))
        while True:
            packet, _ = sock.recvfrom(4096)
            if len(packet) >= 12 and struct.unpack(">H", packet[:2])[0] == qid:
                break
    flags, qdcount, ancount = struct.unpack(">HHH", packet[2:8])
    offset = 12
    for _ in range(qdcount):
        offset = _skip_name(packet, offset) + 4
    addresses = []
    for _ in range(ancount):
        offset = _skip_name(packet, offset)
        rtype, _rclass, _ttl, rdlength = struct.unpack(">HHIH", packet[offset:offset + 10])
        offset += 10
        if rtype == 1 and rdlength == 4:
            addresses.append(socket.inet_ntoa(packet[offset:offset + 4]))
        offset += rdlength
    return flags & 0xF, addresses
