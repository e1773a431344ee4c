"""The embedding model: loading it offline and running encode off the event loop."""
