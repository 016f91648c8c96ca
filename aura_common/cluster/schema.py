"""The registry database's schema, as ordered migrations: version N is MIGRATIONS[:N] applied.

A landed migration is never edited; a change to the schema is a new one appended here.
`database.migrate` applies the missing ones in one transaction and records the version.
"""

from __future__ import annotations

MIGRATIONS: tuple[str, ...] = (
    # 1: peers (the registry), cluster-wide usage, dynamic lease blocks, members.
    """
    CREATE TABLE peers (
        name text PRIMARY KEY CHECK (name ~ '^[a-z0-9][a-z0-9_.-]{0,31}$'),
        public_key bytea NOT NULL UNIQUE CHECK (length(public_key) = 32),
        -- sealed with the cluster key (seal.py): nonce 12 + key 32 + tag 16
        preshared_key bytea CHECK (length(preshared_key) = 60),
        address_v4 inet UNIQUE CHECK (family(address_v4) = 4 AND masklen(address_v4) = 32),
        address_v6 inet UNIQUE CHECK (family(address_v6) = 6 AND masklen(address_v6) = 128),
        enabled boolean NOT NULL DEFAULT true,
        created text NOT NULL CHECK (length(created) <= 64),
        expires text CHECK (length(expires) <= 64),
        quota_bytes bigint CHECK (quota_bytes >= 1)
    );

    -- Every change reaches every member at commit: the payload names the peer, '*' asks
    -- for a full re-read.
    CREATE FUNCTION aura_peer_changed() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP IN ('UPDATE', 'DELETE') THEN
            PERFORM pg_notify('aura_registry', OLD.name);
        END IF;
        IF TG_OP IN ('INSERT', 'UPDATE') THEN
            PERFORM pg_notify('aura_registry', NEW.name);
        END IF;
        RETURN NULL;
    END $$;
    CREATE TRIGGER peers_changed AFTER INSERT OR UPDATE OR DELETE ON peers
        FOR EACH ROW EXECUTE FUNCTION aura_peer_changed();

    CREATE FUNCTION aura_peers_truncated() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        PERFORM pg_notify('aura_registry', '*');
        RETURN NULL;
    END $$;
    CREATE TRIGGER peers_truncated AFTER TRUNCATE ON peers
        FOR EACH STATEMENT EXECUTE FUNCTION aura_peers_truncated();

    -- Bytes through the tunnel, summed over members (each adds what it counted).
    CREATE TABLE usage (
        peer text PRIMARY KEY REFERENCES peers (name) ON DELETE CASCADE,
        bytes bigint NOT NULL DEFAULT 0 CHECK (bytes >= 0)
    );

    -- Dynamic pool: each member leases only inside the blocks of host indices it claimed.
    CREATE TABLE lease_blocks (
        first_index integer PRIMARY KEY CHECK (first_index >= 0),
        member text NOT NULL CHECK (length(member) <= 253)
    );

    -- What each member publishes (heartbeats): endpoints, sessions.
    CREATE TABLE members (
        name text PRIMARY KEY CHECK (length(name) <= 253),
        updated_at timestamptz NOT NULL DEFAULT now(),
        started_at timestamptz,
        info jsonb NOT NULL DEFAULT '{}'
    );
    """,
)
