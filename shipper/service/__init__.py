"""Running kong-ship as a service: systemd notifications, status of the state directory, configuration file,
metrics."""
