-- The MAC a machine netboots from, recorded when the machine is created (the boot MAC an
-- enlisting machine reports; a fleet file's `pxe_mac`, else its first MAC). Commissioning
-- replaces the interfaces in the order the machine lists them, which need not start with the
-- boot NIC; this column keeps which one it is, so that `fleet adopt` writes it as `pxe_mac`.
-- NULL for machines created before it: their first interface stands in.
ALTER TABLE machines ADD COLUMN boot_mac TEXT;

-- The bus a disk sits on, as the disk script reports it (virtio, nvme, ata, scsi, usb, mmc,
-- other); NULL for disks stored before it.
ALTER TABLE disks ADD COLUMN bus TEXT;
