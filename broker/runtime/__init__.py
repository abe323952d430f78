"""The running service: the configuration snapshot, the stages a study passes through
(routing, results, billing), the registered edges, metrics, and the process that runs them."""
