"""What travels beside WireGuard's own messages: in-tunnel control messages, and the 2-byte
length framing of WireGuard messages in TLS streams.
"""
