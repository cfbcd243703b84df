-- Static addresses that stick (issue 13): what an applied plan gave a machine's interface on a
-- subnet. Keep in step with ../postgres/0009.
-- machine_id: the holder; its rows go with it (ON DELETE CASCADE), which is the only way an
--             address is released: once applied, an address never moves to another machine.
-- interface:  the machine's interface name as the fleet file's network says it (eth0, bond0).
-- subnet:     the fleet file's subnet name.
-- address:    the IP in its canonical text (Rust's Display of IpAddr: one spelling per address,
--             so the UNIQUE constraint compares what it should).
-- created_at: when it was committed (or last changed, for an explicit `ip` the operator
--             changed), Unix ms.
-- UNIQUE (subnet, address): two machines never hold one address, even when two controllers
-- apply at once on PostgreSQL. UNIQUE (machine_id, interface, subnet): one address per
-- interface and subnet.
CREATE TABLE held_addresses (
    machine_id  BIGINT  NOT NULL REFERENCES machines (id) ON DELETE CASCADE,
    interface   TEXT    NOT NULL,
    subnet      TEXT    NOT NULL,
    address     TEXT    NOT NULL,
    created_at  BIGINT  NOT NULL,
    UNIQUE (subnet, address),
    UNIQUE (machine_id, interface, subnet)
);
