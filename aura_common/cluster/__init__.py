"""Several servers, one registry: the PostgreSQL side of an Aura cluster.

`database` (connection settings, password, schema versions), `schema` (the migrations),
`seal` (preshared keys sealed with the cluster key), `store` (the registry in the database).
Nothing here is imported unless `registry:` is configured.
"""
