"""Keys and PKI: the Aura CA and the TLS certificate it signs, WireGuard key files, the signed
bridge manifest.
"""
