"""quic"""
