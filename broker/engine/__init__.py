"""The job engine: work items (vendor jobs and write-backs) on the bus and in the store,
claimed, sent, retried with backoff, dead, retried by an operator."""
