"""The commands, one module each (Celery's `celery/bin/` layout): `shipper.cli` names them for
the group, which imports a command's module only when that command is looked up (a run imports its own).

`options` holds what several commands take (the option groups and the click types that check values),
`running` what they do around a pipeline (logging, Settings from options, drive, summary). Imports run one
way: a command imports those two, `shipper.cli` imports the commands, nothing imports `shipper.cli`.
"""
