"""Shared foundations: atomic io and json, salted hashes, the registry helper, checkpoint files, run locks,
console output and the chain-of-custody check. Imports nothing else from medforget."""
