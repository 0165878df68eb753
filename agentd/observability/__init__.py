"""Prometheus metrics of the daemon: scrape-time node and session figures, tool-call
counters, gRPC latency, and the HTTP endpoint that serves the default registry."""
