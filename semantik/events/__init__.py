"""Job events: published by whoever changes a job, relayed by each server process to its sockets."""
