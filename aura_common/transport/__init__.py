"""What every server transport shares: the session hub (its WireGuard device and link to the
router) and binding its listening port.
"""
