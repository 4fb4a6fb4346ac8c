"""Stand-ins for Kibana and Elasticsearch, for the demo and the tests.

Neither product can run on the machines this project is built on, so these small
HTTP servers enforce the parts of their contracts that airgap relies on (documented
in the project's ENVIRONMENT notes and quoted in each module): authentication,
``kbn-xsrf``, spaces, the connector config keys each Kibana version accepts and
rejects, ``_execute`` really calling the model, Elasticsearch's model-repository
download with parallel ``Range`` requests; and for 9.x, Elasticsearch's
``chat_completion`` inference endpoints (validation call over the JVM's trust, license,
streaming) and Kibana's settings and inference routes. ``model.py`` stands in for
Nginx + vLLM where no container engine is wanted. They prove what they enforce and nothing
more; the README says what remains to check on a real cluster.
"""
