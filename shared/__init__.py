"""Code shared by the coordinator, the workers and clients: wire and backbone schemas."""
