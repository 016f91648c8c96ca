"""The shell every Aura process runs in: arguments, exit codes and signals, the systemd
protocols, journald logging, Prometheus metrics.
"""
