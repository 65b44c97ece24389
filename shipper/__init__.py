"""kong-ship: follow Kong Gateway and Nginx JSON logs and ship them, masked, to Segment, Moesif or Runscope."""

__version__ = "0.1.0"
