"""Commands that live in their own modules (wired into `shipper.cli` at its end)."""
