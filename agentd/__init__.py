"""agentd: a per-node host agent for machines that run AI agents in sandboxes."""

__version__ = "0.1.0"
