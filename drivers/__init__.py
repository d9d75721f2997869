"""Protocol drivers: one sub-package per protocol, plus the contract in ``contract``."""
