# Shared by the .deb and .rpm scriptlets (inlined at build time).
AURA_UNITS="aura.target aura-router.service aura-signer.service aura-udp.service aura-tcp.service aura-quic.service"
AURA_SOCKETS="aura-router.socket aura-signer.socket aura-udp.socket aura-tcp.socket aura-quic.socket"
AURA_TIMERS="aura-manifest-renew.timer"

systemd_running() { [ -d /run/systemd/system ]; }

aura_configure() {
    systemd-sysusers aura.conf
    systemd-tmpfiles --create aura.conf
    aura_migrate_shared_account
    aura_migrate_role_folders
    if systemd_running; then
        systemctl daemon-reload
    fi
    # Enabled, not started: the sockets, the transports and the signer have
    # ConditionPathExists=/etc/aura/server.yaml and the router fails saying to run
    # `aura server init`; from then on the suite starts at boot.
    systemctl enable --quiet aura.target aura-router.service $AURA_SOCKETS $AURA_TIMERS
}

# Versions before one user per service ran everything as `aura`: hand its state to the new
# owners. Only regular files (never a link: chown -h, find -type f), moved by rename.
aura_migrate_shared_account() {
    id -u aura >/dev/null 2>&1 || return 0
    state=/var/lib/aura
    for name in manifest.json manifest.serial; do
        if [ -f "$state/$name" ] && [ ! -L "$state/$name" ] && [ ! -e "$state/signer/$name" ]; then
            mv "$state/$name" "$state/signer/$name"
        fi
    done
    rm -f "$state/runtime.json" "$state/runtime.json.lock"
    find "$state" -maxdepth 1 -type f -user aura -exec chown -h aura-router:aura {} +
    find "$state/signer" -maxdepth 1 -type f -user aura -exec chown -h aura-signer:aura {} +
    for key in server.key tls.key; do
        if [ -f "/etc/aura/$key" ]; then chown -h root:root "/etc/aura/$key"; chmod 600 "/etc/aura/$key"; fi
    done
    if [ -f /etc/aura/server.yaml ]; then chmod 644 /etc/aura/server.yaml; fi
}

# Versions before one folder per role kept the router's files in /var/lib/aura itself (then
# the router's) and one runtime.json shared by the transports. tmpfiles has made the directory
# root's by now, so nothing can be swapped under us: move the router's regular files (never a
# link) into its folder, drop the shared runtime file (each transport writes its own at start).
aura_migrate_role_folders() {
    state=/var/lib/aura
    for name in peers.json leases.json usage.json handshake-timestamps.json registry-copy.json \
                lease-blocks.json; do
        if [ -f "$state/$name" ] && [ ! -L "$state/$name" ] && [ ! -e "$state/router/$name" ]; then
            mv "$state/$name" "$state/router/$name"
        fi
    done
    find "$state" -maxdepth 1 \( -type f -o -type l \) -name '*.lock' -delete
    rm -f "$state/transports/runtime.json" "$state/transports/runtime.json.lock"
}

aura_restart_after_upgrade() {
    # Only what was running; the router restarts without dropping clients.
    if systemd_running; then
        systemctl try-restart $AURA_UNITS || true
    fi
}

aura_stop() {
    if systemd_running; then
        systemctl stop $AURA_TIMERS $AURA_UNITS $AURA_SOCKETS 'aura-client@*.service' || true
    fi
    systemctl disable --quiet aura.target aura-router.service $AURA_SOCKETS $AURA_TIMERS || true
}

aura_daemon_reload() {
    if systemd_running; then
        systemctl daemon-reload || true
    fi
}

aura_purge() {
    rm -rf /var/lib/aura /etc/aura /run/aura
}
