"""Programs the supervisor launches. They never import `supervisor`: their contract with it is
a command line, environment variables (IRONCLIW_COMPONENT, IRONCLIW_RUNTIME_DIR, ...),
signals (SIGTERM to stop, the configured trim signal to drop caches) and stdout lines."""
