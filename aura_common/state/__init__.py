"""State files: atomic writes and locks, the runtime file, the IP pool and its leases,
the peer registry, client limits and usage.
"""
