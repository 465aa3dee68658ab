"""cluster: how a run maps onto a Ray cluster, the embedded Redis, deployment files."""
