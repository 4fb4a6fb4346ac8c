"""Kibana and Elasticsearch on the air-gapped side: the connector, the ELSER endpoint,
the Elastic artifacts, and the install steps that use them (:mod:`.steps`)."""
