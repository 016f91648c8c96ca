"""`aura-generator`: socket unit ports from server.yaml (a systemd generator)."""
