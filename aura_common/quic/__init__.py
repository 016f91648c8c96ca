"""QUIC pieces both ends share: the sans-I/O driver of one qh3 connection (`link`) and the
batched datagram socket under it (`datagram`). The server transport (`services/quic/`) and the
client's QUIC carrier (`services/client/carriers/quic.py`) are built on them."""
