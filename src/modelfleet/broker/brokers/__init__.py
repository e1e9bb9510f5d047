"""Broker implementations, one module per backend; ``modelfleet.broker.make_broker`` picks one."""
