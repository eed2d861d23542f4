"""``fuseline server``: the HTTP service in front of a SqlBroker (worker API, control API,
tokens, dashboard). Imported only by the server and by HttpBrokerClient's wire format."""
