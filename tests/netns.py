"""Moved to `aura_lab.netns`; this name stays only until the branches that import it have
rebased (remove it then)."""

from aura_lab.netns import Lab

__all__ = ["Lab"]
