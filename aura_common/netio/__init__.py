"""Kernel data-path helpers that move packets in batches.

`offload` (pure): virtio-net headers, TCP segmentation of TUN reads, coalescing for TUN writes.
`tun`: the TUN device with TSO offloads. `link`: addresses, MTU and routes via netlink.
`udp`: UDP GSO sends and GRO receives.
"""
