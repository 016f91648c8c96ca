"""The server suite and a client, on defaults, in throw-away network namespaces.

    sudo ./run demo [--once]

Builds client ── server ── internet namespaces, runs `aura server init` and `aura server run`
(every transport, default ports), provisions an Aura client and a stock WireGuard client,
brings both up, shows they reach the server and the internet host behind it, and prints
`aura status`. It then keeps running so you can explore (commands are printed) until Ctrl-C,
which tears everything down. Nothing outside the namespaces is touched.
"""

from __future__ import annotations

import argparse
import shlex
import signal
import sys
import tempfile
import time
from pathlib import Path

from aura_common.roles import Transport
from aura_lab.netns import Lab
from aura_lab.topology import (
    AURA,
    INTERNET_HOST,
    SERVER_TUNNEL_V4,
    build,
    stock_wireguard_up,
)


def step(text: str) -> None:
    print(f"\n== {text}", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--once", action="store_true", help="tear down after the checks")
    args = parser.parse_args()
    lab = Lab()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        with tempfile.TemporaryDirectory(prefix="aura-demo-") as tmp:
            folder = Path(tmp)
            step("namespaces: client ── server ── internet (203.0.113.2)")
            server = build(lab, folder)
            server.init(transports=tuple(Transport))
            print(server.aura("list-clients").stdout.strip())
            step("aura server run (signer, router, udp, tcp, quic)")
            server.start()
            print(server.aura("status").stdout)

            step("an Aura client: aura provision-client alice; aura client up")
            alice_ns = server.add_client_namespace()
            alice = server.provision("alice", "aura")
            lab.spawn(alice_ns, [*AURA, "client", "up", "--foreground", str(alice)],
                      log=folder / "alice.log")
            lab.wait_for(lambda: lab.ping(alice_ns, SERVER_TUNNEL_V4, count=1), timeout=30,
                         what="alice's tunnel")
            print(lab.run(alice_ns, [*AURA, "client", "status", str(alice)]).stdout)

            step("a stock WireGuard client: aura provision-client bob --format wireguard")
            bob_ns = server.add_client_namespace()
            bob = server.provision("bob", "wireguard")
            print(bob.read_text().replace(bob.read_text().split("\n")[1], "PrivateKey = ..."))
            stock_wireguard_up(lab, bob_ns, bob)

            step("traffic: both clients reach the server and the internet host through NAT")
            failed = 0
            for name, ns in (("alice", alice_ns), ("bob", bob_ns)):
                for target in (SERVER_TUNNEL_V4, INTERNET_HOST):
                    ok = lab.ping(ns, target)
                    failed += not ok
                    print(f"  {name} -> {target}: {'ok' if ok else 'FAILED'}")
            step("aura status")
            print(server.aura("status").stdout)
            if args.once:
                # The exit status tells scripts (and the Debian system test) whether it worked.
                print(f"\n{'all checks passed' if not failed else f'{failed} checks FAILED'}")
                return 1 if failed else 0
            step("running; try these in another shell (Ctrl-C here tears it all down):")
            config = shlex.quote(str(server.config))
            print(f"  ip netns exec {server.ns} {' '.join(AURA)} --config {config} status")
            print(f"  ip netns exec {alice_ns} ping {INTERNET_HOST}")
            print(f"  ip netns exec {bob_ns} wg show")
            while True:
                time.sleep(3600)
    except KeyboardInterrupt:
        return 0
    finally:
        print("\ntearing down the namespaces", flush=True)
        lab.close()


if __name__ == "__main__":
    sys.exit(main())
