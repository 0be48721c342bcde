"""The gateway: LLBBridge served to frontends, in-process and in containers."""
