"""Moshi's voice path: the wire protocol, the service launcher, probes and latency."""
