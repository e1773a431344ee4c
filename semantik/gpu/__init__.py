"""GPU leases: a counting semaphore in Redis shared by every worker on every machine."""
