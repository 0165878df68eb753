"""Kubernetes integration: a kube-scheduler extender that asks each node's agentd."""
