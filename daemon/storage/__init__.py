"""Storage: the event log and the read model behind one interface, chosen by URL."""
