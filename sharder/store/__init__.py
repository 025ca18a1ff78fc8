"""Store backends behind one interface: embedded (default, one machine) and etcd (Raft)."""
