"""bench.latency's table says what each path dropped in its loaded runs."""

from __future__ import annotations

from bench import latency


def test_the_table_gives_each_tunnels_retransmissions_and_the_congestion_control() -> None:
    paths = ["bare veth", latency.REFERENCE, "aura udp"]
    measured = [latency.Latency(path, 1.0, 5.0, 6.0, 1e9, 1e9, 100 + n, 200 + n)
                for n, path in enumerate(paths)]
    text = latency.table(measured, latency.ratios(measured), 1)
    assert f"{latency.REFERENCE} 101 / 201; aura udp 102 / 202." in text
    assert f"congestion control {latency.congestion_control()}" in text
    assert "bare veth 100" not in text
