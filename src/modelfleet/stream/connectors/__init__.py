"""One StreamConnector per server: redis (streams), nats (JetStream), rabbitmq (queues), mqtt (topics).

Each module imports its client library at the top; ``make_connector`` imports a module only when
its URL scheme is used, so an install without that extra never loads it.
"""
