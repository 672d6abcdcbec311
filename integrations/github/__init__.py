"""GitHub, split by what it does: ``report`` (what GitHub must hear, recorded in the outbox),
``client`` (the REST client and its credentials), ``delivery`` (sending recorded calls) and
``workflows`` (running a validation's load test in the project's performance workflow)."""
