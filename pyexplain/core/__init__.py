"""Machinery shared by every method: activation-call interception, backward rules, targets,
layer hooks and canonicalization (BN folding)."""
