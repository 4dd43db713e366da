"""`ironcliw export`: the stack as another engine's manifests (kubernetes.py)."""
