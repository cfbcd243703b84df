-- The MAC a machine netboots from, recorded when the machine is created (the boot MAC an
-- enlisting machine reports; a fleet file's `pxe_mac`, else its first MAC). Commissioning
-- replaces the interfaces in the order the machine lists them, which need not start with the
-- boot NIC; this column keeps which one it is, so that `fleet adopt` writes it as `pxe_mac`.
-- NULL for machines created before it: their first interface stands in.
ALTER TABLE machines ADD COLUMN boot_mac TEXT;

-- The bus a disk sits on, as the disk script reports it (virtio, nvme, ata, scsi, usb, mmc,
-- other); NULL for disks stored before it.
ALTER TABLE disks ADD COLUMN bus TEXT;

-- fleet's power intent: what fleet expects the power to become after its own doing (a power
-- command it ran; a machine told to power itself off after its run), not yet confirmed by a
-- query. power_intent: on or off; power_intent_passing: a state the machine passes through on
-- the way (off, for a cycle); power_intent_why: what fleet did. The power poll calls a change
-- "outside fleet" only when it differs from the intent; NULL: no intent (then any change is).
ALTER TABLE machines ADD COLUMN power_intent TEXT;
ALTER TABLE machines ADD COLUMN power_intent_passing TEXT;
ALTER TABLE machines ADD COLUMN power_intent_why TEXT;
