"""probes: linear probes trained offline from the activation store; probe maps; direction export."""
