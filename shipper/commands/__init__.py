"""The commands, one module each (Celery's `celery/bin/` layout): `shipper.cli` names them for
the group, which imports a command's module only when that command is looked up (a run imports its own).

`options` holds what several commands take (the option groups and the click types that check values),
`running` what they do around a pipeline (logging, Settings from options, drive, summary). Imports run one
way: a command imports those two, `shipper.cli` imports the commands, nothing imports `shipper.cli`.
"""

# Each command's one-line summary, for `kong-ship --help`: the group lists them from here, without importing the
# commands' modules (all of them, httpx and the sinks included: ~0.4 s), and each command takes its own as
# `short_help` (tests/test_cli.py checks both).
SUMMARIES = {
    "audit": "Ship Kong Enterprise audit logs; verify their signatures.",
    "backfill": "Ship log files to their end, every record acknowledged.",
    "check-config": "Validate the configuration; print the effective settings.",
    "init": "Write a commented configuration, the systemd units.",
    "parse": "Print log files' normalized transactions as NDJSON.",
    "receive": "Receive Kong event hooks and http/tcp/udp-log records.",
    "status": "Show checkpoints, lag and dropped records per sink.",
    "tail": "Follow log files and ship every record, forever.",
    "tap": "Print the events a running kong-ship sends, masked.",
}
