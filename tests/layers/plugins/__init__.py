"""Plugin modules for the plugin tests (imported only by the subprocesses those tests start)."""
