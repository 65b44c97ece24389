"""Delivery wraps every sink the same way: a bounded queue, batches, retries and acknowledgements."""
