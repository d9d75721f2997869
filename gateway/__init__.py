"""edgegw composition root: config, CLI, daemon, pipeline, forwarder, receiver."""

__version__ = "0.1.0"
