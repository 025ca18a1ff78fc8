"""sharder: the keyspace, assignments, the pure resharding policy, the assigner service and its client libraries."""
