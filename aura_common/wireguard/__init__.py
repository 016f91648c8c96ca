"""wireguard"""
